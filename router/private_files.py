"""SQLite files that hold secrets or prompts (the outcome log with key hashes, the pepper and spend;
the answer cache with every tenant's prompts and answers), created readable by their owner only,
as the outcome journal's files are. What exists already keeps its mode: an operator's choice.
"""
from __future__ import annotations

import os
from pathlib import Path


def private_folder(folder: str | Path) -> None:
    """`folder` and its missing parents, each made 0700 (`Path.mkdir(parents=True,
    exist_ok=True)` makes them 0755 under the usual umask)."""
    folder = Path(folder)
    if folder.is_dir():
        return
    if folder.parent != folder:
        private_folder(folder.parent)
    try:
        folder.mkdir(0o700)
    except FileExistsError:
        if not folder.is_dir():
            raise


def private_file(path: str | Path) -> None:
    """An empty `path` made 0600 unless it exists. SQLite opens an empty file as an empty
    database, and makes its -wal and -shm files with the database file's mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:  # there already, or not creatable: SQLite opens it, or says why not, as it did
        pass
