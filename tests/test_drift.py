"""Drift: the training reference, PSI, the service's sliding window and `fraudops drift`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from training.cli import app
from training.core import drift


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 20_000
    return pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 30.0, n),
            "night": (rng.random(n) < 0.2).astype(np.float64),
            "mcc": rng.choice(["grocery", "fuel", "online"], n, p=[0.5, 0.3, 0.2]),
        }
    )


def test_reference_bins_and_round_trip(frame: pd.DataFrame) -> None:
    ref = drift.build_reference(frame, ["amount", "night", "mcc"])
    amount, night, mcc = ref.features
    assert amount.kind == "numeric" and amount.n_bins == 10
    assert np.allclose(amount.expected, 0.1, atol=0.01)  # quantile bins: equal shares
    # a flag: ties collapse to edges [0, 1]; the bin above 1 stays empty in training
    assert night.edges == [0.0, 1.0]
    assert night.expected == pytest.approx([0.8, 0.2, 0.0], abs=0.01)
    assert mcc.kind == "categorical" and mcc.categories == ["fuel", "grocery", "online"]
    assert mcc.n_bins == 4 and mcc.expected[-1] == 0.0  # "other" bin, empty in training
    assert drift.Reference.from_json(ref.to_json()) == ref


def test_psi_separates_stable_from_shifted(frame: pd.DataFrame) -> None:
    ref = drift.build_reference(frame.iloc[:10_000], ["amount", "night", "mcc"])
    same = ref.psi(frame.iloc[10_000:])
    assert max(same.values()) < drift.MODERATE
    shifted = frame.iloc[10_000:].assign(
        amount=lambda d: d["amount"] * 5, mcc=lambda d: np.where(d.index % 2, "crypto", d["mcc"])
    )
    psi = ref.psi(shifted)
    assert psi["amount"] > drift.SIGNIFICANT and psi["mcc"] > drift.SIGNIFICANT
    assert psi["night"] < drift.MODERATE
    assert drift.level(psi["amount"]) == "significant"


def test_window_matches_batch_psi_of_its_last_rows(frame: pd.DataFrame) -> None:
    ref = drift.build_reference(frame.iloc[:5_000], ["amount", "night", "mcc"])
    window = drift.DriftWindow(ref, size=3_000)
    stream = frame.iloc[5_000:].assign(amount=lambda d: d["amount"] * np.linspace(1, 3, len(d)))
    seen = 0
    for size in [1, 7, 500, 2_999, 4_000, 13, 1_200, 3_000, 250]:  # wraps, overflows the window
        batch = stream.iloc[seen : seen + size]
        window.add({c: batch[c].to_numpy() for c in batch.columns})
        seen += size
        expected = ref.psi(stream.iloc[max(0, seen - 3_000) : seen])
        assert window.filled == min(seen, 3_000)
        assert window.psi() == pytest.approx(expected, abs=1e-12)


def test_queued_batches_are_binned_like_batches_added_one_by_one(frame: pd.DataFrame) -> None:
    ref = drift.build_reference(frame.iloc[:5_000], ["amount", "night", "mcc"])
    stream = frame.iloc[5_000:].assign(amount=lambda d: d["amount"] * np.linspace(1, 3, len(d)))
    queued, eager = drift.DriftWindow(ref, size=2_000), drift.DriftWindow(ref, size=2_000)
    seen = 0
    # 300 one-row batches pass FLUSH_BATCHES (an automatic flush), 2,500 rows overflow the window
    for size in [1] * 300 + [2_500, 40, 1]:
        batch = {c: stream[c].to_numpy()[seen : seen + size] for c in stream.columns}
        queued.add(batch)
        eager.add(batch)
        eager.flush()
        seen += size
        assert queued.filled == eager.filled == min(seen, 2_000)
    assert queued.psi() == pytest.approx(eager.psi(), abs=1e-12)
    assert queued.psi() == pytest.approx(ref.psi(stream.iloc[seen - 2_000 : seen]), abs=1e-12)


def test_window_skips_clock_driven_features(frame: pd.DataFrame) -> None:
    ref = drift.build_reference(frame, ["amount", "night", "mcc"])
    window = drift.DriftWindow(ref, size=100, skip=("night",))
    for _ in range(3):
        window.add(
            {"amount": np.array([1.0, 2.0]), "night": np.ones(2), "mcc": np.array(["x", "fuel"])}
        )
    psi = window.psi()
    assert set(psi) == {"amount", "mcc"} and window.filled == 6
    mcc = ref.features[2]
    expected = drift.psi(np.asarray(mcc.expected), mcc.counts(np.array(["x", "fuel"] * 3)))
    assert psi["mcc"] == pytest.approx(expected)


def test_window_rejects_empty_size(frame: pd.DataFrame) -> None:
    ref = drift.build_reference(frame, ["amount"])
    with pytest.raises(ValueError, match="window size"):
        drift.DriftWindow(ref, 0)


def test_reference_is_logged_with_the_model_and_imported(champion) -> None:
    from pathlib import Path

    import bentoml

    from training import registry
    from training.core import bento_model

    client = registry.configure(champion["settings"])
    version, ref = registry.load_reference(client, "fraud-detector", registry.CHAMPION)
    assert version == champion["imported"].mlflow_version
    assert ref.names == champion["result"].feature_columns
    folder = Path(bentoml.models.get(champion["imported"].tag).path)
    bento_ref = bento_model.Layout.of(folder).drift_reference
    assert drift.Reference.load(bento_ref) == ref


def test_drift_command_reports_and_fails_above(champion, small_data_dir, tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "drift"
    args = ["drift", "--data", str(small_data_dir), "--last-days", "7", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "drift.json").read_text())
    assert set(scores) == set(champion["result"].feature_columns)
    assert (out / "drift.png").stat().st_size > 10_000
    html = (out / "drift.html").read_text()
    assert "TX_AMOUNT" in html and "drift.png" in html
    # the training window is in the data: nothing should drift significantly
    assert max(scores.values()) < drift.SIGNIFICANT, scores
    strict = runner.invoke(app, [*args, "--fail-above", "0"])
    assert strict.exit_code == 1


def test_drift_command_without_a_model_is_a_clear_error(small_data_dir, monkeypatch) -> None:
    monkeypatch.setenv("FRAUD_REGISTERED_MODEL", "no-such-model")
    from training.core.config import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["drift", "--data", str(small_data_dir)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "no drift reference for no-such-model@champion" in result.output
