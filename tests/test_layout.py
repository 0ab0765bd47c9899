"""The package boundary: nothing offline imports the online runtime, the runtime imports from
``training`` only ``training.core``, and ``training.core`` imports nothing offline (so the serving
image never needs MLflow or Airflow). Every subpackage is walked: no hand-kept list of names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
CORE = "training.core"


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


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (PROJECT / folder).rglob("*.py"))


def rel(path: Path) -> str:
    return str(path.relative_to(PROJECT))


def outside_core(modules: set[str]) -> set[str]:
    """The ``training`` modules of ``modules`` that are not ``training.core`` or below it (the
    bare package ``training`` counts as outside: it would give access to the rest)."""
    return {
        m for m in modules
        if (m == "training" or m.startswith("training.")) and not (
            m == CORE or m.startswith(f"{CORE}.")
        )
    }  # fmt: skip


@pytest.mark.parametrize("path", python_files("training", "dags"), ids=rel)
def test_offline_code_never_imports_the_serving_package(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m.split(".")[0] in ("serving", "service")}
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", [*python_files("serving"), PROJECT / "service.py"], ids=rel)
def test_the_runtime_imports_only_training_core(path: Path) -> None:
    bad = outside_core(imported_modules(path))
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", python_files("training/core"), ids=rel)
def test_the_core_imports_nothing_offline(path: Path) -> None:
    modules = imported_modules(path)
    bad = outside_core(modules) | {m for m in modules if m.split(".")[0] in ("mlflow", "airflow")}
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


def test_the_walk_sees_subpackages_and_the_checks_catch_a_breach(tmp_path: Path) -> None:
    assert PROJECT / "training" / "core" / "migrations" / "env.py" in python_files("training")
    assert PROJECT / "training" / "cli" / "serve.py" in python_files("training")
    sample = tmp_path / "x.py"
    sample.write_text(
        "from training.core import features\n"
        "def f():\n"
        "    from training.delivery import bento_store\n"
        "    from training import registry\n"
    )
    assert outside_core(imported_modules(sample)) == {
        "training", "training.registry", "training.delivery", "training.delivery.bento_store",
    }  # fmt: skip


def test_the_cli_modules_import_each_other_without_cycles() -> None:
    """The command groups form a DAG: app <- lifecycle <- delivery <- serve (keys, decisions
    beside them); a cycle would make the import order matter."""
    folder = PROJECT / "training" / "cli"
    edges = {
        p.stem: {
            m.split(".")[2]
            for m in imported_modules(p)
            if m.startswith("training.cli.") and m.split(".")[2] != p.stem
        }
        for p in folder.glob("*.py")
        if p.stem not in ("__init__", "__main__")
    }
    edges = {k: {v for v in vs if v in edges} for k, vs in edges.items()}
    done: set[str] = set()
    while len(done) < len(edges):
        ready = {k for k, vs in edges.items() if k not in done and vs <= done}
        assert ready, f"import cycle among {sorted(set(edges) - done)}"
        done |= ready


@pytest.mark.parametrize("path", python_files("training", "serving"), ids=rel)
def test_no_module_over_500_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 500, f"{rel(path)} has {lines} lines: split it at its seams"


def test_the_service_entry_point_stays_thin() -> None:
    lines = len((PROJECT / "service.py").read_text().splitlines())
    assert lines < 450, f"service.py has {lines} lines: wiring only, the logic lives in serving/"
