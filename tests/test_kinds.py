"""Every model kind is one ``kinds.Kind`` whose strategy names resolve in the later stages that dispatch on them
(retrieval index, serving layout) and in the weight table of ``models/hf.py``: adding a kind cannot leave a stage
without its entry."""

from distill_jax import config, kinds
from distill_jax.eval import retrieve
from distill_jax.export import SERVING, serving
from distill_jax.models import hf


def test_every_kind_names_strategies_that_exist():
    assert set(kinds.KINDS) == set(hf.HEADS)
    for name, kind in kinds.KINDS.items():
        assert kind.name == name
        assert kind.serving in SERVING, name
        assert serving(name) is SERVING[kind.serving]
        # a kind either indexes a corpus or scores given pairs, never both or neither
        assert (kind.index is None) == kind.scores_pairs, name
        assert kind.index is None or kind.index in retrieve.INDEXES, name


def test_config_lists_the_same_kinds():
    """config.STUDENT_KINDS is the jax-free list of the same names (configs load without jax)."""
    assert set(config.STUDENT_KINDS) == set(kinds.KINDS)
