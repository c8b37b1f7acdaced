"""Unpacking a downloaded model archive safely, with progress and a free-space check first.

A model archive comes from outside: no member may land outside the target folder (absolute names,
``..``, links that point out, devices), and a multi-gigabyte extraction checks the disk before it
starts rather than failing half-way.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .errors import WsdmError


def bytes_bar(total: int, desc: str, enabled: bool):
    """A byte-counting progress bar (KiB, MiB, ... as it grows); ``enabled`` False shows nothing."""
    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        dynamic_ncols=True,
    )


def require_space(folder: Path, needed: int, what: str) -> None:
    """Stop before writing ``needed`` bytes into ``folder`` when its disk has less free."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise WsdmError(f"{folder}: {what} needs {needed / 2**30:.1f} GiB, only {free / 2**30:.1f} GiB free")


def _member_target(name: str, into: Path, archive: Path) -> Path:
    """Where a member may go; raises if its name would escape ``into`` (absolute, drive, ``..``)."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise WsdmError(
            f"{archive}: member {name!r} would be written outside the target folder; refusing to extract"
        )
    target = (into / pure).resolve()
    if target != into.resolve() and not target.is_relative_to(into.resolve()):
        raise WsdmError(
            f"{archive}: member {name!r} would be written outside the target folder; refusing to extract"
        )
    return target


def _check_tar_member(member: tarfile.TarInfo, into: Path, archive: Path) -> None:
    _member_target(member.name, into, archive)
    if member.issym() or member.islnk():
        base = (into / PurePosixPath(member.name)).parent if member.issym() else into
        link = PurePosixPath(member.linkname.replace("\\", "/"))
        resolved = (base / link).resolve() if not link.is_absolute() else Path(link)
        if not resolved.is_relative_to(into.resolve()):
            raise WsdmError(
                f"{archive}: link {member.name!r} -> {member.linkname!r} points outside the target folder; "
                "refusing to extract"
            )
    elif not (member.isfile() or member.isdir()):
        raise WsdmError(f"{archive}: member {member.name!r} is a device or pipe; refusing to extract")


def extract_archive(archive: Path, into: Path, progress: bool = True) -> None:
    """Unpack a .zip/.tar(.gz) into ``into``, refusing any member that would land outside it."""
    into.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                for member in members:
                    _member_target(member.filename, into, archive)
                require_space(into, sum(m.file_size for m in members), f"extracting {archive.name}")
                with bytes_bar(sum(m.file_size for m in members), f"extract {archive.name}", progress) as bar:
                    for member in members:
                        zf.extract(member, into)
                        bar.update(member.file_size)
            return
        with (
            tarfile.open(archive, "r:*") as tf,
            bytes_bar(archive.stat().st_size, f"extract {archive.name}", progress) as bar,
        ):
            for member in tf:  # streamed: a .tar.gz is decompressed once
                _check_tar_member(member, into, archive)
                if hasattr(tarfile, "data_filter"):
                    tf.extract(member, into, filter="data")
                else:  # Python < 3.11.4: the checks above are the protection
                    tf.extract(member, into)
                bar.update(member.size)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise WsdmError(f"{archive}: unreadable or truncated archive ({exc})") from exc
