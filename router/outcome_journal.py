"""The outcome log's write-ahead journal (router/outcome_log.py): the rows a process accepted and
has not committed yet, as lines in files of its own, for the next start to write."""
from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger(__name__)


def _sequenced(line: bytes) -> tuple[int, bytes]:
    """(append number, row) of a journal line; a line cut before its number sorts first."""
    seq, _, row = line.partition(b"\t")
    return (int(seq), row) if seq.isdigit() else (-1, line)


class OutcomeJournal:
    """Write-ahead journal of the rows an `OutcomeLog` accepted: each is appended as one line, its
    append number and its JSON (one `os.write` on an O_APPEND descriptor), before it is queued, so a process killed before the row's
    batch commits (an OOM kill) leaves it for the next open to write. No fsync: the page cache outlives
    a killed process, not a crashed machine. A process journals into a slot of its own, the files
    `<base>.<n>.0.jsonl` and `.1.jsonl` of the first `n` whose file 0 it can `flock`: replicas sharing a
    folder never share a slot, and a lock dies with its process, so a restart reads back and takes the
    slot its killed predecessor left. The writer thread empties a file once every row appended to it is
    committed, switching between the two (`drain`): a queue never empty still keeps a few batches only."""

    def __init__(self, base: Path, replay: Callable[[list[bytes]], None]):
        """Hand what every slot no live process holds to `replay`, in the order it was appended (a
        row both committed and journaled replaces itself), empty those slots and keep the first."""
        base.parent.mkdir(parents=True, exist_ok=True)
        found = (re.fullmatch(r"\.(\d+)\.[01]\.jsonl", p.name[len(base.name):]) for p in base.parent.glob(base.name + ".*"))
        last = max((int(m.group(1)) for m in found if m), default=-1)
        held: list[list[int]] = []  # this process's own slot first
        n = 0
        while not held or n <= last:
            fds = [os.open(f"{base}.{n}.{i}.jsonl", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600) for i in (0, 1)]
            n += 1
            try:
                fcntl.flock(fds[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(fds)
            except BlockingIOError:  # a live process journals there
                for fd in fds:
                    os.close(fd)
        self._replay(held, replay)
        for fd in (fd for fds in held[1:] for fd in fds):
            os.close(fd)
        self._fds = held[0]
        self._lock = threading.Lock()
        self._current = 0
        self._pending = [0, 0]  # rows appended to each file and not yet committed
        self._empty = [True, True]  # known empty: truncated, nothing appended since
        self.failed = 0
        self._seq = 0  # the order of appends, which replay restores

    @staticmethod
    def _replay(held: list[list[int]], replay: Callable[[list[bytes]], None]) -> None:
        lines: list[bytes] = []
        for fds in held:
            # In the order appended: `drain` takes turns between the two files, so either may hold
            # the older lines, and a later line for a request id must be written last to stay.
            found = sorted(_sequenced(line) for fd in fds for line in os.pread(fd, os.fstat(fd).st_size, 0).splitlines())
            lines.extend(line for _, line in found)
        replay(lines)
        for fd in (fd for fds in held for fd in fds):
            os.ftruncate(fd, 0)

    def append(self, line: bytes) -> int:
        """Journal one row; returns the file it went to, for `done` once the row is committed."""
        with self._lock:  # counted before written: `drain` does not empty the file under it
            side = self._current
            self._pending[side] += 1
            self._empty[side] = False
            self._seq += 1
            seq = self._seq
        try:
            os.write(self._fds[side], b"%d\t" % seq + line)  # outside the lock: the writer thread never waits on it
        except OSError as exc:  # a full disk: the row is still queued, only not journaled
            self.failed += 1
            if self.failed == 1 or self.failed % 1000 == 0:
                log.error("outcome log journal: %d rows not journaled so far: %s", self.failed, exc)
        return side

    def done(self, sides: Sequence[int]) -> None:
        """Rows journaled in `sides` are committed (or dropped)."""
        with self._lock:
            for side in sides:
                self._pending[side] -= 1

    def drain(self) -> None:
        """Switch to the other file once it is empty; empty the file left once every row appended
        there is committed; until neither changes (with nothing pending both end empty). Only the
        writer thread calls it, so a file it empties cannot become current meanwhile."""
        while True:
            with self._lock:
                if self._empty[1 - self._current]:
                    self._current = 1 - self._current
                left = 1 - self._current
                if self._empty[left] or self._pending[left]:
                    return
            # Outside the lock: appends go to the current file, and every row appended to `left` is
            # committed, so each of those appends finished (a row is queued after its append).
            try:
                os.ftruncate(self._fds[left], 0)
            except OSError as exc:  # a disk gone read-only: the writer thread goes on, the lines stay
                log.error("outcome log journal: cannot empty a file of committed rows: %s", exc)
                return
            self._empty[left] = True

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
