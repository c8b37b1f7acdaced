"""Atomic output files: a failed or interrupted run never leaves a half-written file behind.

Each file is written to a temporary name in the destination folder and renamed into place, so an
existing file is either replaced whole or left untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .errors import WsdmError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WsdmError(f"{path}: cannot create the output folder ({exc.strerror})") from exc
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty hidden folder next to ``path``; it becomes ``path`` only if the block succeeds.

    A model folder is many files (shards, config, tokenizer): written in place, an interrupted save
    would leave a folder that looks complete to a loader. An existing ``path`` is replaced whole,
    after the new folder is finished; the caller decides beforehand whether that is allowed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WsdmError(f"{path}: cannot create the output folder ({exc.strerror})") from exc
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a model folder should look like any other
    try:
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(new: Path, dest: Path) -> None:
    """Rename the finished folder ``new`` to ``dest``; an old ``dest`` is moved aside, then deleted.

    If the final rename fails, the old ``dest`` is put back, so ``dest`` is always either the old
    folder or the new one, never missing or half of each.
    """
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.rmdir(old)
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as parquet or csv, chosen by the file extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    if suffix == ".csv":
        return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    raise WsdmError(f"{path}: unsupported output type {suffix or '(none)'}; use .parquet or .csv")


def check_writable(*paths: str | Path | None) -> None:
    """Fail before hours of scoring, not after, when an output cannot be written."""
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise WsdmError(f"{path}: is a folder, expected a file path")
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK):
            raise WsdmError(f"{path}: folder {parent} is not writable")
