"""The TFDS layout of a teacher-score dataset: features of one record, metadata, shard file names."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence

import numpy as np

from distill_jax.data.collections import DataError

DATASET_NAME = "teacher_scores"
SCHEMA_VERSION = 1
VERSION = "1.0.0"
DONE_SUFFIX = ".done.json"  # the completion record beside a finished shard
# one shard (or its completion record) of ANY num_shards: the only names the writers ever create or remove
SHARD_RE = re.compile(rf"^{DATASET_NAME}-[A-Za-z0-9_]+\.array_record-\d{{5}}-of-\d{{5}}({re.escape(DONE_SUFFIX)})?$")
METADATA_FILES = ("dataset_info.json", "features.json", "metadata.json")  # TFDS's, written by finalisation


def features():
    """The TFDS features of one record (see the module docstring)."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "qid": tfds.features.Text(),
        "pids": tfds.features.Sequence(tfds.features.Text()),
        "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        # two unknown dims need an explicit encoding; "bytes" is raw float32, no compression cost on read
        "scores": tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="bytes"),
    })


def record_serializer() -> Callable[[dict], bytes]:
    """``record -> bytes`` in TFDS's ``tf.train.Example`` encoding, byte-for-byte deterministic.

    TFDS's own ``FeaturesDict.serialize_example`` leaves the order of the Example's feature map to protobuf, which
    changes from one process to the next (two identical runs wrote different shard bytes and dataset fingerprints);
    ``deterministic=True`` sorts the map keys, and the reader decodes both alike.
    """
    from tensorflow_datasets.core import example_serializer

    feats = features()
    serializer = example_serializer.ExampleSerializer(feats.get_serialized_info())
    return lambda rec: serializer.get_tf_example(feats.encode_example(rec)).SerializeToString(deterministic=True)


def metadata(teacher_names: Sequence[str]):
    import tensorflow_datasets as tfds

    return tfds.core.MetadataDict(teacher_names=list(teacher_names), schema_version=SCHEMA_VERSION)


def shard_path(out_dir: str, shard_index: int, num_shards: int, split: str = "train") -> str:
    """TFDS's file name for shard ``shard_index`` of ``num_shards``."""
    return os.path.join(out_dir, f"{DATASET_NAME}-{split}.array_record-{shard_index:05d}-of-{num_shards:05d}")


def shard_done(out_dir: str, shard_index: int, num_shards: int, split: str = "train") -> bool:
    """True when the shard and its completion record were both written (a resumable scorer skips it)."""
    path = shard_path(out_dir, shard_index, num_shards, split)
    return os.path.exists(path) and os.path.exists(path + DONE_SUFFIX)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_identity(path: str | None) -> dict | None:
    """``{"size", "sha256"}`` of an input file (None for None): what a manifest records of it. The path and mtime
    are left out, so a copied or moved input still matches; any change of content does not."""
    if path is None:
        return None
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def own_files(out_dir: str) -> list[str]:
    """The files of ``out_dir`` a teacher-score writer writes (shards of any shard count, their completion
    records, TFDS metadata): the only ones a rewrite may remove. Anything else there is left alone."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(n for n in os.listdir(out_dir) if SHARD_RE.match(n) or n in METADATA_FILES)


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (abs path, size, mtime_ns) -> sha256 checked in this process


def verified_sha256(path: str) -> str:
    """The shard's sha256, checked against its completion record (``.done.json``).

    Cheap on the common path: the size is compared first (a truncated or replaced shard fails at once), the
    content is hashed once per process and file version (cached by path, size and mtime), about 1 s a GB.
    A shard without a completion record (a dataset TFDS itself wrote) is hashed and not compared.

    Raises:
      DataError: naming the shard when it is missing, truncated, or its bytes differ from what was written.
    """
    fix = ("delete it and its .done.json and rerun the command that wrote the dataset with the same arguments "
           "(`distill-jax score` rescores only missing shards), or restore the file from a copy")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: shard listed in dataset_info.json is missing; {fix}") from None
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return _VERIFIED[key]
    summary = None
    if os.path.exists(path + DONE_SUFFIX):
        with open(path + DONE_SUFFIX) as f:
            summary = json.load(f)
    if summary is not None and summary.get("num_bytes") is not None and summary["num_bytes"] != st.st_size:
        raise DataError(f"{path}: shard is {st.st_size} bytes but was written with {summary['num_bytes']} "
                        f"(truncated or replaced); {fix}")
    digest = sha256_file(path)
    if summary is not None and summary.get("sha256") not in (None, digest):
        raise DataError(f"{path}: shard content does not match the sha256 recorded when it was written "
                        f"({digest[:12]}... vs {summary['sha256'][:12]}...): the file is corrupted; {fix}")
    _VERIFIED[key] = digest
    return digest


def shard_sha256(path: str) -> str:
    """The shard's content hash: from its completion record when that matches the file size, else computed
    (about 1 s a GB; a MS MARCO dataset of 500k x 64 candidates is about 0.5 GB)."""
    done = path + DONE_SUFFIX
    if os.path.exists(done):
        with open(done) as f:
            summary = json.load(f)
        if summary.get("num_bytes") == os.path.getsize(path) and "sha256" in summary:
            return summary["sha256"]
    return sha256_file(path)
