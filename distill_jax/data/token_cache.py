"""A corpus tokenised once: a compact table of body tokens that the loader gathers batches from with numpy.

Tokenising the same passages at every step was ~90% of the loader's time (the Rust ``encode_batch`` and the
conversion of its Python lists). :class:`TokenTable` tokenises every text of a :class:`TextTable` once, in chunks
of batched calls of the fast tokenizer, and keeps, per row, the body tokens (no special tokens) cut to ``cap``
plus the full token count (``longest_first`` pair truncation needs the true lengths). :meth:`TokenTable.gather`
returns :class:`distill_jax.data.tokenize.Bodies`, which the same ``assemble_*`` functions as the text path
frame into batches: both paths give the same bytes.

Memory: one flat id buffer (uint16 when the vocabulary has < 65,536 ids, as BERT's; int32 otherwise), int64
offsets and int32 lengths: for MS MARCO's 8.8M passages (~77 word pieces on average) ~1.4 GB + 0.1 GB.

On disk (``cache_dir``): a directory ``tokens-<fingerprint>`` holding ``ids.npy``, ``offsets.npy``,
``lengths.npy`` and ``meta.json``, written under a temporary name and renamed (a crash leaves no half cache),
memory-mapped when read (processes of one host share the pages). The fingerprint is a sha256 over the
tokenizer's full serialisation, ``cap``, and every text in row order, so a changed tokenizer, corpus or length
builds a new table instead of reading a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from distill_jax.data.collections import TextTable
from distill_jax.data.tokenize import Bodies, layout, pack_bodies

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class TokenTable:
    """Body tokens of R texts, row ``r`` = row ``r`` of the :class:`TextTable` it was built from.

    Attributes:
      ids: uint16 or int32 [T] all rows' stored tokens, concatenated.
      offsets: int64 [R + 1] row r is ``ids[offsets[r]:offsets[r + 1]]`` (at most ``cap`` tokens).
      lengths: int32 [R] each text's full token count (before cutting to ``cap``).
      cap: tokens stored per row at most.
      fingerprint: what the table was built from (tokenizer, cap, texts); names its cache directory ("" for a
        table built without a cache).
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, cap: int, fingerprint: str):
        if len(offsets) != len(lengths) + 1 or offsets[-1] != len(ids):
            raise ValueError(f"inconsistent token table: {len(ids)} ids, {len(offsets)} offsets, "
                             f"{len(lengths)} lengths")
        self.ids, self.offsets, self.lengths = ids, offsets, lengths
        self.cap, self.fingerprint = int(cap), fingerprint

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.offsets.nbytes + self.lengths.nbytes

    def gather(self, rows: np.ndarray, width: int) -> Bodies:
        """Body tokens of ``rows`` [K], kept to ``width`` columns.

        Raises:
          ValueError: ``width`` exceeds the stored ``cap`` (the table was built for shorter inputs).
        """
        if width > self.cap:
            raise ValueError(f"token table stores {self.cap} tokens a text but {width} are asked: build it with "
                             f"cap >= {width}")
        rows = np.asarray(rows, np.int64)
        start = self.offsets[rows]
        stored = np.minimum(self.offsets[rows + 1] - start, width)
        pos = np.arange(width)
        valid = pos < stored[:, None]
        ids = np.zeros((len(rows), width), np.int32)
        ids[valid] = self.ids[(start[:, None] + pos)[valid]]
        return Bodies(ids, self.lengths[rows].astype(np.int64))

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def build(cls, texts: TextTable, tok: Any, cap: int, cache_dir: str | os.PathLike | None = None,
              chunk_size: int = 4096, desc: str = "tokenising") -> TokenTable:
        """Tokenises every row of ``texts`` once (or reads the cached table of the same fingerprint).

        Args:
          texts: the texts, by row.
          tok: a fast tokenizer (``load_tokenizer``).
          cap: body tokens stored per row (the longest body any batch layout needs).
          cache_dir: where tables are cached (None: no cache).
          chunk_size: texts per batched tokenizer call.
          desc: progress-bar label.
        """
        from tqdm.auto import tqdm

        if cap < 1:
            raise ValueError(f"token table cap={cap}: store at least 1 token a text")
        lay = layout(tok)
        # The fingerprint is one more pass over every text: only worth it when it names a cache entry.
        fingerprint = "" if cache_dir is None else table_fingerprint(texts, lay.fingerprint, cap)
        path = None if cache_dir is None else os.path.join(os.fspath(cache_dir), f"tokens-{fingerprint[:32]}")
        if path is not None and os.path.isdir(path):
            table = cls.load(path)
            if table.fingerprint == fingerprint:
                log.info("%s: read %d token rows from %s", desc, len(table), path)
                return table
            log.warning("%s: %s holds another table (fingerprint %s); rebuilding", desc, path, table.fingerprint)
        t0 = time.perf_counter()
        dtype = np.uint16 if lay.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
        n = len(texts)
        lengths = np.zeros(n, np.int32)
        chunks = []
        with tqdm(total=n, desc=desc, unit="text", unit_scale=True, mininterval=1.0) as bar:
            for lo in range(0, n, chunk_size):
                hi = min(lo + chunk_size, n)
                batch = [texts.text(r) for r in range(lo, hi)]
                encodings = lay.encoder.encode_batch(batch, add_special_tokens=False)
                body = pack_bodies([e.ids for e in encodings], cap)
                lengths[lo:hi] = body.lengths
                keep = np.arange(cap) < np.minimum(body.lengths, cap)[:, None]
                chunks.append(body.ids[keep].astype(dtype))
                bar.update(hi - lo)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(np.minimum(lengths, cap), out=offsets[1:])
        ids = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
        table = cls(ids, offsets, lengths, cap, fingerprint)
        log.info("%s: %d texts -> %d tokens (%.1f MiB) in %.1f s", desc, n, len(ids), table.nbytes / 2**20,
                 time.perf_counter() - t0)
        if path is not None:
            table.save(path)
        return table

    # ------------------------------------------------------------------------------------------- disk
    def save(self, path: str | os.PathLike) -> None:
        """Writes the table to directory ``path`` atomically (temporary directory, then rename)."""
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tokens-tmp-", dir=parent)
        try:
            for name in ("ids", "offsets", "lengths"):
                np.save(os.path.join(tmp, f"{name}.npy"), getattr(self, name))
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump({"format_version": FORMAT_VERSION, "fingerprint": self.fingerprint, "cap": self.cap,
                           "rows": len(self), "tokens": int(len(self.ids))}, f)
            try:
                os.rename(tmp, path)
            except OSError:
                if not os.path.isdir(path):  # another process of this host finished first: keep its table
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenTable:
        """Reads a table written by :meth:`save`, memory-mapped."""
        path = os.fspath(path)
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: token table format {meta.get('format_version')}, this code reads "
                             f"{FORMAT_VERSION}; delete the directory to rebuild it")
        arrays = {name: np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r")
                  for name in ("ids", "offsets", "lengths")}
        return cls(arrays["ids"], arrays["offsets"], arrays["lengths"], meta["cap"], meta["fingerprint"])


def table_fingerprint(texts: TextTable, tokenizer_fingerprint: str, cap: int) -> str:
    """sha256 over the format version, the tokenizer's fingerprint, ``cap`` and every text (length-prefixed)."""
    h = hashlib.sha256(f"token-table/{FORMAT_VERSION}/{tokenizer_fingerprint}/{cap}/{len(texts)}".encode())
    for r in range(len(texts)):
        b = texts.text(r).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()
