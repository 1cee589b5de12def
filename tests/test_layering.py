"""Data flows one way through the package (README, Layout): each room imports only rooms on a lower layer, and
no two rooms import each other. Read from the source with `ast`, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dynamic_detr"

# lower layers first; a room may import its own layer only where ALLOWED_SIDEWAYS says so
LAYERS: list[set[str]] = [
    {"errors", "fileio"},
    {"progress", "visualize", "distributed"},
    {"config"},
    {"checkpoint", "data"},
    {"model"},
    {"objective"},
    {"evaluate"},
    {"train", "predict"},
    {"export"},
    {"api", "serve"},  # serve: the HTTP server over predict and export
    {"cli", "__init__"},  # the package's front door loads api lazily
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _room(module: str) -> str:
    """`dynamic_detr.train.trainer` -> `train`; the package's own `__init__` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(path: Path, type_only: bool = True) -> set[str]:
    """Absolute names of the package modules `path` imports (relative imports resolved); without `type_only`,
    those under `if TYPE_CHECKING:` (annotations only, never run) are left out."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skipped = set()
    if not type_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dynamic_detr":
                continue
            for alias in node.names:  # `from .. import distributed` names a module, `from . import x` too
                found.add(f"{target}.{alias.name}" if _is_module(f"{target}.{alias.name}") else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dynamic_detr"}
    return found


def _room_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _room(_module_name(path))
        for target in _imports(path):
            dst = _room(target)
            if dst not in (src, "__init__"):
                edges.setdefault((src, dst), []).append(f"{_module_name(path)} -> {target}")
    return edges


def test_every_room_has_a_layer() -> None:
    rooms = {_room(_module_name(p)) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert rooms <= set(LAYER), f"rooms without a layer in LAYERS: {sorted(rooms - set(LAYER))}"


def test_rooms_import_only_lower_layers() -> None:
    wrong = [why for (src, dst), whys in _room_edges().items() if LAYER[dst] >= LAYER[src] for why in whys]
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_the_layering_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    # the check above must not pass by reading nothing: a function-level relative import is found
    path = PACKAGE / "model" / "detector.py"
    assert "dynamic_detr.config" in _imports(path)
    assert any(_room(t) == "model" for t in _imports(path))


def test_no_module_imports_itself_through_others() -> None:
    graph = {_module_name(p): _imports(p, type_only=False) - {_module_name(p)} for p in PACKAGE.rglob("*.py")}
    cycles = []

    def visit(module: str, path: list[str], done: set[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in done:
                visit(target, [*path, target], done)
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module], done)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
