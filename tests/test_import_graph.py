"""The layering of DESIGN.md, checked on the sources: ``core`` imports nothing above it, the three
process packages import ``core`` and never each other, only ``cli`` stands above them, and no
module imports its importer back (directly or round a longer cycle), lazy imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Top-level packages and what each may import of ours besides itself.
ALLOWED = {
    "openai_bpe": set(),  # data (OpenAI's encodings) and its loader, below everything
    "core": {"openai_bpe"},
    "receiver": {"core"},
    "workers": {"core"},
    "reconciler": {"core"},
    "sandbox": {"openai_bpe"},
    "cli": {"core", "receiver", "workers", "reconciler", "sandbox"},
    "benchmarks": {"core", "receiver", "workers", "reconciler", "sandbox", "cli", "openai_bpe"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, packages: list[str]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (anywhere in the file, so lazy imports count)."""
    files = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:  # ``from core import queue`` imports the module core.queue
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[mod] = {t for t in targets if t in files and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(graph.items()):
        top = mod.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                bad.append(f"{mod} imports {target}")
    return bad


def test_no_module_is_part_of_an_import_cycle() -> None:
    graph = import_graph(ROOT, sorted(ALLOWED))
    assert len(graph) > 50, "the walk found the sources"
    assert cycles(graph) == []


def test_every_package_imports_only_what_is_below_it() -> None:
    graph = import_graph(ROOT, sorted(ALLOWED))
    assert layer_violations(graph) == []


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The two defects of issue 13, rebuilt in miniature: the walk must see both."""
    for name, body in {
        "core/__init__.py": "",
        "core/cli.py": "def main():\n    from reconciler.backfill import go\n",
        "reconciler/__init__.py": "",
        "reconciler/backfill.py": "from core.cli import main\n",
        "receiver/__init__.py": "",
        "receiver/admin.py": "def helpers():\n    from receiver import routes\n",
        "receiver/routes.py": "from . import admin\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    graph = import_graph(tmp_path, ["core", "reconciler", "receiver"])
    assert cycles(graph) == [["core.cli", "reconciler.backfill"], ["receiver.admin", "receiver.routes"]]
    assert layer_violations(graph) == ["core.cli imports reconciler.backfill"]
