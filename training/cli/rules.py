"""``fraudops rules`` and ``fraudops lists``: the decision rules beside the model, tried on the
decision log before they are applied, and the managed block and allow lists they read."""

from __future__ import annotations

import getpass
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from training.cli.app import app, console
from training.cli.decisions import StoreOpt, _store
from training.core import rules
from training.core.config import get_settings

rules_app = typer.Typer(
    help="Decision rules beside the model: check, backtest, apply, show.", no_args_is_help=True
)
lists_app = typer.Typer(
    help="The managed lists the rules read (blocked_terminals, allowed_customers, ...).",
    no_args_is_help=True,
)
app.add_typer(rules_app, name="rules")
app.add_typer(lists_app, name="lists")
ByOpt = Annotated[
    str | None, typer.Option("--by", help="Who makes the change (default: this user).")
]


def _read(file: Path) -> rules.RuleSet:
    try:
        return rules.parse(file.read_text(), str(file))
    except (OSError, rules.RuleSetError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


@rules_app.command("check")
def rules_check(file: Path) -> None:
    """Validate a rule set file (YAML or JSON): the line and field of the first problem.

    Example: `fraudops rules check rules.yaml`
    """
    ruleset = _read(file)
    console.print(
        f"{file}: version {ruleset.version}, {len(ruleset.rules)} rules, in evaluation order: "
        + ", ".join(rules.names(ruleset))
    )


@rules_app.command("backtest")
def rules_backtest(
    file: Path,
    since: Annotated[datetime, typer.Option(help="First transaction time replayed (UTC).")],
    until: Annotated[datetime | None, typer.Option(help="End, exclusive (UTC).")] = None,
    db: StoreOpt = None,
) -> None:
    """Replay the logged decisions through a candidate rule set and the live one: hits and
    precision per rule, alerts a day against the review budget, recall, what moves.

    Example: `fraudops rules backtest rules.yaml --since 2018-08-01`
    """
    from training.core import backtest, decision_store, rule_store
    from training.core.decision_source import as_utc

    candidate = _read(file)
    settings = get_settings()
    url = db or settings.decision_db_url
    engine = _store(db)
    try:
        decision_store.upgrade(url)
        with engine.connect() as conn:
            live = rule_store.active(conn) or rules.default()
            lists = rule_store.members(conn)
    finally:
        engine.dispose()
    try:
        result = backtest.backtest(
            url,
            candidate,
            live,
            as_utc(since),
            as_utc(until) if until else None,
            lists,
            settings.label_delay_days,
            settings.review_budget_per_day,
        )
    except (ValueError, rules.RuleSetError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    table = Table("rule", "action", "hits", "frauds", "precision",
                  title=f"{candidate.version}: {result.since}..{result.until}, "
                  f"{result.transactions:,} decisions, {result.frauds:,} frauds")  # fmt: skip
    for hit in result.candidate.rules:
        precision = "-" if hit.precision is None else f"{hit.precision:.3f}"
        table.add_row(hit.name, hit.action, f"{hit.hits:,}", f"{hit.frauds:,}", precision)
    console.print(table)
    for label, outcome in (("candidate", result.candidate), ("live", result.live)):
        p = "-" if outcome.precision is None else f"{outcome.precision:.3f}"
        r = "-" if outcome.recall is None else f"{outcome.recall:.3f}"
        over = " (over the budget)" if outcome.alerts_per_day > result.budget else ""
        console.print(
            f"{label} {outcome.version}: {outcome.alerts_per_day:.1f} alerts a day against a "
            f"budget of {result.budget}{over}; precision {p}, recall {r}; {outcome.actions}"
        )
    console.print(f"moves from the live set: {result.changes or 'none'}")


@rules_app.command("apply")
def rules_apply(file: Path, by: ByOpt = None, db: StoreOpt = None) -> None:
    """Put a rule set in force (stored with its version; a version is written once).

    Example: `fraudops rules apply rules.yaml`
    """
    from training.core import decision_store, rule_store

    ruleset = _read(file)
    decision_store.upgrade(db or get_settings().decision_db_url)
    engine = _store(db)
    try:
        with engine.begin() as conn:
            changed = rule_store.apply(conn, ruleset, by or getpass.getuser())
    except rules.RuleSetError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()
    console.print(f"version {ruleset.version} " + ("in force" if changed else "already in force"))


@rules_app.command("show")
def rules_show(db: StoreOpt = None) -> None:
    """The rule set in force (the default one if none was applied) and the versions applied.

    Example: `fraudops rules show`
    """
    from training.core import decision_store, rule_store

    decision_store.upgrade(db or get_settings().decision_db_url)
    engine = _store(db)
    try:
        with engine.connect() as conn:
            live = rule_store.active(conn)
            history = rule_store.history(conn)
    finally:
        engine.dispose()
    console.print(rules.dump(live or rules.default()), end="")
    if live is None:
        console.print("(the default set: none applied yet)")
    for row in history:
        console.print(f"  {row['version']}: applied {row['applied_at']} by {row['applied_by']}")


@lists_app.command("add")
def lists_add(
    name: str,
    values: list[str],
    note: Annotated[str | None, typer.Option(help="Why (kept with the entries).")] = None,
    by: ByOpt = None,
    db: StoreOpt = None,
) -> None:
    """Add customers or terminals to a list.

    Example: `fraudops lists add blocked_terminals 3156 3157 --note "skimmer, case 41"`
    """
    from training.core import decision_store, rule_store

    decision_store.upgrade(db or get_settings().decision_db_url)
    engine = _store(db)
    try:
        with engine.begin() as conn:
            added = rule_store.add(conn, name, values, by or getpass.getuser(), note)
    finally:
        engine.dispose()
    console.print(f"{name}: {added} added, {len(values) - added} already there")


@lists_app.command("remove")
def lists_remove(name: str, values: list[str], db: StoreOpt = None) -> None:
    """Take customers or terminals off a list.

    Example: `fraudops lists remove blocked_terminals 3156`
    """
    from training.core import decision_store, rule_store

    decision_store.upgrade(db or get_settings().decision_db_url)
    engine = _store(db)
    try:
        with engine.begin() as conn:
            gone = rule_store.remove(conn, name, values)
    finally:
        engine.dispose()
    console.print(f"{name}: {gone} removed, {len(values) - gone} were not there")


@lists_app.command("show")
def lists_show(name: str, db: StoreOpt = None) -> None:
    """A list's entries, with who added them, when and why.

    Example: `fraudops lists show blocked_terminals`
    """
    from training.core import decision_store, rule_store

    decision_store.upgrade(db or get_settings().decision_db_url)
    engine = _store(db)
    try:
        with engine.connect() as conn:
            rows = rule_store.entries(conn, name)
    finally:
        engine.dispose()
    table = Table("value", "added", "by", "note", title=f"{name}: {len(rows)} entries")
    for row in rows:
        table.add_row(row["value"], str(row["added_at"]), str(row["added_by"]), row["note"] or "")
    console.print(table)
