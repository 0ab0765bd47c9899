"""The README stays a guide that matches the code: its length, its annotated tree and its curl
lines; the configuration table (docs/configuration.md) names every setting."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from training.core.config import Settings

PROJECT = Path(__file__).resolve().parent.parent
README = (PROJECT / "README.md").read_text()
MORE = "…"  # a tree line that stands for "and other files" (the folder is not listed in full)
HIDDEN_LISTED = {".ci", ".env.example"}  # dot entries the tree shows; other dotfiles need not


def tree_lines(text: str) -> list[str]:
    """The fenced block after the ``tree:`` marker."""
    block = text.split("<!-- tree:", 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines()[1:] if line.strip() and line.strip() != "."]


def parse_tree(lines: list[str]) -> tuple[set[str], set[str]]:
    """(paths the tree names, folders it lists in full), paths relative to the project."""
    paths: set[str] = set()
    partial: set[str] = set()
    expanded: set[str] = {""}
    stack: list[str] = []
    for line in lines:
        match = re.search(r"[├└]── (\S+)", line)
        assert match, f"not a tree line: {line!r}"
        depth = match.start() // 4
        name = match.group(1)
        stack = stack[:depth]
        parent = "/".join(stack)
        if name == MORE:
            partial.add(parent)
            continue
        path = f"{parent}/{name}".strip("/") if parent else name.rstrip("/")
        paths.add(path.rstrip("/"))
        if parent:
            expanded.add(parent)
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
    return paths, expanded - partial


def project_files() -> set[str]:
    """Tracked and new (not ignored) files, as git sees them."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {f for f in out if (PROJECT / f).exists()}


def test_readme_is_a_guide_not_a_log() -> None:
    assert len(README.splitlines()) <= 300


def tree_problems(lines: list[str], files: set[str]) -> tuple[list[str], list[str]]:
    """(paths the tree invents, entries of a fully listed folder it misses)."""
    paths, complete = parse_tree(lines)
    entries = files | {str(p) for f in files for p in Path(f).parents if str(p) != "."}
    invented = sorted(p for p in paths if p not in entries)
    missing = set()
    for entry in entries:
        parent = str(Path(entry).parent) if "/" in entry else ""
        name = Path(entry).name
        if parent not in complete or name == "__init__.py":
            continue
        if name.startswith(".") and name not in HIDDEN_LISTED:
            continue
        if entry not in paths:
            missing.add(entry)
    return invented, sorted(missing)


def test_the_tree_names_only_what_exists_and_every_module() -> None:
    lines = tree_lines(README)
    invented, missing = tree_problems(lines, project_files())
    assert not invented, f"the README's tree names what does not exist: {invented}"
    assert not missing, f"the README's tree misses: {missing}"
    assert {"training", "serving", "dags"} <= parse_tree(lines)[1]


def test_the_tree_check_catches_a_missing_and_an_invented_module() -> None:
    lines = tree_lines(README)
    files = project_files()
    without = [line for line in lines if "scorer.py" not in line]
    assert tree_problems(without, files)[1] == ["serving/scorer.py"]
    at = next(i for i, line in enumerate(lines) if "hot_swap.py" in line)
    invented = [*lines[:at], "│   ├── magic.py             #   not a file", *lines[at:]]
    assert tree_problems(invented, files)[0] == ["serving/magic.py"]


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_the_configuration_table(field: str) -> None:
    info = Settings.model_fields[field]
    alias = info.validation_alias if isinstance(info.validation_alias, str) else None
    name = alias or f"FRAUD_{field.upper()}"
    table = (PROJECT / "docs" / "configuration.md").read_text()
    assert f"`{name}`" in table


def service_routes() -> list[str]:
    """The routes service.py defines (BentoML APIs by method name, the mounted app's paths up to
    their first parameter) and BentoML's built-in /metrics and /readyz."""
    source = (PROJECT / "service.py").read_text()
    apis = re.findall(r"@bentoml\.api[^\n]*\n\s+(?:async )?def (\w+)", source)
    mounted = re.findall(r'@ops\.(?:get|post|api_route)\("([^"{]+)', source)
    return sorted({*(f"/{name}" for name in apis), *mounted, "/metrics", "/readyz"})


def test_every_endpoint_has_a_curl_line() -> None:
    routes = service_routes()
    assert {"/predict", "/feedback", "/health", "/test", "/admin/reload"} <= set(routes)
    curls = [line for line in README.splitlines() if line.lstrip().startswith("curl")]
    missing = [r for r in routes if not any(f"8080{r}" in line for line in curls)]
    assert not missing, f"no curl line in the README for {missing}"
