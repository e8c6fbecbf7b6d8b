"""The package layout is the architecture: a lower layer never imports a higher one, modules import at the top (no
hidden cycles), and function-local imports remain only where a heavy optional dependency is deferred."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "orthopatch"
# Lowest first. A module may import its own layer and the layers below it.
LAYERS = [
    ("orthopatch", "orthopatch.errors", "orthopatch.io", "orthopatch.faults", "orthopatch.config"),
    ("orthopatch.data",),
    ("orthopatch.models",),
    ("orthopatch.analysis",),
    ("orthopatch.patches",),
    ("orthopatch.train",),
    ("orthopatch.evaluate",),
    ("orthopatch.report",),
    ("orthopatch.recipes",),
    ("orthopatch.serve",),
    ("orthopatch.cli",),
]
# Imported inside functions on purpose: optional (lm-eval, vLLM, selenium), only for Hub ids (huggingface_hub), or
# heavy and needed only for figures (matplotlib, which must get its Agg backend before pyplot is imported).
DEFERRED = {"lm_eval", "vllm", "huggingface_hub", "matplotlib", "selenium"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, name
    return best[0]


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) for every import statement of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local = {id(n) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
             for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in local, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in local, node.lineno))
    return out


FILES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: module_name(p))
def test_no_lower_layer_imports_a_higher_one(path):
    name = module_name(path)
    for target, _, line in imports(path):
        if target.startswith("orthopatch"):
            assert layer_of(target) <= layer_of(name), f"{name}:{line} imports {target} (a higher layer)"


@pytest.mark.parametrize("path", FILES, ids=lambda p: module_name(p))
def test_function_local_imports_only_defer_heavy_optional_dependencies(path):
    name = module_name(path)
    if name.startswith("orthopatch.cli"):
        return  # commands defer the whole library on purpose (fast --help and config errors; see cli/__init__)
    for target, local, line in imports(path):
        if local:
            assert target.split(".")[0] in DEFERRED, f"{name}:{line} imports {target} inside a function"


def test_module_level_imports_have_no_cycles():
    graph = {module_name(p): {t for t, local, _ in imports(p) if t.startswith("orthopatch") and not local}
             for p in FILES}
    graph = {k: {t if t in graph else t.rsplit(".", 1)[0] for t in v} for k, v in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph:
                continue
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*trail, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_function_in_src_is_over_80_lines():
    """A whole function fits on a screen; a longer one is a sign that a component wants to come out of it."""
    long = [f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in SRC.rglob("*.py") for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert long == []
