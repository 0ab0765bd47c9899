"""Delivery commands: the champion into the Bento store and into a container image."""

from __future__ import annotations

import typer

from training.cli.app import DEMO, PROJECT, DataOpt, app, console, step
from training.cli.lifecycle import ensure_champion
from training.core.config import get_settings


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

    from training import registry
    from training.delivery import bento_store

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
    from training import registry
    from training.delivery import bento_store, release

    settings = get_settings()
    if not release.docker_reachable():
        console.print("[red]no Docker engine answers (DOCKER_HOST / /var/run/docker.sock)[/red]")
        raise typer.Exit(2)
    ensure_champion(data, grid, **DEMO)
    ensure_imported()
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


def ensure_imported() -> None:
    """Import the champion into the Bento store unless it is there already."""
    from training.delivery import bento_store

    if not bento_store.champion_in_store(get_settings()):
        import_bento(alias="champion")
    else:
        console.print("champion already in the Bento store")
