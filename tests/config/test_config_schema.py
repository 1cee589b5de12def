"""The schema documents itself: every field of every config dataclass has a docstring that says what it means
and where its default comes from ("Source: the paper", a cited work, or "ours"). Read from the source with `ast`,
so a field added without one fails here."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

import dynamic_detr.config as config_pkg
from dynamic_detr.config import Config, ModelConfig

PACKAGE = Path(config_pkg.__file__).parent
SCHEMA_FILES = [PACKAGE / "schema.py", PACKAGE / "model_schema.py"]


def _is_dataclass(node: ast.ClassDef) -> bool:
    names = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", None) for d in node.decorator_list}
    return "dataclass" in names


def field_docs(source: str) -> tuple[list[str], list[str]]:
    """(the dataclass fields declared in `source` as "Class.field", the problems: a field without a docstring
    right after it, or with one that names no source)."""
    seen, problems = [], []
    for cls in ast.parse(source).body:
        if not (isinstance(cls, ast.ClassDef) and _is_dataclass(cls)):
            continue
        for i, stmt in enumerate(cls.body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            name = f"{cls.name}.{stmt.target.id}"
            seen.append(name)
            nxt = cls.body[i + 1] if i + 1 < len(cls.body) else None
            doc = nxt.value.value if (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                                      and isinstance(nxt.value.value, str)) else None
            if doc is None:
                problems.append(f"{name}: no docstring")
            elif "Source:" not in doc:
                problems.append(f"{name}: the docstring names no source ('Source: ...')")
    return seen, problems


def _schema_classes() -> list[type]:
    """Config and every dataclass reachable from it."""
    todo, found = [Config], []
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += [t for t in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(t) and t not in found]
    return found


def test_every_config_field_has_a_docstring_with_its_source() -> None:
    seen, problems = [], []
    for path in SCHEMA_FILES:
        fields, found = field_docs(path.read_text())
        seen += fields
        problems += [f"{path.name}: {p}" for p in found]
    assert not problems, "config fields without a docstring naming their source:\n" + "\n".join(problems)
    # the check read the whole schema: every field of every dataclass reachable from Config was seen
    expected = {f"{cls.__name__}.{f.name}" for cls in _schema_classes() for f in dataclasses.fields(cls)}
    assert len(_schema_classes()) == 9 and len(expected) > 100
    assert expected <= set(seen), sorted(expected - set(seen))


@pytest.mark.parametrize("source, problem", [
    ('@dataclass\nclass A:\n    x: int = 1\n    y: int = 2\n    """Why. Source: ours."""\n', "A.x: no docstring"),
    ('@dataclass\nclass A:\n    x: int = 1\n    """What, but from where?"""\n', "A.x: the docstring names no"),
    ("@dataclasses.dataclass\nclass A:\n    x: int = 1\n", "A.x: no docstring"),
])
def test_the_docstring_check_finds_a_missing_one(source: str, problem: str) -> None:
    _, problems = field_docs(source)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_names_kept_on_the_model_section() -> None:
    m = ModelConfig(num_classes=2, category_ids=[3, 7], class_names=["cat", "dog"])
    assert m.names() == {3: "cat", 7: "dog"}
    assert ModelConfig().names() == {}


def test_default_config_validates() -> None:
    Config().validate()
