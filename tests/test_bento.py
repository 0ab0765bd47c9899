"""The Bento store import and `bentoml build` from bentofile.yaml."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest
import yaml

from training.core import bento_model
from training.delivery import bento_store

from .servers import KEY, write_key_file

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


def test_the_bento_ships_only_what_serving_needs_and_scores_with_it(champion, tmp_path) -> None:
    """The built Bento's sources are service.py, serving/ and training/core/ (no offline code,
    nothing that imports MLflow); the service imports and scores from those sources alone, with
    the project's own folder out of reach and MLflow and Airflow refused on import."""
    tag = bento_store.build_bento(PROJECT)
    src = Path(bentoml.get(tag).path) / "src"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    python = {f for f in files if f.endswith(".py")}
    outside = {
        f for f in python
        if f != "service.py" and not f.startswith(("serving/", "training/core/"))
        and f != "training/__init__.py"
    }  # fmt: skip
    assert not outside, f"the Bento ships offline code: {sorted(outside)}"
    assert {"service.py", "serving/scorer.py", "training/core/features.py"} <= python
    assert any(f.startswith("training/core/migrations/versions/") for f in files)
    size = sum((src / f).stat().st_size for f in files)
    print(f"\nBento sources: {len(files)} files, {size / 1024:.0f} KiB")
    probe = (
        "import sys, importlib.abc, json\n"
        "class Refuse(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('mlflow', 'airflow'):\n"
        "            raise ImportError(f'{name} is not in the serving image')\n"
        "sys.meta_path.insert(0, Refuse())\n"
        f"sys.path = [p for p in sys.path if p not in ('', {str(PROJECT)!r})]\n"
        "sys.path.insert(0, '.')\n"
        "import training\n"
        "assert training.__file__.startswith(sys.path[0]) or not training.__file__.startswith("
        f"{str(PROJECT)!r}), training.__file__\n"
        "try:\n"
        "    import training.pipeline\n"
        "    raise SystemExit('training.pipeline importable from the Bento')\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "from starlette.testclient import TestClient\n"
        "import service\n"
        "with TestClient(service.FraudDetector.to_asgi()) as client:\n"
        "    r = client.get('/test', headers={'Authorization': 'Bearer ' + sys.argv[1]})\n"
        "print(json.dumps([r.status_code, r.json(), sorted(m for m in sys.modules "
        "if m.startswith('training.'))]))\n"
    )
    env = {
        **os.environ,
        "FRAUD_API_KEYS_FILE": str(write_key_file(tmp_path)),
        "FRAUD_JOURNAL_DIR": str(tmp_path / "journal"),
        "FRAUD_DECISION_DB_URL": f"sqlite:///{tmp_path / 'decisions.db'}",
        "PYTHONPATH": "",
    }
    out = subprocess.run(
        [sys.executable, "-c", probe, KEY], cwd=src, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    status, body, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == 200 and body["status"] == "ok" and body["n"] > 0, body
    assert loaded and all(m.startswith("training.core") for m in loaded), loaded


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
