"""Paths checked before a job's work, not after it: a job that trains or evaluates for minutes
must not end in a permission error on the path it was given, nor read an empty log it created
from a mistyped one."""
from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterator


def _writable_folder(folder: Path, flag: str, given: str | Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:
        raise ValueError(f"{flag} {given}: {folder} exists and is not a folder") from None
    except OSError as exc:
        raise ValueError(f"{flag} {given}: cannot write in {folder} ({exc.strerror or exc})") from None


def check_output_file(path: str | Path, flag: str) -> None:
    """`path` can be written as a file (its folder is made if missing)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path}: is a folder, not a file")
    _writable_folder(p.parent, flag, path)


def check_output_dir(path: str | Path, flag: str) -> None:
    """`path` can be used as an output folder (made if missing)."""
    _writable_folder(Path(path), flag, path)


@contextlib.contextmanager
def removed_if_left_empty(*paths: str | Path) -> Iterator[None]:
    """Folders among `paths` (and their parents) that do not exist yet are removed again, where
    still empty, when the job fails: the checks above make them to try writing there, and a
    failed run must not leave an empty report folder behind."""
    made = {folder for p in paths for folder in (Path(p).absolute(), *Path(p).absolute().parents) if not folder.exists()}
    try:
        yield
    except BaseException:
        for folder in sorted(made, key=lambda f: len(f.parts), reverse=True):  # children first
            with contextlib.suppress(OSError):  # not empty (the job wrote there), or gone
                folder.rmdir()
        raise


def check_outcome_log(db: str) -> None:
    """An SQLite outcome log (the gateway's `server.db`) exists and holds its table: opening a
    mistyped path would create an empty one, and opening another database would add the log's
    tables to it, and both would report "nothing logged". Read only: the check writes nothing."""
    if not db.startswith("sqlite:///"):
        return
    path = Path(db[len("sqlite:///"):])
    if not path.exists():
        raise FileNotFoundError(f"{db}: no outcome log there (the gateway's server.db)")
    if path.is_dir():
        return  # the store's own open names a folder
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as conn:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outcomes'").fetchone()
    except sqlite3.Error as exc:  # not a database, no permission
        raise ValueError(f"outcome log {db}: cannot open it as an SQLite database: {exc}") from None
    if found is None:
        raise FileNotFoundError(f"{db}: no outcome log there: the database holds no 'outcomes' table (the gateway's "
                                "server.db holds one)")


def non_negative_int(text: str) -> int:
    """An argparse type for a count or a seed: numpy's generators take no negative seed, and said
    so only once the job had started, without naming the flag."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: give 0 or more")
    return value
