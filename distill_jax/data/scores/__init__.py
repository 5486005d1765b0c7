"""Teacher-score datasets: TFDS ArrayRecord shards with one example per query, and importers of public formats.

An example (a *record*) is one query with its candidate list and one score column per teacher:

=========  ======================  =====================================================================
field      TFDS feature            meaning
=========  ======================  =====================================================================
qid        Text                    query id (the text comes from the collection at load time)
pids       Sequence(Text) [M]      candidate passage ids, distinct
labels     Tensor int32 [M]        relevance grade from the qrels / source file (> 0: positive)
scores     Tensor float32 [M, T]   teacher scores, one column per teacher (several = an ensemble)
=========  ======================  =====================================================================

The teacher names are dataset metadata (``metadata.json``: ``teacher_names``, ``schema_version``). No TensorFlow is
needed to write or read: TFDS serialises with its own protobufs and reads with ``as_data_source`` (ArrayRecord,
random access), which is what :mod:`distill_jax.data.pipeline` streams with grain.

One writer produces the TFDS layout (``tfds.builder_from_directory(dir).as_data_source("train")`` reads it):
:func:`write_teacher_scores` writes one shard at a time, atomically (temporary file + rename) with a ``.done.json``
sidecar, so a resumable teacher scorer (``distill-jax score``) writes shard by shard and skips finished shards
(:func:`shard_done`); the writer of the last missing shard also writes ``dataset_info.json``
(:func:`finalize_teacher_scores`). :func:`build_teacher_scores` (importers, ``distill-jax import-scores``) writes a
whole dataset through it.

Modules: :mod:`.schema` (the TFDS features and file names), :mod:`.checks` (records and the bad-input policy),
:mod:`.writer`, :mod:`.reader`, :mod:`.importers` (public formats).

Bad records (NaN/inf scores, a candidate id missing from the corpus, a duplicate candidate id, a query without a
positive, a wrong score shape) are handled by a :class:`BadInputPolicy`: ``"raise"`` stops at the first with the
source, record and field named; ``"skip"`` drops the record, counts it by type, logs the counts, and still raises
when more than ``max_skip_fraction`` of the records were bad.
"""

from distill_jax.data.scores.checks import BadInputPolicy, RecordChecker, make_record, validated
from distill_jax.data.scores.importers import read_ce_scores, read_hofstaetter_tsv, read_st_hard_negatives
from distill_jax.data.scores.reader import TeacherScoreDataset, decode, find_dataset_dir, load_teacher_scores
from distill_jax.data.scores.schema import DATASET_NAME, SCHEMA_VERSION, VERSION, features, shard_done, shard_path
from distill_jax.data.scores.writer import build_teacher_scores, finalize_teacher_scores, write_teacher_scores

__all__ = ["BadInputPolicy", "RecordChecker", "make_record", "validated", "read_ce_scores", "read_hofstaetter_tsv",
           "read_st_hard_negatives", "TeacherScoreDataset", "decode", "find_dataset_dir", "load_teacher_scores",
           "DATASET_NAME", "SCHEMA_VERSION", "VERSION", "features", "shard_done", "shard_path",
           "build_teacher_scores", "finalize_teacher_scores", "write_teacher_scores"]
