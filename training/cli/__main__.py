"""``python -m training.cli``."""

from training.cli import app

app()
