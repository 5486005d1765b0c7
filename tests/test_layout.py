"""The package's imports follow the pipeline: no module imports a later stage, no cycles between modules or
folders, no private name crosses a module boundary. Read from the source with ``ast`` (every import, including
the ones inside functions), so a new import against the flow fails here."""

import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "distill_jax"

# The stages, in pipeline order; a module may import its own stage or an earlier one. Within a stage, modules
# may import each other as long as there is no cycle.
STAGES = [
    ("core", ["config", "registry", "distributed", "scoring", "models", "losses"]),
    ("kinds", ["kinds"]),
    ("data", ["data"]),  # collections -> candidates / negatives -> scores -> tokenize -> pipeline
    ("teacher", ["teacher"]),
    ("train", ["train"]),
    ("eval", ["eval"]),
    ("export", ["export"]),
    ("jobs", ["jobs"]),
    ("cli", ["cli"]),
]
RANK = {top: i for i, (_, tops) in enumerate(STAGES) for top in tops}


def _modules():
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path):
    """(imported module, imported names) pairs of distill_jax modules, resolved to the deepest known module."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("distill_jax"):
                    yield a.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distill_jax"):
            names = [a.name for a in node.names]
            for n in names:  # "from distill_jax import kinds" imports the module distill_jax.kinds
                if f"{node.module}.{n}" in MODULES:
                    yield f"{node.module}.{n}", []
            yield node.module, [n for n in names if f"{node.module}.{n}" not in MODULES]


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _edges():
    for name, path in MODULES.items():
        for target, names in _imports(name, path):
            if target != name and target != "distill_jax":
                yield name, target, names


def test_every_top_level_entry_has_a_stage():
    tops = {_top(m) for m in MODULES if m != "distill_jax"}
    assert tops <= set(RANK), f"give these a stage in STAGES: {sorted(tops - set(RANK))}"


@pytest.mark.parametrize("source, target, names", list(_edges()), ids=lambda x: x if isinstance(x, str) else "")
def test_imports_run_with_the_pipeline(source, target, names):
    assert RANK[_top(target)] <= RANK[_top(source)], (
        f"{source} imports {target}: a later stage ({STAGES[RANK[_top(target)]][0]}) than its own "
        f"({STAGES[RANK[_top(source)]][0]})")
    private = [n for n in names if n.startswith("_") and not n.startswith("__")]
    assert not private, f"{source} imports private names {private} from {target}"


def _cycle(graph):
    state, stack = {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_no_import_cycle_between_modules():
    graph = {}
    for s, t, _ in _edges():
        if t in MODULES and not MODULES[s].name == "__init__.py":  # a package re-exporting its modules is no cycle
            graph.setdefault(s, set()).add(t)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_import_cycle_between_folders():
    graph = {}
    for s, t, _ in _edges():
        a, b = _top(s), _top(t)
        if a != b:
            graph.setdefault(a, set()).add(b)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_core_needs_no_data_or_evaluation_library():
    """Models, scoring, losses, kinds and the step import no grain / TFDS / bm25s / ir-measures at module level
    (a GPU machine without them still runs the core)."""
    heavy = ("grain", "tensorflow_datasets", "bm25s", "ir_measures", "array_record")
    core = [m for m in MODULES if RANK.get(_top(m), 99) <= RANK["kinds"]] + ["distill_jax.train.step",
                                                                            "distill_jax.train.state"]
    for m in core:
        tree = ast.parse(MODULES[m].read_text())
        for node in tree.body:  # module level only
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad = [n for n in names if n.split(".")[0] in heavy]
                assert not bad, f"{m} imports {bad} at module level"
