"""Student (and teacher) training: state, the jitted step, checkpoints, metrics, the loop.

    from distill_jax.train import train
    from distill_jax.config import load_config
    train(load_config("configs/colbert_margin_mse.py:tiny"))
"""

from distill_jax.train.trainer import train

__all__ = ["train"]
