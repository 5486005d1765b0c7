"""The distillation loss zoo: one calling convention, registered by name (``distill_jax.registry.losses``).

Score losses: ``loss(student_scores [B, N], teacher_scores [B, N], mask [B, N], **hyperparameters) -> scalar``
(row b = query b's N candidates, column 0 the positive where a loss needs one, ``mask`` marks real candidates;
padded candidates change neither the value nor any gradient). Regularisers take the representations they act
on and live in ``distill_jax.registry.regularizers``. Representation losses (``mlm``, ``simcse``,
``embedding_alignment``) take token logits or embeddings; ``distill_jax.train.objectives`` wires them (and the
score losses) into a run as weighted objectives. See docs/losses.md for the formulas, papers and peers.
"""

from distill_jax.losses.masking import masked_log_softmax, masked_mean, masked_softmax
from distill_jax.losses.listwise import (append_in_batch, in_batch_negative_mask, infonce, kl, listnet,
                                         minmax_normalize)
from distill_jax.losses.pairwise import fixed_margin_mse, margin_mse, mse
from distill_jax.losses.pointwise import bce_with_logits, graded_bce
from distill_jax.losses.ranking import cprd, plackett_luce
from distill_jax.losses.representation import embedding_alignment, mask_tokens, mlm, simcse
from distill_jax.losses.sparsity import (flops, l1, sparsity_stats, splade_lambda, splade_regularization,
                                      splade_regularization_terms)

__all__ = [
    "append_in_batch", "bce_with_logits", "cprd", "embedding_alignment", "fixed_margin_mse", "flops", "graded_bce",
    "mask_tokens", "mlm", "plackett_luce", "simcse", "in_batch_negative_mask", "infonce", "kl", "l1", "listnet",
    "margin_mse", "masked_log_softmax", "masked_mean", "masked_softmax", "minmax_normalize", "mse",
    "sparsity_stats", "splade_lambda", "splade_regularization", "splade_regularization_terms",
]
