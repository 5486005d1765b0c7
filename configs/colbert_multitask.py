"""ColBERT student, multi-task: Margin-MSE on teacher scores + 0.1 x MLM on masked document tokens + 0.1 x SimCSE
on query embeddings (objectives as a weighted list; each term's inputs computed only because it is listed).

MLM keeps the encoder's language model alive while it specialises for ranking (the tied word embeddings decode
15% masked document tokens); SimCSE (Gao et al. 2021) spreads the query embeddings, two dropout views of a
query as positives and the batch's other queries as negatives.

    distill-jax train configs/colbert_multitask.py --set data.dataset_dir=DATA data.collection_dir=BEIR
    distill-jax train configs/colbert_multitask.py:tiny           # tiny random model, synthetic data, seconds
"""

from distill_jax.config import LossConfig, ObjectiveConfig, student_recipe

# Ids of BERT's uncased vocabulary ([MASK] 103; ids below 999 are [PAD], [unusedN], [CLS], [SEP], [MASK]) and
# of the tiny variant's synthetic vocabulary (0-4 reserved, [MASK] 3).
MASK_IDS = {None: {"mask_token_id": 103, "first_text_id": 999}, "tiny": {"mask_token_id": 3, "first_text_id": 5}}


def get_config(variant=None):
    if variant not in MASK_IDS:
        raise ValueError(f"unknown variant {variant!r} of colbert_multitask; known: tiny")
    loss = LossConfig(name="margin_mse", objectives=(
        ObjectiveConfig("mlm", 0.1, "docs", {"probability": 0.15, **MASK_IDS[variant]}),
        ObjectiveConfig("simcse", 0.1, "query", {"temperature": 0.05}),
    ))
    return student_recipe("colbert_multitask", "colbert", loss, variant)
