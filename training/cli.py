"""The ``fraudops`` command line: each lifecycle step a command with progress and an example
(``fraudops --help``); ``fraudops run`` is the main job."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from training.config import Settings, get_settings

if TYPE_CHECKING:
    import sqlalchemy as sa

    from training.simulate import SimulationConfig

app = typer.Typer(
    help="fraud-mlops: train, track, gate and serve real-time payment-fraud models.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
PROJECT = Path(__file__).resolve().parent.parent
SAMPLE_BODY = (
    '{"transactions": [{"transaction_id": "tx-1", "tx_datetime": "2018-07-10T12:03:27Z", '
    '"customer_id": 42, "terminal_id": 3156, "tx_amount": 57.16}]}'
)
DEMO = {"customers": 2_500, "terminals": 5_000, "days": 100}  # the demo data of `fraudops run`


@app.callback()
def _defaults() -> None:
    """Keep the Bento store inside the project unless BENTOML_HOME says otherwise."""
    os.environ.setdefault("BENTOML_HOME", str(PROJECT / ".bentoml"))


DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="A file or a folder of per-day files (parquet, CSV, pickle)."),
]


@contextmanager
def step(title: str):
    """A spinner with elapsed time; yields a callback that updates its text."""
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(title, total=None)

        def update(msg: str) -> None:
            progress.update(task, description=f"{title}: {msg}")

        yield update
        progress.update(task, description=f"{title}: done", total=1, completed=1)


def _data_path(settings: Settings, data: Path | None) -> Path:
    return data or settings.data_dir / "transactions"


SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="files (--data) or db: the decision log with its labels, the days before it "
        "from --data (default: FRAUD_TRAINING_SOURCE).",
    ),
]
AsOfOpt = Annotated[
    datetime | None,
    typer.Option(
        "--as-of",
        help="db source: the label policy's clock, UTC (default: the latest logged "
        "transaction, or now with FRAUD_CLOCK=wall).",
    ),
]


def _with_source(settings: Settings, source: str | None) -> Settings:
    if source is None:
        return settings
    if source not in ("files", "db"):
        console.print(f"[red]error:[/red] --source: {source!r} is not files or db")
        raise typer.Exit(2)
    return settings.model_copy(update={"training_source": source})


def _load(settings: Settings, path: Path, as_of: datetime | None = None):
    """The training data the settings' source gives, with progress and a one-line summary."""
    from training import data as data_mod
    from training import decision_source, features, pipeline

    try:
        if settings.training_source == "db":
            when = decision_source.as_utc(as_of) if as_of else None
            with step("reading the decision log, recomputing features"):
                loaded = pipeline.load_data(settings, path, when)
        else:
            with step(f"loading {path}") as say:
                raw = data_mod.load_transactions(path, progress=lambda i, n: say(f"file {i}/{n}"))
            with step("offline features"):
                loaded = pipeline.TrainingData(raw, features.offline_features(raw), str(path))
    except (data_mod.DataError, ValueError, pipeline.PipelineError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    raw = loaded.raw
    console.print(
        f"{len(raw):,} transactions, {int(raw['TX_FRAUD'].sum()):,} frauds, "
        f"{raw['TX_DATETIME'].min():%Y-%m-%d} to {raw['TX_DATETIME'].max():%Y-%m-%d}"
    )
    if loaded.window is not None:
        t = loaded.tags
        console.print(
            f"from the decision log: {t['data.logged']} decisions from {t['data.log_first']} "
            f"to the label horizon {t['data.log_until']} ({t['data.labelled']} labelled, "
            f"{t['data.assumed_genuine']} genuine by the {t['data.label_delay_days']}-day "
            f"policy, {t['data.waiting_for_labels']} younger ones wait); "
            f"{t['data.backfilled_from_files']} earlier transactions from {path}"
        )
    return loaded


@app.command()
def simulate(
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: FRAUD_DATA_DIR).")
    ] = None,
    customers: int = typer.Option(5_000, min=1),
    terminals: int = typer.Option(10_000, min=1),
    days: int = typer.Option(183, min=1),
    start_date: str = typer.Option("2018-04-01"),
    radius: float = typer.Option(5.0, min=0.0),
    seed: int = 0,
    terminal_threshold: float = typer.Option(220.0, help="Amount above which a payment is fraud."),
    compromised_terminals_per_day: int = 2,
    terminal_compromise_days: int = typer.Option(28, min=1),
    compromised_customers_per_day: int = 3,
    customer_compromise_days: int = typer.Option(14, min=1),
    card_fraud_multiplier: float = typer.Option(5.0, help="Amount multiplier of card fraud."),
) -> None:
    """Simulate transactions (handbook process) into one parquet file per day.

    Example: `fraudops simulate --customers 5000 --terminals 10000 --days 183 --out data/full`
    """
    from training.simulate import SimulationConfig

    cfg = SimulationConfig(
        n_customers=customers,
        n_terminals=terminals,
        n_days=days,
        start_date=start_date,
        radius=radius,
        seed=seed,
        terminal_threshold=terminal_threshold,
        compromised_terminals_per_day=compromised_terminals_per_day,
        terminal_compromise_days=terminal_compromise_days,
        compromised_customers_per_day=compromised_customers_per_day,
        customer_compromise_days=customer_compromise_days,
        card_fraud_multiplier=card_fraud_multiplier,
    )
    _simulate(cfg, out or get_settings().data_dir)


def _simulate(cfg: SimulationConfig, out: Path) -> None:
    """Simulate and write per-day parquet files under ``out/transactions``."""
    from training.simulate import save_config, write_per_day
    from training.simulate import simulate as run_sim

    target = out / "transactions"
    t0 = time.perf_counter()
    with step("simulating") as say:
        df = run_sim(cfg, progress=say)
    with step(f"writing {target}"):
        paths = write_per_day(df, target)
    save_config(cfg, out)
    console.print(
        f"{len(df):,} transactions, {int(df['TX_FRAUD'].sum()):,} frauds "
        f"({df['TX_FRAUD'].mean():.3%}) in {len(paths)} files, {time.perf_counter() - t0:.1f}s"
    )


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
) -> None:
    """Train (prequential model selection), log to MLflow, register, and gate the champion.

    Examples: `fraudops train --data data/demo/transactions --grid standard`;
    `fraudops train --source db` (what the service saw, labelled by the label policy)
    """
    from training import pipeline

    settings = _with_source(get_settings(), source)
    path = _data_path(settings, data)
    loaded = _load(settings, path, as_of)
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
    settings = get_settings().model_copy(update={"training_source": "files"})
    loaded = _load(settings, _data_path(settings, data))
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

    settings = _with_source(get_settings(), source)
    client = registry.configure(settings)
    if force:
        client.set_registered_model_alias(settings.registered_model, registry.CHAMPION, version)
        console.print(f"version {version} is champion (forced)")
        return
    path = _data_path(settings, data)
    loaded = _load(settings, path, as_of)
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
) -> None:
    """The champion on the latest labelled days: precision, recall, AP and drift (the
    retraining DAG's performance check); from the decision log also what the service answered.

    Examples: `fraudops check --data data/demo/transactions --days 7`; `fraudops check --source db`
    """
    from training import pipeline

    settings = _with_source(get_settings(), source)
    path = _data_path(settings, data)
    loaded = _load(settings, path, as_of)
    with step("scoring the champion"):
        report = pipeline.check_champion(settings, path, days=days, loaded=loaded)
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

    from training import drift as drift_mod
    from training import registry, reports, schema

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
    loaded = _load(settings, _data_path(settings, data))
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


@app.command("import-bento")
def import_bento(
    alias: str = typer.Option(
        "champion",
        help="champion (served from the next start) or challenger (imported beside it for a "
        "live shadow or canary: FRAUD_CHALLENGER_MODE, /admin/challenger).",
    ),
) -> None:
    """Import the MLflow champion (or challenger) into the Bento store (skipped if already
    imported).

    Example: `fraudops import-bento`, `fraudops import-bento --alias challenger`
    """
    from mlflow.exceptions import MlflowException

    from training import bento_store, registry

    if alias not in (registry.CHAMPION, registry.CHALLENGER):
        console.print(f"[red]error:[/red] --alias: champion or challenger, not {alias!r}")
        raise typer.Exit(2)
    with step(f"importing {alias} into the Bento store"):
        try:
            imported = bento_store.import_champion(get_settings(), alias)
        except MlflowException as exc:
            console.print(f"[red]error:[/red] no {alias} in the registry: {exc.message}")
            raise typer.Exit(2) from exc
    state = "imported" if imported.created else "already in the store"
    console.print(f"MLflow version {imported.mlflow_version} {state} as {imported.tag}")


@app.command()
def containerize(
    data: DataOpt = None,
    grid: str = typer.Option("standard", help="Search grid if a first model must be trained."),
) -> None:
    """The champion as a container image: train it first if there is none, import it, build
    the Bento and its image `<FRAUD_API_IMAGE>:v<N>`, and point `:champion` at it (what the
    Compose stack's fraud-api runs). Needs a Docker engine (DOCKER_HOST).

    Example: `docker compose run --rm fraud-bootstrap` (runs `fraudops containerize`)
    """
    from training import bento_store, registry, release

    settings = get_settings()
    if not release.docker_reachable():
        console.print("[red]no Docker engine answers (DOCKER_HOST / /var/run/docker.sock)[/red]")
        raise typer.Exit(2)
    run(data=data, grid=grid, serve_after=False, **DEMO)
    client = registry.configure(settings)
    version = str(registry.champion_version(client, settings.registered_model))
    image = release.image_for(settings, version)
    if release.image_is_current(settings, version):
        console.print(f"{image.ref} already built")
    else:
        with step("bentoml build"):
            tag = bento_store.build_bento(PROJECT, settings.bento_base_image)
        console.print(f"built Bento {tag}; building {image.ref} (the first build downloads ~1 GB)")
        release.containerize(settings, tag, version)
    release.point_champion(image)
    console.print(f"{image.name}:{release.CHAMPION_TAG} -> {image.ref}")


@app.command()
def status() -> None:
    """Show the dataset, the registered versions, aliases and the Bento store.

    Example: `fraudops status`
    """
    from training import bento_store, registry

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


STOP_GRACE_S = 15.0  # SIGTERM/SIGINT: in-flight requests drain, then what is left is killed


def _stop_tree(root: int, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM ``root`` and every process below it (BentoML's circusd and its workers, which run
    in sessions of their own), wait up to ``grace`` seconds while they drain, then SIGKILL what
    is left, including a worker respawned meanwhile."""
    import psutil

    def running(pid: int) -> bool:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        return False

    def tree(pids: set[int]) -> set[int]:
        """``pids`` and their descendants, those still running."""
        found = set(pids)
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                found |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        return {pid for pid in found if running(pid)}

    known = tree({root})
    for pid in known:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while known and time.monotonic() < deadline:
        time.sleep(0.1)
        known = tree(known)
    for pid in known:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


decisions_app = typer.Typer(
    help="The decision log: what the service decided, with which model, and the labels.",
    no_args_is_help=True,
)
app.add_typer(decisions_app, name="decisions")
StoreOpt = Annotated[
    str | None, typer.Option("--db", help="Decision store URL (default: FRAUD_DECISION_DB_URL).")
]


def _store(url: str | None) -> sa.Engine:
    from training import decision_store

    return decision_store.engine_for(url or get_settings().decision_db_url)


@decisions_app.command("show")
def decisions_show(transaction_id: str, db: StoreOpt = None) -> None:
    """A transaction's decision (model, score, threshold, features) and its label history.

    Example: `fraudops decisions show tx-000123`
    """
    from training import decision_store

    engine = _store(db)
    try:
        with engine.connect() as conn:
            row = decision_store.decision(conn, transaction_id)
            history = decision_store.label_history(conn, transaction_id)
    finally:
        engine.dispose()
    if row is None and not history:
        console.print(f"[red]no decision or label for transaction {transaction_id!r}")
        raise typer.Exit(1)
    if row is not None:
        table = Table("field", "value", title=f"decision on {transaction_id}")
        for key, value in row.items():
            if key != "features":
                table.add_row(key, str(value))
        console.print(table)
        features = Table("feature", "value", title="features the model scored")
        for name, value in (row.get("features") or {}).items():
            features.add_row(name, f"{value:g}" if isinstance(value, float) else str(value))
        console.print(features)
    labels = Table("when", "label", "by", "was", title="label history (old to new)")
    previous = "-"
    for event in history:
        now = "fraud" if event["is_fraud"] else "genuine"
        labels.add_row(str(event["labelled_at"]), now, str(event["api_key"]), previous)
        previous = now
    console.print(labels if history else "no label yet")


@decisions_app.command("export")
def decisions_export(
    since: Annotated[datetime, typer.Option(help="First transaction time (UTC).")],
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
    until: Annotated[datetime | None, typer.Option(help="End, exclusive (UTC).")] = None,
    db: StoreOpt = None,
) -> None:
    """Decisions with their latest label to a parquet file (features as JSON text).

    Example: `fraudops decisions export --since 2018-07-01 --out reports/decisions.parquet`
    """
    from training import decision_store
    from training.decision_source import as_utc

    engine = _store(db)
    try:
        with engine.connect() as conn:
            frame = decision_store.decisions_with_labels(
                conn, as_utc(since), as_utc(until) if until else None
            )
    finally:
        engine.dispose()
    frame["features"] = frame["features"].map(json.dumps)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    labelled = int(frame["label"].notna().sum())
    console.print(f"{len(frame):,} decisions ({labelled:,} labelled) -> {out}")


@decisions_app.command("purge")
def decisions_purge(
    older_than_days: Annotated[
        int | None,
        typer.Option(help="Keep this many days (default: FRAUD_DECISION_RETENTION_DAYS)."),
    ] = None,
    db: StoreOpt = None,
) -> None:
    """Delete decisions (and their labels) older than the retention, by transaction day,
    counted back from the store's clock (the latest logged transaction; today with
    FRAUD_CLOCK=wall). The retraining DAG runs it daily.

    Example: `fraudops decisions purge --older-than-days 540`
    """
    from training import pipeline

    settings = get_settings()
    if db:
        settings = settings.model_copy(update={"decision_db_url": db})
    done = pipeline.purge_decisions(settings, older_than_days)
    if not done.before:
        console.print("nothing logged: nothing to purge")
        return
    console.print(
        f"purged {done.decisions:,} decisions and {done.label_events:,} label events "
        f"before {done.before}"
    )


keys_app = typer.Typer(
    help="API keys of the service: scoped, stored as hashes in FRAUD_API_KEYS_FILE.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
KeysFileOpt = Annotated[
    Path | None, typer.Option("--file", help="Key file (default: FRAUD_API_KEYS_FILE).")
]


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key, e.g. checkout-eu.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: score, label, read, admin.")],
    rps: Annotated[float | None, typer.Option(help="Requests a second (none: no limit).")] = None,
    tps: Annotated[
        float | None, typer.Option(help="Transactions a second on /predict and /feedback.")
    ] = None,
    file: KeysFileOpt = None,
) -> None:
    """Create a key and print it once (only its hash is stored).

    Example: `fraudops keys create --name checkout-eu --scopes score --rps 500 --tps 20000`
    """
    from training import api_keys

    path = file or get_settings().api_keys_file
    try:
        key, record = api_keys.create(path, name, api_keys.parse_scopes(scopes), rps, tps)
    except ValueError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(2) from exc
    console.print(f"key {record.id} {record.name!r} ({', '.join(record.scopes)}) in {path}")
    print(key)  # stdout: the key alone, for scripts


@keys_app.command("list")
def keys_list(
    file: KeysFileOpt = None,
    revoked: bool = typer.Option(False, "--revoked", help="Include revoked keys."),
) -> None:
    """The keys of the key file: id, name, scopes, limits, created, revoked.

    Example: `fraudops keys list --revoked`
    """
    from training import api_keys

    path = file or get_settings().api_keys_file
    table = Table("id", "name", "scopes", "requests/s", "transactions/s", "created", "revoked")
    for k in api_keys.load(path).keys:
        if k.active or revoked:
            table.add_row(
                k.id,
                k.name,
                ",".join(k.scopes),
                f"{k.requests_per_s:g}" if k.requests_per_s else "-",
                f"{k.transactions_per_s:g}" if k.transactions_per_s else "-",
                k.created_at.strftime("%Y-%m-%d %H:%M"),
                k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
            )
    Console(width=console.width).print(table)


@keys_app.command("revoke")
def keys_revoke(
    name_or_id: Annotated[str, typer.Argument(help="The key's name or id.")],
    file: KeysFileOpt = None,
) -> None:
    """Revoke a key: the running service refuses it within a second (no restart).

    Example: `fraudops keys revoke checkout-eu`
    """
    from training import api_keys

    path = file or get_settings().api_keys_file
    try:
        record = api_keys.revoke(path, name_or_id)
    except LookupError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(1) from exc
    console.print(f"revoked key {record.id} {record.name!r}")


@keys_app.command("env")
def keys_env(file: KeysFileOpt = None) -> None:
    """Print the key file on one line as `FRAUD_API_KEYS_JSON='...'` for the Compose `.env`
    (the stack mounts it as the service's key file; hashes only, no key).

    Example: `fraudops keys env --file secrets/api-keys.json >> .env`
    """
    from training import api_keys

    path = file or get_settings().api_keys_file
    keys = api_keys.load(path)
    if not keys.active():
        console.print(f"[red]no active key in {path}: `fraudops keys create` first")
        raise typer.Exit(1)
    print(f"FRAUD_API_KEYS_JSON='{keys.model_dump_json(exclude_none=True)}'")


def _local_key(settings: Settings, host: str, port: str) -> None:
    """FRAUD_AUTH=keys with no key file: create the local key; print a curl line with it."""
    from training import api_keys

    if settings.auth != "keys":
        console.print("[yellow]FRAUD_AUTH=off: no API keys, loopback clients only")
        return
    key, created = api_keys.ensure_local_key(settings.api_keys_file, settings.local_key_file())
    if created:
        console.print(
            f"created API key 'local' (every scope) in {settings.api_keys_file}; "
            f"the key itself is in {settings.local_key_file()} (ignored by git)"
        )
    if key is None:
        console.print(f"API keys: {settings.api_keys_file} (`fraudops keys list`)")
        key = "<your key>"
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    console.print(
        f"try:\n  export FRAUD_KEY={key}\n"
        f'  curl -s -H "Authorization: Bearer $FRAUD_KEY" {url}/test\n'
        f"  curl -s -H \"Authorization: Bearer $FRAUD_KEY\" -H 'Content-Type: application/json' "
        f"{url}/predict -d '{SAMPLE_BODY}'",
        soft_wrap=True,
        markup=False,
    )


@app.command()
def replay(
    days: int = typer.Option(7, min=1, help="Simulated days to send."),
    skip_days: int = typer.Option(0, min=0, help="Start this many days after the dataset."),
    labels: bool = typer.Option(
        False, help="Send each day's frauds to /feedback once the label delay has passed."
    ),
    data_root: Path | None = typer.Option(
        None, help="The simulated dataset (its simulation.json); default FRAUD_DATA_DIR."
    ),
    url: str | None = typer.Option(None, help="The service (default: FRAUD_API_URL)."),
    batch: int = typer.Option(100, min=1, max=1_000, help="Transactions per /predict request."),
    key_env: str = typer.Option("FRAUD_KEY", help="Env var with the API key (default: local)."),
) -> None:
    """Stream the simulated days after the dataset through a running service, as live traffic
    (and, with --labels, the chargebacks after the label delay): what the decision log and
    `fraudops train --source db` learn from.

    Example: `fraudops replay --days 14 --labels` (then `fraudops train --source db`)
    """
    from training import replay as replay_mod

    settings = get_settings()
    root = data_root or settings.data_dir
    key = os.environ.get(key_env)
    if key is None and settings.local_key_file().exists():
        key = settings.local_key_file().read_text().strip()
    try:
        with step(f"simulating {days} days after {root}"):
            frame = replay_mod.next_days(root, days, skip_days)
    except (OSError, ValueError) as exc:
        console.print(f"[red]error:[/red] no simulated dataset at {root}: {exc}")
        raise typer.Exit(2) from exc
    target = url or settings.api_url
    try:
        with step(f"replaying {len(frame):,} transactions to {target}") as say:
            done = replay_mod.replay(
                target, frame, key, batch, labels, settings.label_delay_days, progress=say
            )
    except replay_mod.ReplayError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    retried = ", ".join(f"{n} x {s or 'connection'}" for s, n in done.retries.items()) or "none"
    console.print(
        f"{done.days[0]}..{done.days[-1]}: {done.answered:,} answered ({done.flagged:,} flagged, "
        f"{done.degraded:,} degraded), {done.labels_sent:,} fraud labels sent, retries: "
        f"{retried}; {done.seconds:.1f}s ({done.answered / max(done.seconds, 1e-9):,.0f} tx/s)"
    )


@app.command()
def serve(
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Serve the Bento-store champion with `bentoml serve` (blocks). SIGTERM or Ctrl-C drains
    in-flight requests and stops every BentoML process within 15 s.

    Example: `fraudops serve --port 8080`
    """
    settings = get_settings()
    env = {
        **os.environ,
        "FRAUD_HOST": host or settings.host,
        "FRAUD_PORT": str(port or settings.port),
    }
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "service:FraudDetector",
        "--host",
        env["FRAUD_HOST"],
        "--port",
        env["FRAUD_PORT"],
    ]
    _local_key(settings, env["FRAUD_HOST"], env["FRAUD_PORT"])
    console.print(" ".join(cmd))
    # Its own session: a terminal's Ctrl-C reaches this process only, which stops the tree.
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, start_new_session=True)

    def stop(signum: int, _frame: object) -> None:
        console.print(f"{signal.Signals(signum).name}: stopping the service")
        _stop_tree(proc.pid)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    code = proc.wait()
    raise typer.Exit(0 if code in (0, -signal.SIGTERM) else code)


@app.command()
def run(
    data: DataOpt = None,
    grid: str = typer.Option("standard", help="Search grid for the first training."),
    customers: int = typer.Option(DEMO["customers"], help="Demo data: customers."),
    terminals: int = typer.Option(DEMO["terminals"], help="Demo data: terminals."),
    days: int = typer.Option(DEMO["days"], help="Demo data: days."),
    serve_after: bool = typer.Option(True, "--serve/--no-serve"),
) -> None:
    """The main job: simulate demo data if none, train if no champion, import, serve.

    Example: `fraudops run` (what `make run` calls)
    """
    from training import bento_store, registry

    settings = get_settings()
    path = _data_path(settings, data)
    if data is None and not any(path.glob("*.parquet")):
        console.print(f"no data in {path}: simulating a demo dataset")
        from training.simulate import SimulationConfig

        _simulate(
            SimulationConfig(n_customers=customers, n_terminals=terminals, n_days=days),
            settings.data_dir,
        )
    else:
        console.print(f"data: {path}")
    client = registry.configure(settings)
    if registry.champion_version(client, settings.registered_model) is None:
        console.print("no champion yet: training the first model")
        train(data=path, grid=grid, budget=None, margin=None, promote=True, seed=0, source="files")
    else:
        console.print(
            f"champion: version {registry.champion_version(client, settings.registered_model)}"
        )
    if not bento_store.champion_in_store(settings):
        import_bento(alias="champion")
    else:
        console.print("champion already in the Bento store")
    if serve_after:
        serve(host=None, port=None)


if __name__ == "__main__":
    app()
