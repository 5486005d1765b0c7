"""The training loader: teacher-score records -> fixed-shape numpy batches, sharded per host, resumable.

Data order is a pure function of (seed, step): epoch ``e`` visits the valid records in the permutation
``default_rng([seed, e]).permutation``; global step ``s`` of an epoch takes positions ``[s*G, (s+1)*G)`` of it
(G = global batch) and host ``h`` of ``P`` takes the ``h``-th slice of ``G/P`` of those. Positions past the end
of the epoch are padding examples (``weight`` 0, ``index`` -1, a copy of a real record so every number stays
finite), so every host yields exactly ``ceil(R / G)`` batches an epoch. Candidate sampling draws from
``default_rng([seed, epoch, record])``, so a batch never depends on which host or which restart produced it.

Texts are tokenised ONCE, when the loader is built (``pretokenize``): passages and queries become token tables
(:class:`~distill_jax.data.token_cache.TokenTable`, optionally cached on disk: ``token_cache_dir``), and a batch is
gathered from them and framed with numpy by the same ``assemble_*`` functions as the text path (``encode_*``), so
both give the same bytes. grain's ``MapDataset`` maps step -> batch, and its thread prefetch (``ReadOptions``)
builds the next batches while the accelerator runs the current step. :meth:`LoaderIterator.get_state` returns a
JSON dict (grain's position plus the settings that make it meaningful) that the trainer stores in its orbax
checkpoint; :meth:`LoaderIterator.set_state` refuses a state whose seed, process count, dataset fingerprint,
... differ, naming the field.

Every record is checked once when the loader is built (NaN/inf scores, candidate or query ids missing from the
collection, duplicate candidates, no positive): under the "raise" policy the first bad record stops the run with
its index and qid named, under "skip" bad records are left out of every epoch and counted. Nothing reaches a jit
step unchecked.

The batch (the contract with the train step; B = host batch, N = ``num_candidates``):

* ``query``: ``input_ids``, ``attention_mask`` (+ ``score_mask`` for ColBERT) int32 [B, Lq]
* ``docs``: the same keys, int32 [B, N, Ld]
* ``pairs`` (cross-encoder, instead of query/docs): ``input_ids``, ``attention_mask``, ``token_type_ids``
  int32 [B, N, L]
* ``teacher_scores`` float32 [B, N] (column 0: the positive), ``mask`` float32 [B, N] (1: real candidate),
  ``weight`` float32 [B] (0: padding example), ``index`` int64 [B] (record index, -1 for padding).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import warnings
from collections.abc import Mapping

import numpy as np

from distill_jax import kinds
from distill_jax.config import ConfigError
from distill_jax.data.collections import DataError, TextTable
from distill_jax.data.scores import BadInputPolicy, RecordChecker, TeacherScoreDataset, load_teacher_scores

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """Settings of the training loader.

    Attributes:
      batch_size: GLOBAL batch (queries per step over all hosts); each host yields ``batch_size / process_count``.
      num_candidates: N candidates per query: 1 positive + N-1 negatives.
      sampling: "hardest" (the best-scored positive and the N-1 negatives the teacher scores highest) or
        "random" (a random positive and N-1 negatives drawn without replacement from the ``top_k`` negatives by
        teacher score), re-drawn every epoch.
      top_k: pool of "random" sampling (None: every negative).
      teacher_combine: how T teacher columns become one: "column" (``teacher_column``), "mean", or "zmean" (each
        column z-normalised over the query's candidates, then averaged: teachers on different scales).
      teacher_column: the column for "column".
      model_kind: decides the tokenisation: "colbert" (markers, [MASK] expansion, punctuation mask), "splade" /
        "dense" (``[CLS] text [SEP]``), "cross_encoder" (``pairs``).
      query_maxlen, doc_maxlen: token lengths of queries and documents (ColBERT's are taken from here too).
      pair_maxlen: token length of a (query, passage) pair for the cross-encoder.
      seed: the data seed (shuffle and sampling).
      shuffle: shuffle each epoch (False: dataset order, for evaluation).
      num_epochs: epochs to yield (None: forever).
      num_threads, prefetch: grain threads building batches and batches built ahead.
      policy: bad-record handling (see :class:`BadInputPolicy`).
      pretokenize: tokenise every passage and query once when the loader is built and gather batches from the
        token tables (True), or tokenise each batch's texts at every step (False: the slow text path, kept as
        the reference the tests compare with; both give identical batches).
      token_cache_dir: directory where the token tables are cached by fingerprint (tokenizer, texts, length), so
        a restart reads them instead of tokenising again ("" = no cache).
      length_buckets: padded lengths a batch's token groups may be cut to (documents, (query, passage) pairs,
        and queries except ColBERT's, whose [MASK] padding is part of the model): each group of a step's batch
        to the smallest bucket that holds the longest sequence the GLOBAL batch can contain (a per-record bound
        over every sampling draw, so every host cuts alike), else the group's maximum length. () = every batch
        at the maximum lengths. The train step compiles once per bucket combination used; needs
        ``pretokenize``.
    """

    batch_size: int
    num_candidates: int = 8
    sampling: str = "hardest"
    top_k: int | None = None
    teacher_combine: str = "mean"
    teacher_column: int = 0
    model_kind: str = "colbert"
    query_maxlen: int = 32
    doc_maxlen: int = 180
    pair_maxlen: int = 256
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    num_threads: int = 2
    prefetch: int = 4
    policy: BadInputPolicy = BadInputPolicy()
    pretokenize: bool = True
    token_cache_dir: str = ""
    length_buckets: tuple = ()

    def __post_init__(self):
        if self.length_buckets and not self.pretokenize:
            raise ValueError("LoaderConfig.length_buckets needs pretokenize=True (the token tables give the lengths)")
        if any(int(b) < 1 for b in self.length_buckets):
            raise ValueError(f"LoaderConfig.length_buckets={self.length_buckets}: lengths must be >= 1")
        if self.sampling not in ("hardest", "random"):
            raise ValueError(f"LoaderConfig.sampling={self.sampling!r}: use 'hardest' or 'random'")
        if self.teacher_combine not in ("column", "mean", "zmean"):
            raise ValueError(f"LoaderConfig.teacher_combine={self.teacher_combine!r}: use column, mean or zmean")
        if self.model_kind not in kinds.KINDS:
            raise ValueError(f"LoaderConfig.model_kind={self.model_kind!r}: one of {tuple(kinds.KINDS)}")
        if self.num_candidates < 1 or self.batch_size < 1:
            raise ValueError("LoaderConfig.batch_size and num_candidates must be >= 1")


def combine_teachers(scores: np.ndarray, how: str, column: int = 0) -> np.ndarray:
    """One score per candidate from T teacher columns.

    Args:
      scores: float32 [M, T].
      how: "column", "mean" or "zmean" (per-column ``(s - mean) / std`` over the M candidates, then the mean;
        a constant column contributes 0).
    Returns:
      float64 [M].
    """
    s = scores.astype(np.float64)
    if how == "column":
        if not 0 <= column < s.shape[1]:
            raise ValueError(f"teacher_column {column} but the dataset has {s.shape[1]} teacher columns")
        return s[:, column]
    if how == "zmean":
        std = s.std(axis=0)
        s = (s - s.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return s.mean(axis=1)


def positives_and_ranked_negatives(labels: np.ndarray, teacher: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive positions, negative positions hardest first by teacher score; ties keep record order)."""
    neg = np.nonzero(labels <= 0)[0]
    return np.nonzero(labels > 0)[0], neg[np.argsort(-teacher[neg], kind="stable")]


def sample_candidates(labels: np.ndarray, teacher: np.ndarray, n: int, sampling: str, top_k: int | None,
                      rng: np.random.Generator | None) -> np.ndarray:
    """Chooses the candidates of one example: the positive first, then up to n-1 negatives.

    Args:
      labels: int32 [M] (> 0: positive).
      teacher: float64 [M] combined teacher scores.
    Returns:
      int64 [<= n] positions into the record's candidates.
    """
    pos, neg = positives_and_ranked_negatives(labels, teacher)
    if sampling == "hardest":
        first = pos[np.argmax(teacher[pos])]
        chosen = neg[: n - 1]
    else:
        first = pos[rng.integers(len(pos))]
        pool = neg[:top_k] if top_k is not None else neg
        chosen = np.sort(rng.choice(len(pool), size=min(n - 1, len(pool)), replace=False))
        chosen = pool[chosen]
    return np.concatenate([[first], chosen]).astype(np.int64)


class TrainLoader:
    """Per-host view of a teacher-score dataset as training batches.

    Args:
      dataset: a :class:`TeacherScoreDataset` or its directory.
      corpus: passage texts by id (:class:`TextTable`, e.g. ``TextTable.from_collection(collection)``).
      queries: query texts by id (a dict or a :class:`TextTable`).
      tokenizer: a fast tokenizer (``distill_jax.data.tokenize.load_tokenizer``).
      config: :class:`LoaderConfig`.
      process_index, process_count: this host's place (default ``jax.process_index()/process_count()``; tests
        pass them to simulate hosts in one process).
      colbert: ColBERT tokenisation settings (markers, punctuation); its lengths are replaced by the config's.
    """

    def __init__(self, dataset, corpus: TextTable, queries, tokenizer, config: LoaderConfig, *,
                 process_index: int | None = None, process_count: int | None = None, colbert=None):
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if config.batch_size % process_count:
            raise ValueError(f"global batch_size {config.batch_size} is not divisible by the {process_count} "
                             f"processes: use a multiple of {process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        self.dataset = dataset if isinstance(dataset, TeacherScoreDataset) else load_teacher_scores(dataset)
        self.corpus = corpus
        self.queries = queries if isinstance(queries, TextTable) else TextTable.from_mapping(dict(queries), "queries")
        self.config = config
        self.process_index, self.process_count = process_index, process_count
        self.host_batch = config.batch_size // process_count
        if config.teacher_combine == "column" and config.teacher_column >= len(self.dataset.teacher_names):
            raise ValueError(f"teacher_column {config.teacher_column} but the dataset has teachers "
                             f"{self.dataset.teacher_names}")
        self.spec = kinds.get(config.model_kind).token_spec(config.query_maxlen, config.doc_maxlen,
                                                           config.pair_maxlen, colbert)
        self._tokenizer = tokenizer
        self.valid, self.skipped = self._scan()
        if len(self.valid) == 0:
            raise DataError(f"{self.dataset.path}: no usable record")
        self.doc_tokens = self.query_tokens = None
        if config.pretokenize:
            self.doc_tokens, self.query_tokens = self._tokenize_tables()
        self.length_bounds = self._length_bounds() if config.length_buckets else {}
        self.steps_per_epoch = -(-len(self.valid) // config.batch_size)
        self._perm_cache: dict[int, np.ndarray] = {}
        self._perm_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- checks
    def _scan(self) -> tuple[np.ndarray, dict[str, int]]:
        """Checks every record once; returns the valid record indices and the skip counts."""
        checker = RecordChecker(self.dataset.path, self.config.policy, len(self.dataset.teacher_names),
                                self.corpus)
        valid = []
        for i in range(len(self.dataset)):
            try:
                rec = self.dataset.record(i)
            except ValueError as e:  # TFDS cannot decode it (e.g. a 'scores' of another shape than its 'pids')
                checker.seen += 1
                checker.fault(i, None, "shape", f"field 'scores' or 'labels' cannot be decoded: "
                              f"{' '.join(str(e).split())[:160]}")
                continue
            ok = checker.check(i, rec["qid"], rec["pids"], rec["labels"], rec["scores"])
            if ok and rec["qid"] not in self.queries:
                checker.fault(i, rec["qid"], "missing_query", "field 'qid' names no query of the collection")
                ok = False
            if ok:
                valid.append(i)
        skipped = checker.finish()
        return np.asarray(valid, np.int64), skipped

    # ------------------------------------------------------------------------------------------- order
    @property
    def num_examples(self) -> int:
        """Valid records an epoch (over all hosts)."""
        return len(self.valid)

    def _perm(self, epoch: int) -> np.ndarray:
        with self._perm_lock:
            perm = self._perm_cache.get(epoch)
            if perm is None:
                perm = (np.random.default_rng([self.config.seed, epoch]).permutation(self.valid)
                        if self.config.shuffle else self.valid)
                self._perm_cache = {epoch: perm}  # batches are built in step order: one epoch cached is enough
            return perm

    def global_record_indices(self, step: int) -> np.ndarray:
        """Record indices of the whole batch at global ``step``, host blocks in process order (-1: padding).
        int64 [batch_size]."""
        epoch, local = divmod(step, self.steps_per_epoch)
        perm = self._perm(epoch)
        pos = local * self.config.batch_size + np.arange(self.config.batch_size)
        return np.where(pos < len(perm), perm[np.minimum(pos, len(perm) - 1)], -1)

    def record_indices(self, step: int) -> np.ndarray:
        """Record indices of this host's batch at global ``step`` (-1: padding). int64 [host batch]."""
        start = self.process_index * self.host_batch
        return self.global_record_indices(step)[start:start + self.host_batch]

    # ------------------------------------------------------------------------------------------- lengths
    def _length_bounds(self) -> dict[str, np.ndarray]:
        """Per record index, the longest sequence of each bucketed token group its example can hold over every
        sampling draw ("hardest": exactly its candidates; "random": every positive and the ``top_k`` pool).
        int32 [len(dataset)] per group (0 for unusable records)."""
        cfg = self.config
        size = len(self.dataset)
        bounds: dict[str, np.ndarray] = {}
        for i in self.valid:
            rec = self.dataset.record(int(i))
            teacher = combine_teachers(rec["scores"], cfg.teacher_combine, cfg.teacher_column)
            if cfg.sampling == "hardest":
                reach = sample_candidates(rec["labels"], teacher, cfg.num_candidates, "hardest", None, None)
            else:
                pos, neg = positives_and_ranked_negatives(rec["labels"], teacher)
                reach = np.concatenate([pos, neg[:cfg.top_k]])
            d_len = np.asarray(self.doc_tokens.lengths)[self.corpus.rows([rec["pids"][j] for j in reach])]
            q_len = np.full(len(reach), np.asarray(self.query_tokens.lengths)[self.queries.rows([rec["qid"]])[0]])
            for group, lengths in self.spec.group_lengths(q_len, d_len).items():
                bounds.setdefault(group, np.zeros(size, np.int32))[i] = int(lengths.max())
        return bounds

    def bucket_lengths(self, step: int) -> dict[str, int]:
        """The padded length of each bucketed group at global ``step`` (the same on every host)."""
        index = self.global_record_indices(step)
        index = np.where(index >= 0, index, self.valid[0])  # a padding slot repeats the first valid record
        out = {}
        for group, bound in self.length_bounds.items():
            longest, maxlen = int(bound[index].max()), self.spec.group_maxlen(group)
            out[group] = min([b for b in self.config.length_buckets if longest <= b <= maxlen] + [maxlen])
        return out

    # ------------------------------------------------------------------------------------------- batches
    def _tokenize_tables(self):
        """Token tables of every passage and query, each cut to the longest body any model kind's layout needs
        with this config's lengths (``[CLS] t [SEP]``: L-2, ColBERT and pairs: L-3), so one cached table serves
        every kind."""
        from distill_jax.data.token_cache import TokenTable

        cfg = self.config
        cache = cfg.token_cache_dir or None
        pair_room = cfg.pair_maxlen - 3
        docs = TokenTable.build(self.corpus, self._tokenizer, max(cfg.doc_maxlen - 2, pair_room, 1), cache,
                                desc="tokenising passages")
        queries = TokenTable.build(self.queries, self._tokenizer, max(cfg.query_maxlen - 2, pair_room, 1), cache,
                                   desc="tokenising queries")
        if self.spec.layout == "colbert":
            n = int(np.sum(np.asarray(queries.lengths) > cfg.query_maxlen - 3))
            if n:  # once here, instead of at every batch as the text path does
                warnings.warn(f"{n} of {len(queries)} queries have more than {cfg.query_maxlen - 3} tokens and "
                              f"will be truncated to query_maxlen={cfg.query_maxlen} (markers included); raise "
                              "LoaderConfig.query_maxlen to keep them whole", stacklevel=3)
        return docs, queries

    def _example(self, record_index: int, epoch: int) -> tuple[str, list[str], np.ndarray, np.ndarray]:
        """(qid, N candidate ids, teacher scores float32 [N], mask float32 [N]) of one record."""
        cfg, n = self.config, self.config.num_candidates
        rec = self.dataset.record(record_index)
        teacher = combine_teachers(rec["scores"], cfg.teacher_combine, cfg.teacher_column)
        rng = np.random.default_rng([cfg.seed, epoch, record_index]) if cfg.sampling == "random" else None
        chosen = sample_candidates(rec["labels"], teacher, n, cfg.sampling, cfg.top_k, rng)
        pids = [rec["pids"][i] for i in chosen]
        scores = np.zeros(n, np.float32)
        mask = np.zeros(n, np.float32)
        scores[: len(chosen)] = teacher[chosen]
        mask[: len(chosen)] = 1.0
        pids += [pids[0]] * (n - len(chosen))  # fewer candidates than N: masked repeats of the positive
        return rec["qid"], pids, scores, mask

    def batch(self, step: int) -> dict:
        """This host's batch at global ``step``: a pure function of (seed, step, host)."""
        epoch = step // self.steps_per_epoch
        index = self.record_indices(step)
        qids, pids, scores, masks = [], [], [], []
        for i in index:
            # a padding slot repeats the first valid record (finite numbers, weight 0)
            q, d, s, m = self._example(int(i) if i >= 0 else int(self.valid[0]), epoch)
            qids.append(q)
            pids.extend(d)
            scores.append(s)
            masks.append(m)
        out = {"teacher_scores": np.stack(scores), "mask": np.stack(masks),
               "weight": (index >= 0).astype(np.float32), "index": index.astype(np.int64)}
        if self.config.pretokenize:
            out.update(self._assemble(self.queries.rows(qids), self.corpus.rows(pids)))
        else:
            out.update(self._tokenize(self.queries.texts(qids), self.corpus.texts(pids)))
        if self.length_bounds:
            out.update(cut_groups(out, self.bucket_lengths(step)))
        return out

    def _assemble(self, q_rows: np.ndarray, d_rows: np.ndarray) -> dict:
        """The token groups of a batch from the token tables (rows [B] and [B*N]), framed with numpy."""
        from distill_jax.data import tokenize as tk

        n = self.config.num_candidates
        q_room, d_room = self.spec.rooms
        if self.spec.layout == "pairs":  # a (query, passage) pair per candidate
            q_rows = np.repeat(q_rows, n)
        return tk.assemble_groups(self.spec, tk.layout(self._tokenizer), self.query_tokens.gather(q_rows, q_room),
                                  self.doc_tokens.gather(d_rows, d_room), n)

    def _tokenize(self, queries: list[str], docs: list[str]) -> dict:
        """The token groups of a batch from its texts (the text path, ``pretokenize=False``)."""
        from distill_jax.data import tokenize as tk

        return tk.encode_groups(self._tokenizer, self.spec, queries, docs)

    # ------------------------------------------------------------------------------------------- iteration
    @property
    def total_steps(self) -> int | None:
        return None if self.config.num_epochs is None else self.config.num_epochs * self.steps_per_epoch

    def state_fields(self) -> dict:
        """The settings a saved position is only meaningful with."""
        cfg = self.config
        return {"seed": cfg.seed, "process_count": self.process_count, "process_index": self.process_index,
                "fingerprint": self.dataset.fingerprint, "batch_size": cfg.batch_size,
                "num_candidates": cfg.num_candidates, "sampling": cfg.sampling, "shuffle": cfg.shuffle,
                "num_examples": self.num_examples}

    def __iter__(self) -> LoaderIterator:
        return LoaderIterator(self)


class LoaderIterator:
    """Iterator over a :class:`TrainLoader`'s batches with grain thread prefetch and a checkpointable state."""

    def __init__(self, loader: TrainLoader):
        import grain

        self.loader = loader
        stop = loader.total_steps if loader.total_steps is not None else sys.maxsize
        cfg = loader.config
        self._ds = grain.MapDataset.range(0, stop).map(loader.batch)
        self._it = iter(self._ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.num_threads,
                                                                    prefetch_buffer_size=cfg.prefetch)))
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self._it)
        self.step += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serialisable position (grain's state + the settings it depends on)."""
        return {"step": self.step, "grain": self._it.get_state(), **self.loader.state_fields()}

    def set_state(self, state: Mapping) -> None:
        """Resumes at a saved position.

        Raises:
          ConfigError (a ValueError): naming the first setting (seed, process count, dataset, batch size, ...) that
          differs from the one the position was saved with, the config field that sets it, and the fix.
        """
        for field, value in self.loader.state_fields().items():
            if field not in state:
                raise ConfigError(f"the saved data position has no {field!r}: it was not written by this loader "
                                  f"(or by an older version); {_FIX}")
            if state[field] != value:
                what = STATE_FIELDS.get(field, field)
                saved, now = state[field], value
                if field == "fingerprint":
                    saved, now = f"{str(saved)[:12]}...", f"{str(now)[:12]}..."
                raise ConfigError(f"data position mismatch in field {field!r}: saved {saved!r}, this run has "
                                  f"{now!r} (set by {what}); a saved position means nothing with other data "
                                  f"settings. {_FIX}")
        self._it.set_state(state["grain"])
        self.step = int(state["step"])


# the config field (or cause) behind each setting a saved data position depends on
STATE_FIELDS = {
    "seed": "data.seed",
    "process_count": "the number of processes, JAX_NUM_PROCESSES",
    "process_index": "this process's JAX_PROCESS_ID",
    "fingerprint": "the teacher-score dataset: data.dataset_dir, or its shards were rewritten",
    "batch_size": "data.batch_size",
    "num_candidates": "data.n_candidates",
    "sampling": "data.sampling",
    "shuffle": "shuffling",
    "num_examples": "the usable records: data.bad_records, data.empty_docs, data.collection_dir",
}
_FIX = ("Resume with the settings the run was started with (its work directory's config.json), or train these "
        "settings in a new workdir")


# ---------------------------------------------------------------------------------------------------------------
# From a run's config
# ---------------------------------------------------------------------------------------------------------------


def cut_groups(batch: dict, lengths: dict[str, int]) -> dict:
    """The token groups of ``batch`` cut to ``lengths`` (last axis).

    Raises:
      RuntimeError: a cut column holds a real token (a bound was wrong; never silently truncate).
    """
    out = {}
    for group, n in lengths.items():
        arrays = batch[group]
        if np.any(arrays["attention_mask"][..., n:]):
            raise RuntimeError(f"length bucket {n} of token group {group!r} would cut real tokens")
        out[group] = {k: v[..., :n] for k, v in arrays.items()}
    return out


def tokenizer_path(cfg) -> str:
    """The tokenizer directory of a run: ``data.tokenizer``, else its base checkpoint's
    (:func:`distill_jax.config.base_checkpoint`: the model checkpoint, or the teacher's for a student made of the
    teacher's layers; a work directory resolves to its own base)."""
    from distill_jax.config import base_checkpoint
    from distill_jax.models.hf import resolve_checkpoint_dir

    path = cfg.data.tokenizer or base_checkpoint(cfg)
    if not path:
        raise DataError("no tokenizer: set data.tokenizer (or model.checkpoint, whose tokenizer is used)")
    return resolve_checkpoint_dir(path)


def loader_for(cfg, vocab_size: int):
    """This host's batch iterator (with ``get_state``/``set_state``) for a run's ``cfg.data``.

    Token ids are checked against the model's vocabulary once here (the token tables hold every id the loader
    will ever emit), not per batch.
    """
    import jax

    d = cfg.data
    if d.source == "synthetic":
        from distill_jax.data.synthetic import SyntheticBatches

        return SyntheticBatches(d, cfg.model.kind, vocab_size, jax.process_index(), jax.process_count())
    from distill_jax.data.collections import load_collection
    from distill_jax.data.tokenize import load_tokenizer
    from distill_jax.models.encoder import check_token_ids

    collection = load_collection(d.collection_dir, split=None, on_empty=d.empty_docs)
    tok = load_tokenizer(tokenizer_path(cfg))
    loader_cfg = LoaderConfig(batch_size=d.batch_size, num_candidates=d.n_candidates, model_kind=cfg.model.kind,
                              query_maxlen=d.query_maxlen, doc_maxlen=d.doc_maxlen, pair_maxlen=d.pair_maxlen,
                              seed=d.seed, sampling=d.sampling, top_k=d.top_k or None,
                              teacher_combine=d.teacher_combine, teacher_column=d.teacher_column,
                              policy=BadInputPolicy(d.bad_records, d.max_skip_fraction), pretokenize=d.pretokenize,
                              token_cache_dir=d.token_cache_dir, num_threads=d.num_threads, prefetch=d.prefetch,
                              length_buckets=tuple(d.length_buckets))
    check_vocabulary(tok, vocab_size, tokenizer_path(cfg), cfg.model.kind)
    loader = TrainLoader(d.dataset_dir, TextTable.from_collection(collection), collection.queries, tok, loader_cfg)
    try:
        for name, table in (("passages", loader.doc_tokens), ("queries", loader.query_tokens)):
            if table is not None and len(table.ids):
                check_token_ids(np.asarray(table.ids).reshape(1, -1), vocab_size, f"{name} token table")
        if not loader_cfg.pretokenize:
            check_token_ids(np.arange(len(tok)).reshape(1, -1), vocab_size, "tokenizer vocabulary")
    except ValueError as e:
        raise ConfigError(f"{e} (tokenizer {tokenizer_path(cfg)}; the model's rows come from model.checkpoint "
                          "or model.vocab_size)") from e
    return iter(loader)


def check_vocabulary(tok, vocab_size: int, where: str, model_kind: str) -> None:
    """The tokenizer fits the model's embedding table: every special id the batches frame texts with ([CLS],
    [SEP], [PAD], and [MASK] for ColBERT queries) is a row of it, and the tokenizer has no more ids than it has
    rows. A jitted lookup clamps an out-of-range id silently, training on the wrong row.

    Raises:
      ConfigError: naming the token or the two sizes, the tokenizer directory and the config fields.
    """
    from distill_jax.data import tokenize as tk

    lay = tk.layout(tok)
    fix = ("use the tokenizer saved with the model (data.tokenizer, default: model.checkpoint's), or a model "
           "whose vocabulary matches (model.checkpoint, model.vocab_size)")
    specials = {"[CLS]": lay.cls, "[SEP]": lay.sep, "[PAD]": lay.pad}
    if kinds.get(model_kind).layout == "colbert":
        specials["[MASK]"] = lay.mask
    for name, i in specials.items():
        if i is not None and not 0 <= i < vocab_size:
            raise ConfigError(f"tokenizer {where}: special token {name} has id {i}, outside the model's {vocab_size} "
                              f"embedding rows; {fix}")
    if lay.vocab_size > vocab_size:
        raise ConfigError(f"tokenizer {where} has {lay.vocab_size} token ids but the model embeds {vocab_size}: "
                          f"ids from {vocab_size} up would be clamped to the last row; {fix}")
