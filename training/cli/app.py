"""The ``fraudops`` app and what its command groups share: the console, progress steps, the
data options and the loading of training data with a summary."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from training.core.config import Settings

app = typer.Typer(
    help="fraud-mlops: train, track, gate and serve real-time payment-fraud models.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
PROJECT = Path(__file__).resolve().parents[2]
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


def data_path(settings: Settings, data: Path | None) -> Path:
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


EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="local (pandas, this process) or spark (the feature pass on FRAUD_SPARK_MASTER) "
        "(default: FRAUD_ENGINE).",
    ),
]


def with_engine(settings: Settings, engine: str | None) -> Settings:
    if engine is None:
        return settings
    if engine not in ("local", "spark"):
        console.print(f"[red]error:[/red] --engine: {engine!r} is not local or spark")
        raise typer.Exit(2)
    return settings.model_copy(update={"engine": engine})


def with_source(settings: Settings, source: str | None) -> Settings:
    if source is None:
        return settings
    if source not in ("files", "db"):
        console.print(f"[red]error:[/red] --source: {source!r} is not files or db")
        raise typer.Exit(2)
    return settings.model_copy(update={"training_source": source})


def load_training_data(
    settings: Settings, path: Path, as_of: datetime | None = None, keep_days: int | None = None
):
    """The training data the settings' source and engine give, with progress and a one-line
    summary (``keep_days``: the days a Spark pass brings back, see ``pipeline.load_data``)."""
    from training import data as data_mod
    from training import pipeline
    from training.core import decision_source, features

    try:
        if settings.training_source == "db":
            when = decision_source.as_utc(as_of) if as_of else None
            with step("reading the decision log, recomputing features"):
                loaded = pipeline.load_data(settings, path, when)
        elif settings.engine == "spark":
            with step(f"the feature pass on Spark ({settings.spark_master})"):
                loaded = pipeline.load_data(settings, path, keep_days=keep_days)
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
