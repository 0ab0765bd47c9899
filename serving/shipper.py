"""The shipper: delivers the decision journals (:mod:`serving.journal`) into the decision store
(:mod:`training.core.decision_store`), idempotently, as a process of its own beside the
workers (``python -m serving.shipper``, which `fraudops serve` starts and Compose and
Kubernetes run as a service or sidecar on the journal volume): the workers only append and
fsync. A live worker's journal is delivered up to its last whole line, a dead worker's to the
end, then removed. The store can be down for as long as the disk holds the backlog."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("bentoml.fraud_service.decision_log")
SHIP_ROWS = 5_000  # rows per database transaction
CHUNK_BYTES = 8 << 20  # journal bytes read at once
HEARTBEAT = ".delivered"  # touched under the root after every pass that reached the store
EVERY_S = 0.5  # between passes
MAX_PAUSE_S = 5.0  # between attempts while the store is down


def rows_of(lines: list[bytes]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Journal lines as decision rows and label-event rows for the store: a batch line
    (``"k": "b"``, by column) gives a row per decision, a decision line (``"d"``, written
    before batch lines) one."""
    from training.core import decision_store

    decisions: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for line in lines:
        item = orjson.loads(line)
        kind = item.pop("k")
        if kind == "b":
            decisions += map(decision_store.decision_row, _batch_rows(item))
        elif kind == "d":
            decisions.append(decision_store.decision_row(item))
        elif kind == "l":
            labels.append(decision_store.label_row(item))
    return decisions, labels


def _batch_rows(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A batch line's decisions, one dict each."""
    same, cols, features = item["same"], item["cols"], item["features"]
    names, fnames = list(cols), list(features or ())
    fvalues = list(zip(*features.values(), strict=True)) if features else None
    for i, values in enumerate(zip(*cols.values(), strict=True)):
        row = dict(same)
        row.update(zip(names, values, strict=True))
        row["features"] = dict(zip(fnames, fvalues[i], strict=True)) if fvalues else None
        yield row


def journal_folders(root: Path) -> list[Path]:
    """The workers' journal folders (hidden names are folders still being created)."""
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _offset(segment: Path) -> int:
    mark = segment.with_suffix(".shipped")
    return int(mark.read_text() or 0) if mark.exists() else 0


def backlog(root: Path) -> int:
    """Journal bytes under ``root`` not in the store yet: what the workers report, read from
    the disk, so a stopped shipper shows as a growing backlog."""
    total = 0
    for segment in root.glob("*/*.jsonl"):
        with contextlib.suppress(OSError, ValueError):
            total += max(0, segment.stat().st_size - _offset(segment))
    return total


def last_delivered(root: Path) -> float | None:
    """When a shipper last reached the store (epoch s; None: never)."""
    try:
        return (root / HEARTBEAT).stat().st_mtime
    except OSError:
        return None


@contextlib.contextmanager
def _flock(path: Path, wait_s: float) -> Iterator[bool]:
    """An exclusive lock on ``path`` (created), waiting up to ``wait_s``; yields whether it
    was taken."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # the folder was removed meanwhile
        yield False
        return
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.02)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _alive(folder: Path) -> bool:
    """Whether the folder's worker lives (it holds the folder's lock while it does)."""
    with _flock(folder / ".lock", 0) as taken:
        return not taken


@dataclass
class ShipResult:
    decisions: int = 0  # newly stored
    labels: int = 0
    lines: int = 0  # read from journals (stored or already there)
    backlog_bytes: int = 0  # journal bytes not stored yet, after this pass


class Shipper:
    """Delivers the journals under ``root`` to the store at ``url``. Idempotent end to end:
    the offset is saved only after the rows are committed, and the store skips rows it has, so
    a crash between the two stores nothing twice. Shippers of one root (the process, a worker
    looking up a decision it just answered) take turns per folder."""

    def __init__(self, root: Path, url: str, migrate: bool = False) -> None:
        from training.core import decision_store

        self.root, self.url = root, url
        self.migrate = migrate  # bring the store's tables up to date before the first delivery
        self.engine = decision_store.engine_for(url, bulk=True)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def ship_once(self, wait_s: float = 0.0) -> ShipResult:
        """One pass over every journal; raises when the store is unreachable (the journals
        stay as they are: the backlog). A folder another shipper is delivering is skipped,
        or waited for up to ``wait_s``."""
        from serving import telemetry as tm
        from training.core import decision_store, partitions

        result = ShipResult()
        if self.migrate:
            decision_store.upgrade(self.url)
            self.migrate = False
        partitions.ensure_ahead(self.engine)  # PostgreSQL: once a day, then known
        for folder in journal_folders(self.root):
            with _flock(folder / ".ship", wait_s) as ours:
                if ours and folder.exists():
                    self._ship_folder(folder, result)
        with contextlib.suppress(OSError):
            (self.root / HEARTBEAT).touch()
        if result.decisions:
            tm.LOG_STORED.labels("decision").inc(result.decisions)
        if result.labels:
            tm.LOG_STORED.labels("label").inc(result.labels)
        return result

    def _ship_folder(self, folder: Path, result: ShipResult) -> None:
        alive = _alive(folder)
        segments = sorted(folder.glob("*.jsonl"))
        for segment in segments:
            # a live worker appends to its newest segment only: never removed under it
            current = alive and segment == segments[-1]
            offset = self._deliver(segment, result)
            size = segment.stat().st_size
            if not current and (offset >= size or not alive):
                # all stored (or, for a dead worker, all but a torn, never-answered tail)
                segment.unlink()
                segment.with_suffix(".shipped").unlink(missing_ok=True)
            else:
                result.backlog_bytes += max(0, size - offset)
        if not alive and not any(folder.glob("*.jsonl")):
            for leftover in folder.iterdir():
                leftover.unlink()
            folder.rmdir()
            log.info("decision journal of %s delivered and removed", folder.name)

    def _deliver(self, segment: Path, result: ShipResult) -> int:
        """Store the whole lines of ``segment`` past its mark; the new offset."""
        from training.core import decision_store

        mark = segment.with_suffix(".shipped")
        offset, size = _offset(segment), segment.stat().st_size
        while offset < size:
            with segment.open("rb") as f:
                f.seek(offset)
                chunk = f.read(min(size - offset, CHUNK_BYTES))
            end = chunk.rfind(b"\n") + 1
            if end == 0:  # a line still being written, or a torn one never answered
                break
            lines = chunk[:end].splitlines()
            d_rows, l_rows, taken = [], [], 0
            for i, line in enumerate(lines):  # SHIP_ROWS rows (not lines) a transaction
                d, lab = rows_of([line])
                d_rows += d
                l_rows += lab
                taken += 1
                if len(d_rows) + len(l_rows) >= SHIP_ROWS or i == len(lines) - 1:
                    with self.engine.begin() as conn:
                        stored = decision_store.write(conn, d_rows, l_rows)
                    result.decisions += stored[0]
                    result.labels += stored[1]
                    result.lines += taken
                    d_rows, l_rows, taken = [], [], 0
            offset += end
            tmp = mark.with_suffix(".tmp")
            tmp.write_text(str(offset))
            os.replace(tmp, mark)
        return offset

    def run(self, every_s: float = EVERY_S) -> None:
        """Pass after pass until :attr:`stop` is set; while the store is down, back off up to
        MAX_PAUSE_S (the backlog waits on disk)."""
        pause = every_s
        while not self.stop.wait(pause):
            try:
                self.ship_once()
                pause = every_s
            except Exception as exc:  # the store is down: keep the backlog, try again
                pause = min(MAX_PAUSE_S, pause * 2)
                log.warning(
                    "decision store unreachable (%s); backlog %d bytes", exc, backlog(self.root)
                )

    def start(self, every_s: float = EVERY_S) -> None:
        """:meth:`run` in a daemon thread (FRAUD_SHIP_IN_WORKERS: inside a worker)."""
        self.thread = threading.Thread(target=self.run, args=(every_s,), name="journal-shipper")
        self.thread.daemon = True
        self.thread.start()

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        self.stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(30)
        self.engine.dispose()


def main() -> None:
    """The shipper process: delivers until SIGTERM or SIGINT, then makes a last pass."""
    from training.core.config import get_settings

    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s shipper %(levelname)s %(message)s")
    if settings.shipper_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.shipper_metrics_port, settings.host)
    shipper = Shipper(settings.journal_dir, settings.decision_db_url, migrate=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: shipper.stop.set())
    log.info("shipping %s to %s", settings.journal_dir, redacted(settings.decision_db_url))
    shipper.run()
    try:
        done = shipper.ship_once(wait_s=10)
        log.info("stopped; %d bytes left for the next shipper", done.backlog_bytes)
    except Exception as exc:
        log.warning("stopped with the store unreachable (%s); the journals keep it", exc)
    shipper.engine.dispose()


def redacted(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL: show nothing of it
        return "(unparsable URL)"


if __name__ == "__main__":
    main()
