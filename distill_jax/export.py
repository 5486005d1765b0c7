"""Export trained params as Hugging Face transformers directories (through the one weight table of
:mod:`distill_jax.models.hf`), loadable by ``transformers`` and by distill-jax itself.

| kind | architecture written | loads with |
| --- | --- | --- |
| cross_encoder | ``BertForSequenceClassification`` (``num_labels=1``) | transformers, sentence-transformers ``CrossEncoder`` |
| splade | ``BertForMaskedLM`` | transformers, naver/splade |
| dense | ``BertModel`` | transformers |
| colbert | ``BertModel`` + ``linear.weight`` (Stanford ``HF_ColBERT`` layout) | distill-jax |
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import Any

import numpy as np

from distill_jax.models.encoder import EncoderConfig
from distill_jax.models.hf import export_state_dict

ARCHITECTURES = {
    "cross_encoder": "BertForSequenceClassification",
    "splade": "BertForMaskedLM",
    "dense": "BertModel",
    "colbert": "HF_ColBERT",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def save_pretrained(kind: str, cfg: EncoderConfig, params: dict[str, Any], out_dir: str,
                    tokenizer_dir: str | None = None) -> str:
    """Writes ``config.json``, ``model.safetensors`` (+ the tokenizer files of ``tokenizer_dir``) atomically.

    Returns:
      ``out_dir``.
    """
    from safetensors.numpy import save_file

    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    params = _to_numpy(params)
    prefix = "" if kind == "dense" else "bert."
    state = export_state_dict(kind, cfg, params, prefix=prefix, projection="projection" in params)
    if kind == "splade":  # tied decoder, written out as transformers does
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, os.path.join(tmp, "model.safetensors"))
    hf = cfg.to_hf_dict() | {"architectures": [ARCHITECTURES[kind]]}
    if kind == "cross_encoder":
        hf |= {"num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
               "sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid"}}
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf, f, indent=1)
    if tokenizer_dir:
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(tokenizer_dir, name)):
                shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(tmp, name))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def restore_params(workdir: str, cfg, step: int | None = None):
    """Parameters of checkpoint ``step`` (default: the best by the validation metric, else the latest)."""
    import jax

    from distill_jax import distributed
    from distill_jax.train import checkpoint as ckpt_lib
    from distill_jax.train import state as state_lib

    mesh = distributed.make_mesh(1, 1, devices=jax.devices()[:1])  # restored params go to the host anyway
    model, _, _ = state_lib.make_model(cfg)  # the checkpoint's geometry (its weights are then replaced)
    tx = state_lib.make_optimizer(cfg.optim, cfg.steps)
    abstract, shardings = state_lib.state_shardings(model, tx, mesh, cfg.seed)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), cfg.checkpoint)
    try:
        step = step if step is not None else (ckpt.manager.best_step() or ckpt.latest_step())
        state, _, step = ckpt.restore(ckpt_lib.abstract_like(abstract, shardings), step)
    finally:
        ckpt.close()
    return jax.device_get(state.params), step


def export_run(workdir: str, out_dir: str, step: int | None = None) -> tuple[str, int]:
    """Exports a training run's checkpoint (default: best by validation, else latest) as an HF directory.

    Returns:
      (out_dir, the exported step).
    """
    from distill_jax.config import from_dict
    from distill_jax.models.encoder import EncoderConfig
    from distill_jax.models.hf import resolve_checkpoint_dir
    from distill_jax.train.state import encoder_config

    with open(os.path.join(workdir, "config.json")) as f:
        cfg = from_dict(json.load(f))
    params, step = restore_params(workdir, cfg, step)
    base = resolve_checkpoint_dir(cfg.model.checkpoint) if cfg.model.checkpoint else None
    enc = EncoderConfig.from_pretrained_dir(base) if base else encoder_config(cfg.model)
    save_pretrained(cfg.model.kind, enc, params, out_dir, tokenizer_dir=cfg.data.tokenizer or base)
    return out_dir, step


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="distill-jax export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", help="a training run's work directory (config.json + checkpoints/)")
    p.add_argument("--out", required=True, help="output Hugging Face directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: best, else latest)")
    a = p.parse_args(argv[1:])
    out, step = export_run(a.workdir, a.out, a.step)
    print(f"exported step {step} of {a.workdir} to {out}")
    return 0


def _to_numpy(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)
