"""``fraudops keys``: the service's scoped API keys (hashes in FRAUD_API_KEYS_FILE)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from training.cli.app import SAMPLE_BODY, app, console
from training.core.config import Settings, get_settings

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
    from training.core import api_keys

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
    from training.core import api_keys

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
    from training.core import api_keys

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
    from training.core import api_keys

    path = file or get_settings().api_keys_file
    keys = api_keys.load(path)
    if not keys.active():
        console.print(f"[red]no active key in {path}: `fraudops keys create` first")
        raise typer.Exit(1)
    print(f"FRAUD_API_KEYS_JSON='{keys.model_dump_json(exclude_none=True)}'")


def local_key(settings: Settings, host: str, port: str) -> None:
    """FRAUD_AUTH=keys with no key file: create the local key; print a curl line with it."""
    from training.core import api_keys

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
