"""Demo commands: synthetic data (simulate, at any scale) and traffic (replay)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from training.cli.app import app, console, step
from training.core.config import get_settings

if TYPE_CHECKING:
    from training.demo.simulate import SimulationConfig


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
    scale: int = typer.Option(
        1,
        min=1,
        help="N times the customers and terminals by the same process (a grid N times larger, "
        "N times the compromises a day); written a day at a time.",
    ),
) -> None:
    """Simulate transactions (handbook process) into one parquet file per day.

    Examples: `fraudops simulate --customers 5000 --terminals 10000 --days 183 --out data/full`;
    ten times the handbook's volume: `fraudops simulate --scale 10 --out data/x10`
    """
    from training.demo.simulate import SimulationConfig, scaled

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
    simulate_into(scaled(cfg, scale), out or get_settings().data_dir)


def simulate_into(cfg: SimulationConfig, out: Path) -> None:
    """Simulate and write per-day parquet files under ``out/transactions``, a day at a time
    (memory: one day, whatever the size)."""
    from training.demo.simulate import save_config, simulate_days, write_per_day

    target = out / "transactions"
    for old in target.glob("*.parquet"):
        old.unlink()
    t0 = time.perf_counter()
    n = frauds = files = 0
    with step(f"simulating into {target}") as say:
        for day in simulate_days(cfg, progress=say):
            files += len(write_per_day(day, target, replace=False))
            n, frauds = n + len(day), frauds + int(day["TX_FRAUD"].sum())
            say(f"day {files}/{cfg.n_days}, {n:,} transactions written")
    save_config(cfg, out)
    console.print(
        f"{n:,} transactions, {frauds:,} frauds ({frauds / max(n, 1):.3%}) in {files} files, "
        f"{time.perf_counter() - t0:.1f}s"
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
    label_delay_days: int | None = typer.Option(
        None, min=0, help="Days before a day's frauds are sent (default FRAUD_LABEL_DELAY_DAYS)."
    ),
    queue_same_day: bool = typer.Option(
        False,
        help="Analysts work the review queue the same day: its top review answers, up to "
        "FRAUD_REVIEW_BUDGET_PER_DAY, get their true label at the day's end.",
    ),
) -> None:
    """Stream the simulated days after the dataset through a running service, as live traffic
    (and, with --labels, the chargebacks after the label delay): what the decision log and
    `fraudops train --source db` learn from.

    Example: `fraudops replay --days 14 --labels` (then `fraudops train --source db`)
    """
    from training.demo import replay as replay_mod

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
            delay = settings.label_delay_days if label_delay_days is None else label_delay_days
            budget = settings.review_budget_per_day if queue_same_day else None
            done = replay_mod.replay(
                target, frame, key, batch, labels, delay, progress=say, queue_budget=budget
            )
    except replay_mod.ReplayError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    retried = ", ".join(f"{n} x {s or 'connection'}" for s, n in done.retries.items()) or "none"
    console.print(
        f"{done.days[0]}..{done.days[-1]}: {done.answered:,} answered ({done.flagged:,} flagged, "
        f"{done.degraded:,} degraded), {done.labels_sent:,} fraud labels sent, "
        f"{done.verdicts_sent:,} queue verdicts, retries: "
        f"{retried}; {done.seconds:.1f}s ({done.answered / max(done.seconds, 1e-9):,.0f} tx/s)"
    )
