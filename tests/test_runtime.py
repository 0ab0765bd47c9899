"""serving.runtime.build in process, without BentoML's server: a worker's collaborators from the
settings and the champion's Bento model directory, wired as service.py uses them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import bentoml
import pandas as pd
import pytest

from serving import telemetry as tm
from serving.online_features import records_from_frame
from serving.runtime import Runtime, build
from training.core import decision_store as ds
from training.core import schema
from training.core.config import Settings

pytestmark = pytest.mark.slow  # the session's champion is trained first
PROJECT = Path(__file__).resolve().parent.parent


def runtime_for(champion, tmp_path: Path, **settings: object) -> Runtime:
    model = bentoml.models.get(champion["imported"].tag)
    cfg = Settings(
        decision_db_url=f"sqlite:///{tmp_path / 'decisions.db'}",
        journal_dir=tmp_path / "journal",
        **settings,
    )
    return build(cfg, Path(model.path), model.info.metadata)


def test_build_wires_a_worker_that_scores_logs_and_keeps_up(champion, small_raw, tmp_path):
    rt = runtime_for(champion, tmp_path)
    try:
        assert rt.scorer.model_version == champion["registration"].version
        assert rt.warmed > 0 and rt.scorer.warmup.replayed == 0  # history, then an empty log
        history_end = rt.scorer.bundle.history_end_ms()
        assert rt.clock.now_ms() == history_end  # the stream clock starts where history ends
        after = small_raw.tail(20).copy()
        after[schema.TX_DATETIME] = small_raw[schema.TX_DATETIME].max() + pd.Timedelta(hours=1)
        after[schema.TRANSACTION_ID] = "rt-" + after[schema.TRANSACTION_ID].astype(str)
        records = records_from_frame(schema.normalize(after))
        scored = rt.scorer.score(records)
        assert len(scored.proba) == 20 and ((scored.proba >= 0) & (scored.proba <= 1)).all()
        assert rt.decisions is not None
        lines = rt.decisions.decision_lines(
            records, [None] * 20, scored.proba.tolist(), scored.flagged.tolist(),
            [scored.version] * 20, scored.columns, "m", rt.scorer.threshold, False,
        )  # fmt: skip
        rt.decisions.record_sync(lines)
        rt.decisions.shipper.ship_once()
        with ds.connect(rt.settings.decision_db_url) as conn:
            ids = [r.transaction_id for r in records]
            assert ds.count(conn, ds.decisions, ids) == 20
        before = time.perf_counter()
        tm.STATE_UP.set(0)  # the upkeep must set it, not an earlier test
        rt.upkeep()  # state health, following other workers (none here), gauges
        assert rt.upkeep_due >= before + 1.0
        assert tm.STATE_UP._value.get() == 1  # type: ignore[attr-defined]
    finally:
        if rt.decisions is not None:
            rt.decisions.close()


def test_a_missing_challenger_leaves_the_champion_serving(champion, tmp_path) -> None:
    rt = runtime_for(
        champion, tmp_path, challenger_mode="shadow", challenger_version="999", decision_log=False
    )
    assert rt.decisions is None
    assert rt.scorer.challenger is None
    assert rt.challenger_error is not None and "999" in rt.challenger_error
    with pytest.raises(LookupError):
        rt.set_challenger("canary", "998", None)
    assert rt.challenger_error is not None and "998" in rt.challenger_error
    assert rt.set_challenger("off", None, None)["mode"] == "off"


def test_the_runtime_is_built_without_the_bentoml_server() -> None:
    """Importing the runtime (and everything it wires) loads no BentoML module: the factory
    is framework-free; service.py adds BentoML around it."""
    code = (
        "import json, sys; import serving.runtime; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'bentoml')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
