"""The embedded default collection: a small real-text retrieval task built from the Python standard library's
docstrings, so ``distill-jax run`` needs no download and no data folder.

Construction (deterministic; documented in docs/run.md):

1. **Source**: the ``.py`` files of a fixed, sorted list of standard-library modules and packages
   (:data:`MODULES`), read from this interpreter's ``stdlib`` directory and parsed with :mod:`ast` (never
   imported, so no code runs and no C module is involved).
2. **Objects**: every module and every public (name not starting with ``_``) function, class and method, nested
   classes included, whose docstring (``ast.get_docstring``, PEP 257 indentation cleaning) has a summary and a body.
3. **Query** = the docstring's summary: its first paragraph (the lines before the first blank line; usually the
   one summary line), whitespace collapsed. Kept when it has ``min_query_words`` to ``max_query_words`` words.
4. **Document** = the rest of the docstring (everything after that first paragraph), with doctest lines
   (``>>>`` / ``...``) dropped, whitespace collapsed and cut to its first ``max_doc_words`` words. Kept when it has
   at least ``min_doc_words`` words. The title is the empty string.
5. **Relevance**: each query has exactly one relevant document, the body of the same object (grade 1). Ids are the
   object's dotted path (``json.decoder.JSONDecoder.decode``), the same for the query and its document.
6. **Dedupe**: an object whose query text or document text (case-folded) equals an earlier object's (in id
   order) is dropped, with both its texts: a copied docstring would be a second, unjudged relevant document.
7. **Size**: when more than ``max_docs`` objects remain, the ``max_docs`` with the smallest
   ``sha256("doc:" + id)`` are kept (a spread over all modules, not the first modules).
8. **Splits**: ``test`` holds the queries with ``sha256("split:" + id)`` below ``test_fraction`` of the hash
   range, ``train`` the others. Every document stays in the corpus whatever its query's split.

The result is the same for the same Python patch release (the text of the stdlib files); ``meta.json`` records the
Python version and a sha256 of the three files, so two machines can compare. The BEIR folder is written into a
temporary sibling and renamed into place, so a folder that exists is complete.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import sysconfig
import tempfile

from distill_jax.data.collections import DataError

# Pure-Python modules and packages present in every CPython 3.11 build (no platform-only, GUI, test, packaging or
# vendor-patched modules: no tkinter, idlelib, test, distutils, ensurepip, site, sysconfig, venv). Sorted; a package
# contributes every .py file under it, in sorted path order.
MODULES = (
    "_collections_abc", "_pydecimal", "_pyio", "_strptime", "_threading_local", "_weakrefset", "abc", "aifc",
    "argparse", "ast", "asynchat", "asyncio", "asyncore", "base64", "bdb", "bisect", "bz2", "calendar", "cgi",
    "cgitb", "chunk", "cmd", "code", "codecs", "codeop", "collections", "colorsys", "compileall", "concurrent",
    "configparser", "contextlib", "copy", "copyreg", "csv", "ctypes", "dataclasses", "datetime", "dbm",
    "difflib", "dis", "doctest", "email", "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib",
    "functools", "genericpath", "getopt", "getpass", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq",
    "hmac", "html", "http", "imaplib", "imghdr", "imp", "importlib", "inspect", "io", "ipaddress", "json",
    "linecache", "locale", "logging", "lzma", "mailbox", "mailcap", "mimetypes", "modulefinder",
    "multiprocessing", "netrc", "nntplib", "ntpath", "nturl2path", "numbers", "operator", "optparse", "os",
    "pathlib", "pdb", "pickle", "pickletools", "pipes", "pkgutil", "platform", "plistlib", "poplib",
    "posixpath", "pprint", "profile", "pstats", "pty", "py_compile", "pyclbr", "pydoc", "queue", "quopri",
    "random", "re", "reprlib", "rlcompleter", "runpy", "sched", "secrets", "selectors", "shelve", "shlex",
    "shutil", "smtpd", "smtplib", "sndhdr", "socket", "socketserver", "sqlite3", "ssl", "stat", "statistics",
    "string", "struct", "subprocess", "sunau", "symtable", "tabnanny", "tarfile", "telnetlib", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "tomllib", "trace", "traceback", "tracemalloc", "tty",
    "types", "typing", "unittest", "urllib", "uu", "uuid", "warnings", "wave", "weakref", "webbrowser",
    "wsgiref", "xdrlib", "xml", "xmlrpc", "zipapp", "zipfile", "zipimport", "zoneinfo",
)
SKIP_PARTS = ("test", "tests", "__main__")  # package sub-paths left out (test suites, entry points)


@dataclasses.dataclass(frozen=True)
class BuiltinConfig:
    """Size and shape of the stdlib-docstring collection (see the module docstring for the construction).

    Attributes:
      max_docs: keep at most this many objects (documents = queries), chosen by a hash of the id.
      test_fraction: the share of queries in the ``test`` split (by a hash of the id); the rest is ``train``.
      min_query_words, max_query_words: bounds on the summary's length in words.
      min_doc_words: the body must have at least this many words (after dropping doctest lines) ...
      max_doc_words: ... and is cut to its first this many words.
    """

    max_docs: int = 2000
    test_fraction: float = 0.2
    min_query_words: int = 3
    max_query_words: int = 30
    min_doc_words: int = 10
    max_doc_words: int = 48

    def __post_init__(self):
        if self.max_docs < 10:
            raise ValueError(f"builtin.max_docs = {self.max_docs}; it must be >= 10 to split train / test")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"builtin.test_fraction = {self.test_fraction}; it must be in (0, 1)")
        if self.min_doc_words > self.max_doc_words:
            raise ValueError(f"builtin.min_doc_words {self.min_doc_words} > max_doc_words {self.max_doc_words}")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One object: its dotted id, the query (summary) and the document (body)."""

    id: str
    query: str
    doc: str


def stdlib_dir() -> str:
    """This interpreter's pure-Python standard library directory."""
    return sysconfig.get_paths()["stdlib"]


def module_files(root: str | None = None, modules: tuple[str, ...] = MODULES) -> list[tuple[str, str]]:
    """(dotted module name, path) of every source file of ``modules``, in sorted order.

    Raises:
      DataError: a module of the list has no source file here (a stripped Python install).
    """
    root = root or stdlib_dir()
    out, missing = [], []
    for name in sorted(modules):
        single, package = os.path.join(root, f"{name}.py"), os.path.join(root, name)
        if os.path.isfile(single):
            out.append((name, single))
        elif os.path.isfile(os.path.join(package, "__init__.py")):
            files = []
            for folder, dirs, names in os.walk(package):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_PARTS and not d.startswith(("_", ".")))
                files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
            for path in sorted(files):
                rel = os.path.relpath(path, root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                if rel[-1] in SKIP_PARTS:
                    continue
                out.append((".".join(rel), path))
        else:
            missing.append(name)
    if missing:
        raise DataError(f"the standard library at {root} has no source for {', '.join(missing)} (a stripped "
                        "Python install?); build the default collection with a full CPython 3.11, or pass --data "
                        "DIR with a BEIR collection")
    return out


_DOCTEST = re.compile(r"^\s*(>>>|\.\.\.)")


def split_docstring(doc: str) -> tuple[str, str]:
    """(summary paragraph, body) of a cleaned docstring, each with whitespace collapsed; doctest lines dropped
    from the body."""
    lines = doc.strip().splitlines()
    cut = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    summary = " ".join(" ".join(lines[:cut]).split())
    body = " ".join(" ".join(line for line in lines[cut:] if not _DOCTEST.match(line)).split())
    return summary, body


def entries_of_source(module: str, source: str, config: BuiltinConfig) -> list[Entry]:
    """The kept objects of one module's source text, in definition order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []  # a file this parser version cannot read (none in MODULES today): leave it out
    out = []

    def add(name: str, node) -> None:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            query, text = split_docstring(doc)
            words = text.split()
            if (config.min_query_words <= len(query.split()) <= config.max_query_words
                    and len(words) >= config.min_doc_words):
                out.append(Entry(name, query, " ".join(words[:config.max_doc_words])))

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name[:1] != "_":
                add(f"{prefix}.{node.name}", node)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}.{node.name}")

    add(module, tree)
    visit(tree.body, module)
    return out


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def build_entries(config: BuiltinConfig = BuiltinConfig(), root: str | None = None) -> list[Entry]:
    """Every kept, deduplicated object of :data:`MODULES`, sampled to ``max_docs``, sorted by id."""
    entries: dict[str, Entry] = {}
    for module, path in module_files(root):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        for e in entries_of_source(module, source, config):
            entries.setdefault(e.id, e)  # an id defined twice (if/else branches): the first definition
    seen_q, seen_d, kept = set(), set(), []
    for e in sorted(entries.values(), key=lambda e: e.id):
        q, d = e.query.casefold(), e.doc.casefold()
        if q in seen_q or d in seen_d:
            continue
        seen_q.add(q)
        seen_d.add(d)
        kept.append(e)
    if len(kept) > config.max_docs:
        kept = sorted(sorted(kept, key=lambda e: _hash("doc:" + e.id))[:config.max_docs], key=lambda e: e.id)
    return kept


def split_of(entry_id: str, test_fraction: float) -> str:
    """``"test"`` or ``"train"``, by a hash of the id."""
    return "test" if _hash("split:" + entry_id) < test_fraction * 2**64 else "train"


def write_builtin(out_dir: str, config: BuiltinConfig = BuiltinConfig(), root: str | None = None) -> dict:
    """Builds the collection into ``out_dir`` (BEIR layout: corpus.jsonl, queries.jsonl, qrels/train.tsv,
    qrels/test.tsv, plus meta.json), atomically; an existing ``out_dir`` is left as is and its meta returned.

    Returns:
      the meta: ``{"source", "python", "config", "num_docs", "num_queries": {split: n}, "sha256"}``.
    """
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("config") != dataclasses.asdict(config):
            raise DataError(f"{out_dir} holds a builtin collection built with {meta.get('config')}, not "
                            f"{dataclasses.asdict(config)}; use a new work directory")
        return meta
    entries = build_entries(config, root)
    splits = {"train": [], "test": []}
    for e in entries:
        splits[split_of(e.id, config.test_fraction)].append(e)
    if not splits["train"] or not splits["test"]:
        raise DataError(f"builtin collection: {len(splits['train'])} train / {len(splits['test'])} test queries; "
                        "raise builtin.max_docs or change builtin.test_fraction")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.partial-", dir=parent)
    try:
        files = {
            "corpus.jsonl": "".join(json.dumps({"_id": e.id, "title": "", "text": e.doc}) + "\n" for e in entries),
            "queries.jsonl": "".join(json.dumps({"_id": e.id, "text": e.query}) + "\n" for e in entries),
        }
        for split, items in splits.items():
            files[f"qrels/{split}.tsv"] = "query-id\tcorpus-id\tscore\n" + "".join(
                f"{e.id}\t{e.id}\t1\n" for e in items)
        digest = hashlib.sha256()
        os.makedirs(os.path.join(tmp, "qrels"))
        for name, text in files.items():
            digest.update(name.encode() + b"\0" + text.encode("utf-8"))
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(text)
        meta = {"source": "Python standard library docstrings (distill_jax.data.builtin)",
                "python": platform.python_version(), "config": dataclasses.asdict(config),
                "num_docs": len(entries), "num_queries": {k: len(v) for k, v in splits.items()},
                "sha256": digest.hexdigest()}
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: made above
        raise
    return meta


__all__ = ["MODULES", "BuiltinConfig", "Entry", "stdlib_dir", "module_files", "split_docstring",
           "entries_of_source", "build_entries", "split_of", "write_builtin"]
