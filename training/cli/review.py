"""``fraudops review``: the analysts' review queue in the browser (serving/review)."""

from __future__ import annotations

from typing import Annotated

import typer

from training.cli.app import app, console
from training.core.config import get_settings


@app.command("review")
def review(
    host: Annotated[str | None, typer.Option(help="Address (default FRAUD_REVIEW_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default FRAUD_REVIEW_PORT).")] = None,
) -> None:
    """Serve the review queue: analysts sign in with a key of scopes label and read
    (`fraudops keys create --name alice --scopes label,read`) and work the day's queue.

    Example: `fraudops review` (then open http://127.0.0.1:8082)
    """
    import uvicorn

    settings = get_settings()
    host, port = host or settings.review_host, port or settings.review_port
    if settings.auth != "keys":
        console.print("[red]error:[/red] FRAUD_AUTH=off: verdicts would carry no analyst's name; "
                      "the review queue needs the API's keys (FRAUD_AUTH=keys)")  # fmt: skip
        raise typer.Exit(2)
    console.print(f"review queue on http://{host}:{port} (API {settings.api_url}, store "
                  f"{settings.decision_db_url.split('@')[-1]})", markup=False)  # fmt: skip
    # By name: the offline package never imports the online one (tests/test_layout.py).
    uvicorn.run("serving.review.app:from_env", factory=True, host=host, port=port,
                log_level="info")  # fmt: skip
