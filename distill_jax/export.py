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


def _to_numpy(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)
