"""``fraudops decisions``: what the service decided, with which model, and the labels."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from training.cli.app import app, console
from training.core.config import get_settings

if TYPE_CHECKING:
    import sqlalchemy as sa


decisions_app = typer.Typer(
    help="The decision log: what the service decided, with which model, and the labels.",
    no_args_is_help=True,
)
app.add_typer(decisions_app, name="decisions")
StoreOpt = Annotated[
    str | None, typer.Option("--db", help="Decision store URL (default: FRAUD_DECISION_DB_URL).")
]


def _store(url: str | None) -> sa.Engine:
    from training.core import decision_store

    return decision_store.engine_for(url or get_settings().decision_db_url)


@decisions_app.command("show")
def decisions_show(transaction_id: str, db: StoreOpt = None) -> None:
    """A transaction's decision (model, score, threshold, features) and its label history.

    Example: `fraudops decisions show tx-000123`
    """
    from training.core import decision_store

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
    from training.core import decision_store
    from training.core.decision_source import as_utc

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


@decisions_app.command("export-lake")
def decisions_export_lake(
    lake_url: Annotated[
        str | None, typer.Option("--lake", help="The lake (default: FRAUD_LAKE_URL).")
    ] = None,
    rewrite: bool = typer.Option(False, help="Write every closed day again."),
    db: StoreOpt = None,
) -> None:
    """Every closed day of the decision log not in the Parquet lake yet, one file a day and
    table (what the Spark engine reads). The retraining DAG's decision_lake task runs it daily.

    Example: `fraudops decisions export-lake --lake s3://fraud-lake/prod`
    """
    from training import lake

    settings = get_settings()
    update = {k: v for k, v in (("decision_db_url", db), ("lake_url", lake_url)) if v}
    try:
        done = lake.export(settings.model_copy(update=update), rewrite=rewrite)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    for table, days in done.days.items():
        span = f"{days[0]}..{days[-1]}" if days else "nothing new"
        console.print(f"{table}: {len(days)} days, {done.rows[table]:,} rows ({span})")


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
