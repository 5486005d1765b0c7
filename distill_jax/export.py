"""Export a training run for serving: the directory layout of the library each model kind is served with.

    distill-jax export runs/colbert --out exports/colbert                         # native layout (default)
    distill-jax export runs/splade --out exports/splade-hf --format transformers  # a plain HF directory

``native`` layouts (docs/serving.md lists every file):

- colbert: a PyLate ColBERT, loaded by ``pylate.models.ColBERT(model_name_or_path=DIR)``. Transformer at the
  root, ``1_Dense`` (the projection), and ``config_sentence_transformers.json`` (markers as prefixes, lengths,
  [MASK] expansion, skiplist).
- splade: a sentence-transformers ``SparseEncoder(DIR)``: MLMTransformer (``BertForMaskedLM``) +
  ``1_SpladePooling`` (max, relu).
- cross_encoder: a sentence-transformers ``CrossEncoder(DIR)``: ``BertForSequenceClassification``,
  ``num_labels=1``, with the score activation in ``config.json``.
- dense: a ``SentenceTransformer(DIR)``: Transformer + ``1_Pooling`` (cls / mean) [+ ``2_Dense`` projection]
  [+ Normalize].

``transformers``: the encoder (+ head) as a plain ``transformers`` directory (``BertModel``, ``BertForMaskedLM``,
``BertForSequenceClassification``; ColBERT's projection as ``linear.weight``, the dense projection as
``projection.weight``), without the pooling, normalisation or ColBERT settings.

Every directory holds safetensors only, the tokenizer files, and ``distill_jax_export.json`` (kind, format, step,
source work directory, the files written). Export writes into a fresh hidden sibling directory and moves it into
place. It never deletes what it did not write: an existing ``--out`` is replaced only when it is empty or an
earlier export whose marker lists every file in it, and ``--out`` inside (or holding) the work directory is
refused.
``distill_jax.models.load_pretrained`` reads every one of these directories back, bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import string
import tempfile
from typing import Any, Callable

import numpy as np

from distill_jax import kinds
from distill_jax.models.colbert import ColBERTConfig
from distill_jax.models.encoder import EncoderConfig
from distill_jax.models.hf import export_state_dict

FORMATS = ("native", "transformers")
MARKER = "distill_jax_export.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
IDENTITY = "torch.nn.modules.linear.Identity"
SIGMOID = "torch.nn.modules.activation.Sigmoid"


class ExportRefused(FileExistsError):
    """The output directory cannot be written without deleting or mixing with files export did not write.

    An ``OSError``: the CLI prints its message in one line and exits with code 2."""


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """Everything a serving layout states besides the weights.

    Attributes:
      kind: model kind.
      query_maxlen, doc_maxlen: token lengths the run trained at (ColBERT: exact; SPLADE / dense: one
        ``max_seq_length`` = doc_maxlen, since sentence-transformers has one length for both sides).
      pair_maxlen: the cross-encoder's (query, passage) length.
      colbert: ColBERT markers, lengths, expansion and punctuation settings (ColBERT only).
      pooling, projection_dim, normalize: the dense student's head.
      activation: the cross-encoder's score activation (a ``torch.nn`` class path) that ``CrossEncoder.predict``
        applies: Identity (raw logits) unless the run trained on probabilities (``graded_bce``).
    """

    kind: str
    query_maxlen: int = 32
    doc_maxlen: int = 180
    pair_maxlen: int = 256
    colbert: ColBERTConfig | None = None
    pooling: str = "mean"
    projection_dim: int = 0
    normalize: bool = False
    activation: str = IDENTITY


def serving_spec(cfg) -> ServingSpec:
    """The :class:`ServingSpec` of a run's ``TrainConfig`` (model options as :mod:`distill_jax.kinds` builds
    them)."""
    m, d = cfg.model, cfg.data
    options = kinds.get(m.kind).model_options(m, d)
    return ServingSpec(kind=m.kind, query_maxlen=d.query_maxlen, doc_maxlen=d.doc_maxlen,
                       pair_maxlen=d.pair_maxlen,
                       colbert=options.get("colbert"), pooling=options.get("pooling", "mean"),
                       projection_dim=int(options.get("projection_dim", 0) or 0),
                       normalize=bool(options.get("normalize", False)),
                       activation=SIGMOID if cfg.loss.name == "graded_bce" else IDENTITY)


# ---------------------------------------------------------------------------------------------------------------
# A run -> a directory
# ---------------------------------------------------------------------------------------------------------------


def export_run(workdir: str, out_dir: str, fmt: str = "native", step: int | None = None,
               tokenizer: str | None = None, student: str | None = None) -> tuple[str, int]:
    """Exports a training run's checkpoint (default: best by validation, else latest) for serving.

    Args:
      workdir: the run's work directory.
      out_dir: the directory to write (see the module docstring for what may already be there).
      fmt: "native" (the peer library's layout) or "transformers" (plain Hugging Face directory).
      step: the checkpoint step (None = best, else latest).
      tokenizer: tokenizer directory (default: the run's ``data.tokenizer``, else its ``model.checkpoint``).
      student: the student of a run of several (``TrainConfig.students``) to export
        (:func:`distill_jax.train.checkpoint.restore_student`).

    Returns:
      (out_dir, the exported step).

    Raises:
      ExportRefused: ``out_dir`` is inside / holds the work directory, or holds files export did not write.
      ValueError: unknown format; no tokenizer for a native export; a tokenizer larger than the vocabulary.
    """
    from distill_jax.models.hf import resolve_checkpoint_dir
    from distill_jax.train.checkpoint import restore_student
    from distill_jax.train.state import saved_geometry

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    check_out_dir(out_dir, workdir)  # before the (slow) restore
    params, step, cfg = restore_student(workdir, student, step)
    enc, base = saved_geometry(cfg, params)
    check_geometry(enc, params, source=f"{workdir} step {step}")
    tok = tokenizer or (resolve_checkpoint_dir(cfg.data.tokenizer) if cfg.data.tokenizer else base)
    provenance = {"step": step, "workdir": os.path.abspath(workdir), "run": cfg.name,
                  **({"student": student} if student else {})}
    if fmt == "native":
        save_native(serving_spec(cfg), enc, params, out_dir, tok, provenance=provenance, workdir=workdir,
                    base_dir=base)
    else:
        save_pretrained(cfg.model.kind, enc, params, out_dir, tokenizer_dir=tok,
                        activation=serving_spec(cfg).activation, provenance=provenance, workdir=workdir)
    return out_dir, step


def check_geometry(enc: EncoderConfig, params: dict[str, Any], source: str) -> None:
    """Refuses params whose encoder is not the geometry ``enc`` describes (the base checkpoint's config.json
    changed since the run, or a wrong ``--tokenizer`` / base): the written config.json would not load them."""
    emb = np.shape(params["encoder"]["embeddings"]["word_embeddings"]["embedding"])
    layers = sum(1 for k in params["encoder"] if k.startswith("layer_"))
    if emb != (enc.vocab_size, enc.hidden_size) or layers != enc.num_layers:
        raise ValueError(f"{source}: the checkpoint's encoder has word embeddings {emb} and {layers} layers, "
                         f"but its base config says ({enc.vocab_size}, {enc.hidden_size}) and {enc.num_layers} "
                         "layers; restore the run's base checkpoint (model.checkpoint) as it was when it trained")


def save_native(spec: ServingSpec, enc: EncoderConfig, params: dict[str, Any], out_dir: str, tokenizer_dir: str,
                provenance: dict[str, Any] | None = None, workdir: str | None = None,
                base_dir: str | None = None) -> str:
    """Writes ``params`` in the layout of the library ``spec.kind`` is served with (module docstring table).

    Args:
      spec: the serving settings (:func:`serving_spec`).
      enc: encoder geometry.
      params: the model's params tree (numpy or jax arrays).
      out_dir: output directory (:func:`check_out_dir` rules).
      tokenizer_dir: a directory with the tokenizer files (required: a served model tokenises).
      provenance: extra JSON fields for the marker (step, source work directory).
      workdir: the run's work directory, which ``out_dir`` must stay out of.
      base_dir: the checkpoint the run started from. ColBERT and dense students do not use BERT's pooler (and
        do not train it); its weights are copied from here so that ``AutoModel`` finds every weight, as in a
        directory PyLate / sentence-transformers would save.

    Returns:
      ``out_dir``.
    """
    if not tokenizer_dir:
        raise ValueError("a native export needs a tokenizer and the run names none (data.tokenizer and "
                         "model.checkpoint are empty): pass tokenizer=DIR (CLI: --tokenizer DIR)")
    vocab = _check_tokenizer(tokenizer_dir, enc)
    layout = serving(spec.kind)
    pooler = _base_pooler(base_dir, enc) if base_dir and layout.base_pooler else {}

    def write(tmp: str) -> None:
        layout.write(tmp, spec, enc, _to_numpy(params), vocab, pooler)
        _copy_tokenizer(tokenizer_dir, tmp, spec.pair_maxlen if layout.pairs else None)
        _write_readme(tmp, spec, provenance or {})

    return _publish(out_dir, write, {"kind": spec.kind, "format": "native", **(provenance or {})}, workdir)


def save_pretrained(kind: str, cfg: EncoderConfig, params: dict[str, Any], out_dir: str,
                    tokenizer_dir: str | None = None, activation: str = SIGMOID,
                    provenance: dict[str, Any] | None = None, workdir: str | None = None) -> str:
    """Writes a plain transformers directory: ``config.json``, ``model.safetensors`` (+ the tokenizer files of
    ``tokenizer_dir``) and the export marker, atomically, under the rules of :func:`check_out_dir`.

    ``activation``: the cross-encoder's ``config.json["sentence_transformers"]["activation_fn"]``.

    Returns:
      ``out_dir``.
    """

    layout = serving(kind)

    def write(tmp: str) -> None:
        p = _to_numpy(params)
        state = export_state_dict(kind, cfg, p, prefix=layout.prefix, projection="projection" in p)
        _save_safetensors(os.path.join(tmp, "model.safetensors"), state)
        extra = {"architectures": [layout.pretrained_architecture or layout.architecture]}
        if layout.pairs:
            extra |= _classifier_config(activation)
        _write_json(os.path.join(tmp, "config.json"), cfg.to_hf_dict() | extra)
        if tokenizer_dir:
            _copy_tokenizer(tokenizer_dir, tmp, None)

    return _publish(out_dir, write, {"kind": kind, "format": "transformers", **(provenance or {})}, workdir)


def restore_params(workdir: str, cfg=None, step: int | None = None):
    """Deprecated: ``(params, step)`` of a run; use :func:`distill_jax.train.checkpoint.restore_params`, which
    also returns the run's config (``cfg`` is ignored: the checkpoint's own config is read)."""
    from distill_jax.train.checkpoint import restore_params as restore

    params, step, _ = restore(workdir, step)
    return params, step


# ---------------------------------------------------------------------------------------------------------------
# The four native layouts (each writes into a fresh directory ``d``)
# ---------------------------------------------------------------------------------------------------------------


def _write_colbert(d: str, spec: ServingSpec, enc: EncoderConfig, params: dict, vocab: dict[str, int],
                   pooler: dict) -> None:
    """PyLate ``models.ColBERT``: Transformer at the root, ``1_Dense`` projection, ColBERT settings."""
    c = spec.colbert or ColBERTConfig(query_maxlen=spec.query_maxlen, doc_maxlen=spec.doc_maxlen)
    for marker in (c.query_marker, c.doc_marker):
        if marker not in vocab:
            raise ValueError(f"ColBERT marker {marker!r} is not a token of the tokenizer; PyLate would add it as "
                             "a new token with an untrained embedding: export with the run's tokenizer")
    state = export_state_dict(spec.kind, enc, params, prefix="")
    linear = state.pop("linear.weight")  # [D, H]
    _write_transformer(d, enc, state | pooler, spec, c.doc_maxlen)
    _write_modules(d, [("", "sentence_transformers.models.Transformer"), ("1_Dense", "pylate.models.Dense.Dense")])
    _write_dense_module(os.path.join(d, "1_Dense"), linear, pylate=True)
    skiplist = [ch for ch in string.punctuation if ch in vocab] if c.mask_punctuation else []
    _write_json(os.path.join(d, "config_sentence_transformers.json"), {
        "__version__": _versions(),
        "prompts": {"query": "", "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "MaxSim",
        "query_prefix": c.query_marker,
        "document_prefix": c.doc_marker,
        "query_length": c.query_maxlen,
        "document_length": c.doc_maxlen,
        "attend_to_expansion_tokens": c.attend_to_expansion_tokens,
        "skiplist_words": skiplist,
        "do_query_expansion": True,
    })


def _write_sparse_encoder(d: str, spec: ServingSpec, enc: EncoderConfig, params: dict, vocab: dict,
                          pooler: dict) -> None:
    """sentence-transformers ``SparseEncoder``: MLMTransformer (``BertForMaskedLM``) + SpladePooling(max, relu)."""
    state = export_state_dict(spec.kind, enc, params, prefix="bert.")  # decoder tied to the word embeddings
    _write_transformer(d, enc, state, spec, spec.doc_maxlen)
    _write_modules(d, [("", "sentence_transformers.sparse_encoder.models.MLMTransformer"),
                       ("1_SpladePooling", "sentence_transformers.sparse_encoder.models.SpladePooling")])
    _write_json(os.path.join(d, "1_SpladePooling", "config.json"),
                {"pooling_strategy": "max", "activation_function": "relu",
                 "word_embedding_dimension": enc.vocab_size})
    _write_json(os.path.join(d, "config_sentence_transformers.json"), {
        "model_type": "SparseEncoder", "__version__": _versions(), "prompts": {"query": "", "document": ""},
        "default_prompt_name": None, "similarity_fn_name": "dot"})


def _write_cross_encoder(d: str, spec: ServingSpec, enc: EncoderConfig, params: dict, vocab: dict,
                         pooler: dict) -> None:
    """sentence-transformers ``CrossEncoder``: a ``BertForSequenceClassification`` directory (``num_labels=1``)
    whose ``config.json`` names the score activation; its max length is the tokenizer's ``model_max_length``."""
    state = export_state_dict(spec.kind, enc, params, prefix="bert.")
    _save_safetensors(os.path.join(d, "model.safetensors"), state)
    hf = enc.to_hf_dict() | {"architectures": [serving(spec.kind).architecture]}
    _write_json(os.path.join(d, "config.json"), hf | _classifier_config(spec.activation))


def _write_sentence_transformer(d: str, spec: ServingSpec, enc: EncoderConfig, params: dict, vocab: dict,
                                pooler: dict) -> None:
    """``SentenceTransformer``: Transformer + Pooling (cls / mean) [+ Dense projection] [+ Normalize]."""
    state = export_state_dict(spec.kind, enc, params, prefix="", projection=bool(spec.projection_dim))
    projection = state.pop("projection.weight", None)  # [P, H]
    _write_transformer(d, enc, state | pooler, spec, spec.doc_maxlen)
    modules = [("", "sentence_transformers.models.Transformer"),
               ("1_Pooling", "sentence_transformers.models.Pooling")]
    _write_json(os.path.join(d, "1_Pooling", "config.json"), {
        "word_embedding_dimension": enc.hidden_size,
        "pooling_mode_cls_token": spec.pooling == "cls",
        "pooling_mode_mean_tokens": spec.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })
    if projection is not None:
        modules.append((f"{len(modules)}_Dense", "sentence_transformers.models.Dense"))
        _write_dense_module(os.path.join(d, modules[-1][0]), projection, pylate=False)
    if spec.normalize:
        modules.append((f"{len(modules)}_Normalize", "sentence_transformers.models.Normalize"))
        os.makedirs(os.path.join(d, modules[-1][0]))
    _write_modules(d, modules)
    _write_json(os.path.join(d, "config_sentence_transformers.json"), {
        "model_type": "SentenceTransformer", "__version__": _versions(), "prompts": {"query": "", "document": ""},
        "default_prompt_name": None, "similarity_fn_name": "cosine" if spec.normalize else "dot"})


# ---------------------------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------------------------


def _write_transformer(d: str, enc: EncoderConfig, state: dict[str, np.ndarray], spec: ServingSpec,
                       max_seq_length: int):
    """The root transformer of a sentence-transformers directory: weights, ``config.json`` (the architecture of
    ``spec.kind``'s layout), ``sentence_bert_config.json``."""
    _save_safetensors(os.path.join(d, "model.safetensors"), state)
    _write_json(os.path.join(d, "config.json"),
                enc.to_hf_dict() | {"architectures": [serving(spec.kind).architecture]})
    _write_json(os.path.join(d, "sentence_bert_config.json"),
                {"max_seq_length": int(max_seq_length), "do_lower_case": False})


def _write_modules(d: str, modules: list[tuple[str, str]]) -> None:
    _write_json(os.path.join(d, "modules.json"),
                [{"idx": i, "name": str(i), "path": path, "type": typ} for i, (path, typ) in enumerate(modules)])


def _write_dense_module(d: str, weight: np.ndarray, pylate: bool) -> None:
    """A bias-free linear Dense module: ``config.json`` + ``model.safetensors`` (``linear.weight`` [out, in])."""
    cfg = {"in_features": int(weight.shape[1]), "out_features": int(weight.shape[0]), "bias": False,
           "activation_function": IDENTITY}
    if pylate:
        cfg["use_residual"] = False
    _write_json(os.path.join(d, "config.json"), cfg)
    _save_safetensors(os.path.join(d, "model.safetensors"), {"linear.weight": weight})


def _base_pooler(base_dir: str, enc: EncoderConfig) -> dict[str, np.ndarray]:
    """``pooler.dense.{weight,bias}`` of a base checkpoint's safetensors ({} when it has none)."""
    import glob

    from safetensors import safe_open

    from distill_jax.models.hf import transformer_dir

    out = {}
    for file in sorted(glob.glob(os.path.join(transformer_dir(base_dir), "*.safetensors"))):
        with safe_open(file, "np") as f:
            for key in f.keys():
                for name in ("pooler.dense.weight", "pooler.dense.bias"):
                    if key in (name, "bert." + name):
                        out[name] = f.get_tensor(key)
    shapes = {"pooler.dense.weight": (enc.hidden_size, enc.hidden_size), "pooler.dense.bias": (enc.hidden_size,)}
    return out if len(out) == 2 and all(out[k].shape == v for k, v in shapes.items()) else {}


def _classifier_config(activation: str) -> dict[str, Any]:
    return {"num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
            "sentence_transformers": {"activation_fn": activation}}


def _save_safetensors(path: str, state: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, path, metadata={"format": "pt"})


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _check_tokenizer(tokenizer_dir: str, enc: EncoderConfig) -> dict[str, int]:
    """The tokenizer's vocabulary (added tokens included), checked to fit the model's embedding table."""
    from distill_jax.data.tokenize import load_tokenizer

    vocab = load_tokenizer(tokenizer_dir).get_vocab()
    top = max(vocab.values()) + 1
    if top > enc.vocab_size:
        raise ValueError(f"the tokenizer in {tokenizer_dir} has ids up to {top - 1} but the model's embedding has "
                         f"{enc.vocab_size} rows: export with the tokenizer the run was trained with")
    return vocab


def _copy_tokenizer(src: str, dst: str, model_max_length: int | None) -> None:
    """Copies the tokenizer files; ``model_max_length`` (the cross-encoder's max length) set if given."""
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    cfg_path = os.path.join(dst, "tokenizer_config.json")
    if model_max_length and os.path.exists(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
        _write_json(cfg_path, cfg | {"model_max_length": int(model_max_length)})


def _write_readme(d: str, spec: ServingSpec, provenance: dict[str, Any]) -> None:
    layout = serving(spec.kind)
    imp, load, use = layout.loader
    lengths = (f"pairs of {spec.pair_maxlen} tokens" if layout.pairs
               else f"queries {spec.query_maxlen} / documents {spec.doc_maxlen} tokens")
    note = ("" if not layout.one_length else
            f"\nsentence-transformers has one max_seq_length ({spec.doc_maxlen}, the document length) for both "
            f"sides; to truncate queries as in training set `model.max_seq_length = {spec.query_maxlen}` before "
            "encoding them.\n")
    text = (f"# distill-jax {spec.kind} student\n\nExported by `distill-jax export` from run "
            f"`{provenance.get('run', '?')}` step {provenance.get('step', '?')} (trained on {lengths}).\n\n"
            f"```python\n{imp}\n{load.replace('DIR', repr('path/to/this/directory'))}\n{use}\n```\n{note}")
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write(text)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"distill_jax": version("distill-jax")}
    except PackageNotFoundError:
        return {}


def _to_numpy(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)


# ---------------------------------------------------------------------------------------------------------------
# The serving layouts (``Kind.serving`` names one)
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Serving:
    """How a model kind is served: its native layout and its plain transformers directory.

    Attributes:
      write: the native writer ``(dir, spec, enc, params, vocab, pooler)``.
      architecture: the transformers class of the (root) ``config.json`` the native layout writes.
      loader: (import, load, use) lines of the README's snippet (``DIR`` is the directory).
      pretrained_architecture: the ``config.json`` class of the plain transformers format, when it is not
        ``architecture`` (ColBERT: Stanford's ``HF_ColBERT``).
      prefix: the encoder's key prefix in the plain transformers format.
      base_pooler: the root is a ``BertModel`` whose pooler the student neither uses nor trains: its weights are
        copied from the base checkpoint so that ``AutoModel`` finds every weight.
      pairs: the model scores (query, passage) pairs: one pair length (the tokenizer's ``model_max_length``) and a
        classifier ``config.json`` with the score activation.
      one_length: the serving library has one ``max_seq_length`` for queries and documents (the README says how
        to truncate queries as in training).
    """

    write: Callable[..., None]
    architecture: str
    loader: tuple[str, str, str]
    pretrained_architecture: str | None = None
    prefix: str = "bert."
    base_pooler: bool = False
    pairs: bool = False
    one_length: bool = False


SERVING: dict[str, Serving] = {
    "pylate": Serving(
        _write_colbert, "BertModel",
        ("from pylate import models", "model = models.ColBERT(model_name_or_path=DIR)",
         "q = model.encode(queries, is_query=True); d = model.encode(docs, is_query=False)"),
        pretrained_architecture="HF_ColBERT", base_pooler=True),  # Stanford's HF_ColBERT names (bert.*, linear)
    "sparse_encoder": Serving(
        _write_sparse_encoder, "BertForMaskedLM",
        ("from sentence_transformers import SparseEncoder", "model = SparseEncoder(DIR)",
         "q = model.encode_query(queries); d = model.encode_document(docs)"), one_length=True),
    "cross_encoder": Serving(
        _write_cross_encoder, "BertForSequenceClassification",
        ("from sentence_transformers import CrossEncoder", "model = CrossEncoder(DIR)",
         "scores = model.predict([(query, passage), ...])"), pairs=True),
    "sentence_transformer": Serving(
        _write_sentence_transformer, "BertModel",
        ("from sentence_transformers import SentenceTransformer", "model = SentenceTransformer(DIR)",
         "q = model.encode(queries); d = model.encode(docs)"), prefix="", base_pooler=True, one_length=True),
}


def serving(kind: str) -> Serving:
    """The serving layout of model ``kind`` (its ``Kind.serving``)."""
    return SERVING[kinds.get(kind).serving]


# ---------------------------------------------------------------------------------------------------------------
# Safety: never delete or mix with what export did not write
# ---------------------------------------------------------------------------------------------------------------


def check_out_dir(out_dir: str, workdir: str | None = None) -> None:
    """Refuses an output directory export could only write by deleting or mixing with foreign files.

    Allowed: a missing path, an empty directory, or an earlier export (its ``distill_jax_export.json`` lists every
    file in it). Refused: a file; a non-empty directory without the marker or with files the marker does not list;
    ``out_dir`` equal to, inside, or holding ``workdir``.

    Raises:
      ExportRefused: naming the directory and the fix.
    """
    out = os.path.realpath(out_dir)
    if workdir is not None:
        work = os.path.realpath(workdir)
        if out == work or out.startswith(work + os.sep):
            raise ExportRefused(f"--out {out_dir} is inside the work directory {workdir}: export replaces its "
                                "output directory, which could delete the run's checkpoints; choose a directory "
                                f"outside it (e.g. {work.rstrip(os.sep)}-export)")
        if work.startswith(out + os.sep):
            raise ExportRefused(f"--out {out_dir} holds the work directory {workdir}; choose a new directory for "
                                "the export")
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise ExportRefused(f"--out {out_dir} exists and is not a directory; choose a new directory")
    present = _files_under(out_dir)
    if not present:
        return
    marker = os.path.join(out_dir, MARKER)
    if not os.path.isfile(marker):
        raise ExportRefused(f"--out {out_dir} exists and holds files distill-jax export did not write (no "
                            f"{MARKER}; e.g. {present[0]}); export never deletes them: pass a new or empty "
                            "directory, or remove that one yourself")
    try:
        with open(marker) as f:
            listed = set(json.load(f)["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportRefused(f"{marker} is unreadable ({type(e).__name__}: {e}); export will not replace "
                            f"{out_dir}: pass a new directory, or remove that one yourself") from e
    foreign = [p for p in present if p != MARKER and p not in listed]
    if foreign:
        raise ExportRefused(f"--out {out_dir} is an earlier export but also holds files it did not write "
                            f"({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); move them away or "
                            "pass another directory")


def _files_under(d: str) -> list[str]:
    """Relative paths of every file (and link) under ``d``, sorted."""
    out = []
    for root, dirs, files in os.walk(d):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(root, x))]:
            out.append(os.path.relpath(os.path.join(root, name), d))
    return sorted(out)


def _publish(out_dir: str, write, marker: dict[str, Any], workdir: str | None) -> str:
    """Runs ``write(tmp)`` in a fresh hidden sibling directory, adds the marker, and moves it to ``out_dir``,
    replacing an earlier export there (only the files its marker lists are deleted)."""
    check_out_dir(out_dir, workdir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(os.path.abspath(out_dir))
    tmp = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    try:
        write(tmp)
        _write_json(os.path.join(tmp, MARKER), {"distill_jax_export": 1, **marker, "files": _files_under(tmp)})
        check_out_dir(out_dir, workdir)  # again: the directory may have changed while we wrote
        if os.path.isdir(out_dir):
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rmdir(old)
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            _remove_export(old)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)  # ours: created above by mkdtemp
        raise
    return out_dir


def _remove_export(d: str) -> None:
    """Deletes an earlier export: the files its marker lists, the marker, then the directories left empty."""
    marker = os.path.join(d, MARKER)
    listed = []
    if os.path.isfile(marker):
        with open(marker) as f:
            listed = json.load(f).get("files", [])
    for rel in listed + [MARKER]:
        path = os.path.join(d, rel)
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)
    for root, _, _ in sorted(os.walk(d, topdown=False), key=lambda t: -len(t[0])):
        try:
            os.rmdir(root)
        except OSError:
            pass  # not empty: something not ours is in there; keep it
