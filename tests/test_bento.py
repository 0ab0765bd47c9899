"""The Bento store import and `bentoml build` from bentofile.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import bentoml
import pytest
import yaml

from training.core import bento_model
from training.delivery import bento_store

PROJECT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_import_is_idempotent_and_carries_mlflow_metadata(champion) -> None:
    imported = champion["imported"]
    model = bentoml.models.get(imported.tag)
    meta = model.info.metadata
    reg = champion["registration"]
    assert meta["mlflow_model_version"] == reg.version
    assert meta["mlflow_run_id"] == reg.run_id
    assert meta["mlflow_model_name"] == champion["settings"].registered_model
    for name in (bento_model.PIPELINE, bento_model.INFO, bento_model.WARMUP, bento_model.COMPILED):
        assert Path(model.path_of(name)).exists(), name
    again = bento_store.import_champion(champion["settings"])
    assert not again.created and again.tag == imported.tag


def test_bentoml_build(champion) -> None:
    tag = bento_store.build_bento(PROJECT)
    bento = bentoml.get(tag)
    models = {str(m.tag) for svc in bento.info.services for m in svc.models}
    assert str(champion["imported"].tag) in models
    files = {
        p.relative_to(bento.path).as_posix() for p in Path(bento.path).rglob("*") if p.is_file()
    }
    assert "src/service.py" in files and "src/data/sample/transactions.json" in files
    assert not any(f.startswith("src/tests/") for f in files)
    dockerfile = (Path(bento.path) / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile  # BentoML's default base
    assert "--mount=" not in dockerfile  # the classic builder (Engine API) can build it


def test_bentoml_build_on_a_local_base_image(champion) -> None:
    """What the no-registry stack does: the Bento's Dockerfile starts from a local image."""
    tag = bento_store.build_bento(PROJECT, base_image="fraud-local/python:3.11")
    dockerfile = (Path(bentoml.get(tag).path) / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM fraud-local/python:3.11 " in dockerfile
    assert "uv venv --python 3.11" in dockerfile  # the base's own python3.11 is used


def test_bentofile_pins_match_lock() -> None:
    """The Bento's runtime pins are the versions the project is tested with."""
    lock = (PROJECT / "uv.lock").read_text()
    locked = dict(re.findall(r'\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', lock))
    spec = yaml.safe_load((PROJECT / "bentofile.yaml").read_text())
    for req in spec["python"]["packages"]:
        name, _, version = req.partition("==")
        assert version, f"{name} is not pinned in bentofile.yaml"
        assert locked[name] == version, f"{name}: bentofile {version} != uv.lock {locked[name]}"
