"""The shipper: delivers decision journals (:mod:`serving.journal`) into the decision store
(:mod:`training.core.decision_store`), idempotently: this worker's own and those of workers
that died. The store can be down for as long as the disk holds the backlog."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from serving import telemetry as tm
from serving.journal import Journal

log = logging.getLogger("bentoml.fraud_service.decision_log")
SHIP_ROWS = 5_000  # rows per database transaction


def rows_of(lines: list[bytes]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Journal lines as decision rows and label-event rows for the store."""
    from training.core import decision_store

    decisions: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for line in lines:
        item = orjson.loads(line)
        kind = item.pop("k")
        if kind == "d":
            decisions.append(decision_store.decision_row(item))
        elif kind == "l":
            labels.append(decision_store.label_row(item))
    return decisions, labels


@dataclass
class ShipResult:
    decisions: int = 0  # newly stored
    labels: int = 0
    lines: int = 0  # read from journals (stored or already there)
    backlog_bytes: int = 0  # journal bytes not stored yet, after this pass


class Shipper:
    """Delivers journals under ``root`` to the store at ``url``: this worker's own and those
    of workers that died. Idempotent end to end: the offset is saved only after the rows are
    committed, and the store skips rows it has, so a crash between the two stores nothing
    twice."""

    def __init__(
        self, root: Path, url: str, own: Journal | None = None, migrate: bool = False
    ) -> None:
        from training.core import decision_store

        self.root, self.url, self.own = root, url, own
        self.migrate = migrate  # bring the store's tables up to date before the first delivery
        self.engine = decision_store.engine_for(url)
        self.last_ok = time.time()
        self.backlog_bytes = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.passes = threading.Lock()  # one pass at a time (the thread, a replay, close)

    def folders(self) -> list[tuple[Path, int | None]]:
        """(folder, lock fd we took) for our journal and those whose worker is gone."""
        out: list[tuple[Path, int | None]] = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if self.own is not None and folder == self.own.dir:
                out.append((folder, None))
                continue
            try:
                fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live worker: it ships its own
                os.close(fd)
                continue
            out.append((folder, fd))
        return out

    def ship_once(self) -> ShipResult:
        """One pass over every journal it may ship; raises when the store is unreachable
        (the journal stays as it is: the backlog)."""
        with self.passes:
            return self._ship_once()

    def _ship_once(self) -> ShipResult:
        from training.core import decision_store

        result = ShipResult()
        if self.migrate:
            decision_store.upgrade(self.url)
            self.migrate = False
        if not self.root.exists():
            return result
        for folder, lock_fd in self.folders():
            try:
                self._ship_folder(folder, orphan=lock_fd is not None, result=result)
            finally:
                if lock_fd is not None:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
                    os.close(lock_fd)
        self.last_ok = time.time()
        self.backlog_bytes = result.backlog_bytes
        if result.decisions:
            tm.LOG_STORED.labels("decision").inc(result.decisions)
        if result.labels:
            tm.LOG_STORED.labels("label").inc(result.labels)
        return result

    def _ship_folder(self, folder: Path, orphan: bool, result: ShipResult) -> None:
        from training.core import decision_store

        segments = sorted(folder.glob("*.jsonl"))
        current = self.own.segment if self.own is not None and not orphan else None
        for segment in segments:
            mark = segment.with_suffix(".shipped")
            offset = int(mark.read_text() or 0) if mark.exists() else 0
            size = segment.stat().st_size
            while offset < size:
                with segment.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read(min(size - offset, 8 << 20))
                end = chunk.rfind(b"\n") + 1
                if end == 0:  # a torn last line: never answered (written before its fsync)
                    break
                lines = chunk[:end].splitlines()
                for start in range(0, len(lines), SHIP_ROWS):
                    part = lines[start : start + SHIP_ROWS]
                    d_rows, l_rows = rows_of(part)
                    with self.engine.begin() as conn:
                        d, lab = decision_store.write(conn, d_rows, l_rows)
                    result.decisions += d
                    result.labels += lab
                    result.lines += len(part)
                offset += end
                tmp = mark.with_suffix(".tmp")
                tmp.write_text(str(offset))
                os.replace(tmp, mark)
            if segment != current and (offset >= size or orphan):
                # all stored (or, for a dead worker, all but a torn, never-answered tail)
                segment.unlink()
                mark.unlink(missing_ok=True)
            else:
                result.backlog_bytes += max(0, size - offset)
        if orphan and not any(folder.glob("*.jsonl")):
            for leftover in folder.iterdir():
                leftover.unlink()
            folder.rmdir()
            log.info("decision journal of %s delivered and removed", folder.name)

    def start(self, every_s: float = 0.5) -> None:
        def run() -> None:
            pause = every_s
            while not self.stop.wait(pause):
                try:
                    self.ship_once()
                    pause = every_s
                except Exception as exc:  # the store is down: keep the backlog, try again
                    self.backlog_bytes = self._backlog()
                    pause = min(5.0, pause * 2)
                    log.warning(
                        "decision store unreachable (%s); backlog %d bytes", exc, self.backlog_bytes
                    )

        self.thread = threading.Thread(target=run, name="journal-shipper", daemon=True)
        self.thread.start()

    def _backlog(self) -> int:
        total = 0
        for segment in self.root.glob("*/*.jsonl"):
            mark = segment.with_suffix(".shipped")
            try:
                offset = int(mark.read_text() or 0) if mark.exists() else 0
                total += max(0, segment.stat().st_size - offset)
            except (OSError, ValueError):
                continue
        return total

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        self.stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(30)
        self.engine.dispose()
