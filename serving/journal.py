"""The per-worker decision journal: append-only segments on local disk, made durable by group
commit before an answer leaves.

Layout: ``<root>/<worker>/<segment>.jsonl`` plus ``<segment>.shipped`` (the byte offset
stored, written by :mod:`serving.shipper`). A worker holds an exclusive ``flock`` on its folder
while it lives and only appends and fsyncs; the shipper, a process of its own, delivers every
folder: a live worker's up to its last whole line, a dead one's (its lock is free) to the end,
then removes it. A line is one JSON object:
``"k": "d"`` a decision (the decision store's row, :data:`training.core.decision_store.
JOURNAL_FIELDS`), ``"k": "l"`` a label event; times are epoch milliseconds."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger("bentoml.fraud_service.decision_log")

SEGMENT_BYTES = 32 << 20  # a new segment past this size; shipped segments are deleted


def worker_name() -> str:
    """Unique per process and start: host, pid and start time (ms)."""
    return f"{socket.gethostname()[:24]}-{os.getpid()}-{int(time.time() * 1000)}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """This worker's journal. :meth:`write` appends lines (page cache, microseconds);
    :meth:`durable` waits for the fsync that covers them. One thread fsyncs whatever was
    written since its last fsync (group commit): the event loop never waits on the disk, and
    an answer waits for one fsync at most after its batch was written."""

    def __init__(self, root: Path, worker: str, segment_bytes: int = SEGMENT_BYTES) -> None:
        # Locked before it has its name: a shipper never sees this folder unlocked, so never
        # takes a starting worker for a dead one (hidden names are not journals).
        self.dir = root / worker
        nascent = root / f".{worker}"
        nascent.mkdir(parents=True)
        self.lock_fd = os.open(nascent / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live
        os.rename(nascent, self.dir)
        _fsync_dir(root)
        self.worker, self.segment_bytes = worker, segment_bytes
        self.seq = 0
        self.cond = threading.Condition()
        self.written = 0  # bytes written in total (all segments)
        self.synced = 0  # bytes known durable
        self.waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.unsynced: list[int] = []  # fds written since their last fsync (old ones to close)
        self.closing: list[int] = []
        self.stopped = False
        self.error: OSError | None = None
        self.fd, self.segment, self.segment_size = -1, self.dir / "x", 0
        self._open_segment()
        self.thread = threading.Thread(target=self._sync_loop, name="journal-fsync", daemon=True)
        self.thread.start()

    def _open_segment(self) -> None:
        self.seq += 1
        self.segment = self.dir / f"{self.seq:08d}.jsonl"
        old = self.fd
        self.fd = os.open(self.segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.segment_size = 0
        _fsync_dir(self.dir)
        if old >= 0:
            with self.cond:
                self.closing.append(old)

    def write(self, lines: list[bytes]) -> int:
        """Append ``lines`` (each ends with a newline); the position :meth:`durable` waits for."""
        data = b"".join(lines)
        with self.cond:  # the event loop and /feedback's threads write; never held over fsync
            if self.error is not None:
                raise self.error
            if self.segment_size and self.segment_size + len(data) > self.segment_bytes:
                self._open_segment()
            os.write(self.fd, data)  # O_APPEND: one write, one place
            self.segment_size += len(data)
            self.written += len(data)
            if self.fd not in self.unsynced:
                self.unsynced.append(self.fd)
            self.cond.notify()
            return self.written

    async def durable(self, position: int) -> None:
        """Return once everything up to ``position`` is fsync'd (OSError if it cannot be)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self.cond:
            if self.error is not None:
                raise self.error
            if self.synced >= position:
                return
            self.waiters.append((position, loop, fut))
            self.cond.notify()
        await fut

    def write_durably(self, lines: list[bytes]) -> None:
        """Append and wait for the fsync, from a thread (not the event loop)."""
        position = self.write(lines)
        with self.cond:
            self.cond.notify()
            while self.synced < position and self.error is None:
                self.cond.wait(1.0)
            if self.error is not None:
                raise self.error

    def _sync_loop(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and not self.unsynced and not self.closing:
                    self.cond.wait()
                if self.stopped and not self.unsynced and not self.closing:
                    return
                fds, self.unsynced = self.unsynced, []
                closing, self.closing = self.closing, []
                target = self.written
            try:
                for fd in fds:
                    os.fsync(fd)
                for fd in closing:
                    if fd not in fds:
                        os.fsync(fd)
                    os.close(fd)
                error = None
            except OSError as exc:  # a full or failing disk: no answer may say "durable"
                error = exc
                log.error("decision journal fsync failed: %s", exc)
            with self.cond:
                if error is not None:
                    self.error = error
                else:
                    self.synced = max(self.synced, target)
                ready = [w for w in self.waiters if w[0] <= self.synced or error is not None]
                self.waiters = [w for w in self.waiters if w not in ready]
                self.cond.notify_all()
            for _, loop, fut in ready:
                loop.call_soon_threadsafe(_resolve, fut, error)

    def close(self) -> None:
        with self.cond:
            self.stopped = True
            self.closing.append(self.fd)
            self.cond.notify_all()
        self.thread.join(10)
        fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        os.close(self.lock_fd)


def _resolve(fut: asyncio.Future[None], error: OSError | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
