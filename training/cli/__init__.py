"""The ``fraudops`` command: the app and its UI helpers (:mod:`.app`), then a module per command
group, each registering its commands on the app: demo, lifecycle, delivery, decisions, keys,
rules (and lists), review, serve."""

from training.cli import decisions, delivery, demo, keys, lifecycle, review, rules, serve
from training.cli.app import app

__all__ = ["app", "decisions", "delivery", "demo", "keys", "lifecycle", "review", "rules", "serve"]
