"""The fraudops CLI: every command documents itself with an example; errors are clear."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from training.cli import app

runner = CliRunner()
COMMANDS = [
    "simulate",
    "train",
    "evaluate",
    "promote",
    "drift",
    "check",
    "import-bento",
    "serve",
    "run",
    "status",
    "keys create",
    "keys list",
    "keys revoke",
    "keys env",
    "decisions show",
    "decisions export",
    "decisions purge",
    "replay",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "fraudops" in result.output


def test_simulate_writes_daily_files(tmp_path) -> None:
    result = runner.invoke(
        app,
        [
            "simulate",
            "--customers",
            "50",
            "--terminals",
            "100",
            "--days",
            "4",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "transactions").glob("*.parquet"))) == 4
    assert (tmp_path / "simulation.json").exists()


def test_missing_data_is_a_clear_error(tmp_path) -> None:
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_an_unknown_source_or_an_empty_decision_log_is_a_clear_error(tmp_path) -> None:
    bogus = runner.invoke(app, ["train", "--source", "kafka"])
    assert bogus.exit_code == 2 and "--source: 'kafka' is not files or db" in bogus.output
    empty = runner.invoke(
        app,
        ["train", "--source", "db", "--data", str(tmp_path / "none")],
        env={"FRAUD_DECISION_DB_URL": f"sqlite:///{tmp_path / 'store.db'}"},
    )
    assert empty.exit_code == 2, empty.output
    assert "no training window from the decision log" in empty.output
    assert "no decisions logged" in empty.output


def test_replay_needs_a_simulated_dataset(tmp_path) -> None:
    result = runner.invoke(app, ["replay", "--data-root", str(tmp_path)])
    assert result.exit_code == 2 and "no simulated dataset" in result.output


def test_evaluate_writes_json(small_data_dir, tmp_path) -> None:
    out = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            str(small_data_dir),
            "--json",
            str(out),
            "--folds",
            "2",
            "--n-estimators",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(out.read_text())
    assert len(report["folds"]) == 2 and report["summary"]["ap"]["mean"] > 0.3
    # a start the data cannot hold: exit 2, the option named
    result = runner.invoke(
        app, ["evaluate", "--data", str(small_data_dir), "--train-start", "2030-01-01"]
    )
    assert result.exit_code == 2 and "--train-start 2030-01-01" in result.output


def test_check_reports_the_champion_on_recent_days(champion, small_data_dir, tmp_path) -> None:
    import json

    out = tmp_path / "check.json"
    args = ["check", "--data", str(small_data_dir), "--days", "7", "--json", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["champion_version"] == champion["imported"].mlflow_version
    assert report["n_transactions"] > 1_000 and report["n_frauds"] > 0
    assert 0 < report["ap"] <= 1 and 0 <= report["precision"] <= 1
    assert report["reasons"][0] == "daily schedule"
    assert report["retrain"] == (len(report["reasons"]) > 1)  # schedule alone: not "needed"


def test_keys_create_list_revoke(tmp_path) -> None:
    """`fraudops keys`: the key is printed once on stdout, listed without it, revoked by name."""
    from training.core import api_keys

    path = tmp_path / "api-keys.json"
    made = runner.invoke(
        app,
        ["keys", "create", "--name", "checkout", "--scopes", "score,label", "--rps", "50",
         "--file", str(path)],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("fm_") and key not in path.read_text()
    stored = api_keys.load(path).find("checkout")
    assert stored is not None and api_keys.matches(stored, key)
    assert stored.scopes == ["score", "label"] and stored.requests_per_s == 50
    listed = runner.invoke(app, ["keys", "list", "--file", str(path)])
    assert "checkout" in listed.output and "score,label" in listed.output
    assert key not in listed.output
    bad = runner.invoke(
        app, ["keys", "create", "--name", "x", "--scopes", "write", "--file", str(path)]
    )
    assert bad.exit_code == 2 and "unknown scope 'write'" in bad.output
    line = runner.invoke(app, ["keys", "env", "--file", str(path)]).stdout.strip()
    assert line.startswith("FRAUD_API_KEYS_JSON='") and key not in line
    assert api_keys.KeyFile.model_validate_json(line.split("=", 1)[1].strip("'")) == api_keys.load(
        path
    )
    gone = runner.invoke(app, ["keys", "revoke", "checkout", "--file", str(path)])
    assert gone.exit_code == 0 and api_keys.load(path).find("checkout") is None
    assert runner.invoke(app, ["keys", "revoke", "checkout", "--file", str(path)]).exit_code == 1
