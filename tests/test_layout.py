"""The package boundary: nothing offline imports the online runtime, and the runtime takes from
``training`` only the shared definitions (so the serving image never needs MLflow or Airflow)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
SHARED = {
    "api_keys", "bento_model", "compiled", "config", "decision_store", "drift", "explain",
    "features", "schema", "tree_shap",
}  # fmt: skip


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (``from a import b`` gives ``a`` and ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


OFFLINE = sorted([*PROJECT.glob("training/*.py"), *PROJECT.glob("dags/*.py")])


@pytest.mark.parametrize("path", OFFLINE, ids=lambda p: str(p.relative_to(PROJECT)))
def test_offline_code_never_imports_the_serving_package(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m.split(".")[0] in ("serving", "service")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path", sorted(PROJECT.glob("serving/*.py")), ids=lambda p: str(p.relative_to(PROJECT))
)
def test_the_runtime_takes_only_shared_definitions_from_training(path: Path) -> None:
    taken = {m.split(".")[1] for m in imported_modules(path) if m.startswith("training.")}
    assert taken <= SHARED, f"{path.name} imports training.{sorted(taken - SHARED)}"


def test_the_check_sees_a_nested_import(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from serving.scorer import FraudScorer\n")
    assert "serving.scorer" in imported_modules(sample)
