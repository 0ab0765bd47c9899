"""Lifecycle commands: convert, train, evaluate, promote, check, drift, status."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from training.cli import demo
from training.cli.app import (
    AsOfOpt,
    DataOpt,
    EngineOpt,
    SourceOpt,
    app,
    console,
    data_path,
    load_training_data,
    step,
    with_engine,
    with_source,
)
from training.core.config import get_settings

if TYPE_CHECKING:
    pass


@app.command()
def convert(
    data: DataOpt = None,
    out: Path = typer.Option(..., "--out", help="Folder for the per-day parquet files."),
) -> None:
    """Convert transactions (parquet, CSV or pickle; a file or a folder) once into one
    normalised parquet file a day: what `--engine spark` reads and prunes by day.

    Example: `fraudops convert --data exports/2025.csv --out data/bank/transactions`
    """
    from training import data as data_mod

    path = data_path(get_settings(), data)
    try:
        with step(f"converting {path}") as say:
            files = data_mod.convert_to_parquet(path, out, lambda i, n: say(f"file {i}/{n}"))
    except data_mod.DataError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"{len(files)} day files in {out}")


@app.command()
def train(
    data: DataOpt = None,
    grid: str = typer.Option("standard", help="Search grid: quick, standard or full."),
    budget: int | None = typer.Option(None, help="Alerts per day the team can review."),
    margin: float | None = typer.Option(None, help="AP gain a candidate needs to take champion."),
    promote: bool = typer.Option(True, help="Run the champion gate after registering."),
    seed: int = 0,
    source: SourceOpt = None,
    as_of: AsOfOpt = None,
    engine: EngineOpt = None,
) -> None:
    """Train (prequential model selection), log to MLflow, register, and gate the champion.

    Examples: `fraudops train --data data/demo/transactions --grid standard`;
    `fraudops train --source db` (what the service saw, labelled by the label policy)
    """
    from training import pipeline

    settings = with_engine(with_source(get_settings(), source), engine)
    path = data_path(settings, data)
    loaded = load_training_data(settings, path, as_of)
    if budget:
        settings = settings.model_copy(update={"review_budget_per_day": budget})
    results: list = []
    t0 = time.perf_counter()
    with step("training") as say:
        cand = pipeline.train_candidate(
            settings,
            path,
            grid=grid,
            progress=say,
            loaded=loaded,
            seed=seed,
            on_result=results.append,
        )
    _print_search(results[0])
    console.print(
        f"registered {settings.registered_model} version {cand.version} "
        f"(run {cand.run_id}); {time.perf_counter() - t0:.1f}s"
    )
    if promote:
        with step("smoke check + champion gate"):
            dep = pipeline.deploy_candidate(
                settings, cand.version, path, margin=margin, loaded=loaded
            )
        verdict = "[green]champion[/green]" if dep.promoted else "[yellow]challenger[/yellow]"
        console.print(f"version {cand.version} -> {verdict}: {dep.reason}")


def _print_search(result) -> None:
    chosen = {
        "one_se": "the fewest comparisons within one standard error of the best AP",
        "best_ap": "the best AP",
    }[result.selection.get("rule", "best_ap")]
    table = Table(title=f"Prequential validation (mean ± std over folds); * = chosen ({chosen})")
    for col in ("candidate", "AUC", "AP", "CP@100", "comparisons", "fit s"):
        table.add_column(col)
    for cr in sorted(result.search, key=lambda r: -r.summary()["ap_mean"]):
        s = cr.summary()
        mark = " *" if cr.candidate == result.candidate else ""
        table.add_row(
            cr.candidate.name + mark,
            f"{s['auc_mean']:.3f} ± {s['auc_std']:.3f}",
            f"{s['ap_mean']:.3f} ± {s['ap_std']:.3f}",
            f"{s['cp100_mean']:.3f} ± {s['cp100_std']:.3f}",
            f"{s['comparisons_mean']:,.0f}",
            f"{s['fit_seconds']:.0f}",
        )
    console.print(table)
    m = result.test_metrics
    console.print(
        f"hold-out {result.data_window['test_start']}..{result.data_window['test_end']}: "
        f"AUC {m['auc']:.3f}  AP {m['ap']:.3f}  CP@100 {m['cp100']:.3f}  | threshold "
        f"{result.threshold:.3f}: precision {m['precision']:.3f} recall {m['recall']:.3f} "
        f"F1 {m['f1']:.3f} accuracy {m['accuracy']:.4f}"
    )


@app.command()
def evaluate(
    data: DataOpt = None,
    protocol: str = typer.Option("handbook", help="Evaluation protocol (handbook)."),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON.")] = None,
    model_uri: str | None = typer.Option(
        None, help="Evaluate this MLflow model on every fold instead of retraining per fold."
    ),
    balancing: str = "none",
    max_depth: int = 20,
    n_estimators: int = 100,
    family: str = typer.Option("rf", help="Model family: rf, xgb or ensemble (rf + xgb)."),
    boost_depth: int = typer.Option(6, help="Boosted trees' depth (xgb, ensemble)."),
    learning_rate: float = typer.Option(0.1, help="Boosted trees' learning rate."),
    folds: int = 4,
    budget: int | None = None,
    feature_set: str = typer.Option(
        "full", help="full, baseline (the handbook's 15 features) or no-categorical."
    ),
    train_start: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="First training day of the first fold (the others shift back a week each); "
            "default: the last test week ends the data.",
        ),
    ] = None,
    engine: EngineOpt = None,
) -> None:
    """Handbook protocol: train 7 days, delay 7, test 7, over prequential folds; mean ± std.

    Example: `fraudops evaluate --data data/full/transactions --protocol handbook --json eval.json`;
    the handbook's own test periods: `--train-start 2018-08-15` on `fraudops simulate` data.
    """
    from training import data as data_mod
    from training import evaluate as eval_mod

    if protocol != "handbook":
        console.print(f"[red]error:[/red] --protocol: unknown protocol {protocol!r} (handbook)")
        raise typer.Exit(2)
    settings = with_engine(get_settings().model_copy(update={"training_source": "files"}), engine)
    # a Spark pass brings back the folds' days only (every day for a chosen --train-start)
    keep = None if train_start else data_mod.prequential_days(folds)
    loaded = load_training_data(settings, data_path(settings, data), keep_days=keep)
    raw, feats = loaded.raw, loaded.feats
    from training.train import Candidate

    cand = Candidate(
        balancing=balancing,
        max_depth=max_depth,
        n_estimators=n_estimators,
        family=family,
        boost_depth=boost_depth,
        learning_rate=learning_rate,
    )
    if model_uri:
        from training import registry

        registry.configure(settings)
    try:
        with step("evaluating") as say:
            report = eval_mod.handbook_evaluation(
                raw,
                feats,
                cand,
                n_folds=folds,
                budget=budget or settings.review_budget_per_day,
                model_uri=model_uri,
                feature_set=feature_set,
                progress=say,
                train_start=train_start.date() if train_start else None,
            )
    except (data_mod.DataError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    table = Table(title=f"Handbook protocol, {len(report['folds'])} folds")
    table.add_column("metric")
    table.add_column("mean ± std")
    for key, val in report["summary"].items():
        table.add_row(key, f"{val['mean']:.4f} ± {val['std']:.4f}")
    console.print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"wrote {json_out}")


@app.command()
def promote(
    version: str = typer.Argument(..., help="Registered model version to make champion."),
    force: bool = typer.Option(False, help="Skip the gate and move the alias."),
    data: DataOpt = None,
    margin: float | None = None,
    source: SourceOpt = None,
    as_of: AsOfOpt = None,
) -> None:
    """Gate a registered version against the champion on the data's hold-out (or force it).

    Example: `fraudops promote 3 --data data/demo/transactions`
    """
    from training import pipeline, registry

    settings = with_source(get_settings(), source)
    client = registry.configure(settings)
    if force:
        client.set_registered_model_alias(settings.registered_model, registry.CHAMPION, version)
        console.print(f"version {version} is champion (forced)")
        return
    path = data_path(settings, data)
    loaded = load_training_data(settings, path, as_of)
    with step("smoke check + champion gate"):
        dep = pipeline.deploy_candidate(settings, version, path, margin=margin, loaded=loaded)
    console.print(("promoted: " if dep.promoted else "not promoted: ") + dep.reason)


@app.command()
def check(
    data: DataOpt = None,
    days: int = typer.Option(7, min=1, help="Most recent labelled days to score."),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report.")] = None,
    source: SourceOpt = None,
    as_of: AsOfOpt = None,
    engine: EngineOpt = None,
) -> None:
    """The champion on the latest labelled days: precision, recall, AP and drift (the
    retraining DAG's performance check); from the decision log also what the service answered.

    Examples: `fraudops check --data data/demo/transactions --days 7`; `fraudops check --source db`
    """
    from training import champion_check

    settings = with_engine(with_source(get_settings(), source), engine)
    path = data_path(settings, data)
    loaded = load_training_data(settings, path, as_of, keep_days=days)
    with step("scoring the champion"):
        report = champion_check.check_champion(settings, path, days=days, loaded=loaded)
    table = Table(title=f"Champion v{report.champion_version} on {report.window}")
    table.add_column("measure")
    table.add_column("value")
    for key in ("n_transactions", "n_frauds", "precision", "recall", "ap", "max_psi"):
        value = getattr(report, key)
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else f"{value:,}")
    console.print(table)
    for key in ("all", "champion"):
        if key in report.live:
            m = report.live[key]
            console.print(
                f"answered live ({'every model' if key == 'all' else 'the champion'}): "
                f"{m['n']:,} decisions, {m['frauds']:,} frauds: precision {m['precision']:.4f}, "
                f"recall {m['recall']:.4f}, AP {m['ap']:.4f}"
            )
    console.print("retrain: " + "; ".join(report.reasons))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=2))


@app.command()
def drift(
    data: DataOpt = None,
    alias: str = typer.Option("champion", help="Compare against this model alias's reference."),
    last_days: int | None = typer.Option(
        None, min=1, help="Only the last N days of the data (default: all of it)."
    ),
    out: Path = typer.Option(Path("reports/drift"), help="Folder for drift.html/png/json."),
    fail_above: float | None = typer.Option(
        None, help="Exit 1 when any feature's PSI is above this (for pipelines)."
    ),
) -> None:
    """PSI per feature of a data window against the model's training reference; HTML report.

    Example: `fraudops drift --data data/demo/transactions --last-days 7`
    """
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from training import registry, reports
    from training.core import drift as drift_mod
    from training.core import schema

    settings = get_settings()
    client = registry.configure(settings)
    try:
        version, reference = registry.load_reference(client, settings.registered_model, alias)
    except MlflowException as exc:
        console.print(
            f"[red]error:[/red] no drift reference for {settings.registered_model}@{alias}: "
            f"{str(exc).splitlines()[0]}"
        )
        raise typer.Exit(2) from exc
    loaded = load_training_data(settings, data_path(settings, data))
    raw, feats = loaded.raw, loaded.feats
    if last_days:
        cut = raw[schema.TX_DATETIME].max() - pd.Timedelta(days=last_days)
        feats = feats.loc[(raw[schema.TX_DATETIME] > cut).to_numpy()]
    missing = [n for n in reference.names if n not in feats.columns]
    if missing:
        console.print(f"[red]error:[/red] the data lacks the model's features {missing}")
        raise typer.Exit(2)
    html = reports.write_drift_report(
        reference,
        feats,
        out,
        title=f"Feature drift vs {settings.registered_model} v{version} ({alias})",
    )
    scores = reference.psi(feats)
    table = Table(title=f"PSI vs version {version} ({len(feats):,} transactions)")
    for col in ("feature", "PSI", "level"):
        table.add_column(col)
    for name, value in sorted(scores.items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{value:.4f}", drift_mod.level(value))
    console.print(table)
    console.print(f"wrote {html}")
    if fail_above is not None and max(scores.values(), default=0.0) > fail_above:
        raise typer.Exit(1)


@app.command()
def status() -> None:
    """Show the dataset, the registered versions, aliases and the Bento store.

    Example: `fraudops status`
    """
    from training import registry
    from training.delivery import bento_store

    settings = get_settings()
    client = registry.configure(settings)
    table = Table(title=f"{settings.registered_model} ({settings.mlflow_tracking_uri})")
    for col in ("version", "aliases", "test AP", "threshold", "bento"):
        table.add_column(col)
    versions = list(client.search_model_versions(f"name='{settings.registered_model}'"))
    for mv in sorted(versions, key=lambda v: int(v.version)):
        run = client.get_run(str(mv.run_id))
        bento = bento_store.find_imported(settings, str(mv.version))
        table.add_row(
            str(mv.version),
            ",".join(mv.aliases),
            f"{run.data.metrics.get('test_ap', float('nan')):.4f}",
            mv.tags.get("threshold", ""),
            str(bento.tag) if bento else "",
        )
    console.print(table)


def ensure_champion(
    data: Path | None, grid: str, *, customers: int, terminals: int, days: int
) -> None:
    """Simulate demo data if there is none (and no --data), then train a first model if the
    registry has no champion: what ``run`` and ``containerize`` do before serving or building."""
    from training import registry
    from training.demo.simulate import SimulationConfig

    settings = get_settings()
    path = data_path(settings, data)
    if data is None and not any(path.glob("*.parquet")):
        console.print(f"no data in {path}: simulating a demo dataset")
        demo.simulate_into(
            SimulationConfig(n_customers=customers, n_terminals=terminals, n_days=days),
            settings.data_dir,
        )
    else:
        console.print(f"data: {path}")
    client = registry.configure(settings)
    champion = registry.champion_version(client, settings.registered_model)
    if champion is None:
        console.print("no champion yet: training the first model")
        train(data=path, grid=grid, budget=None, margin=None, promote=True, seed=0, source="files")
    else:
        console.print(f"champion: version {champion}")
