"""Input shards for a distributed job: a file, a folder or glob of Parquet files, local or on any
filesystem pyarrow opens (``s3://``, ``gs://``, ``hdfs://``, ``file://``).

Every function here runs where it is called: listing on the driver, :func:`inspect_shard` and
:func:`read_unit_frame` inside CPU tasks on any node, so a shard is read by the node that prompts
it. A Parquet unit reads only the row groups it overlaps. Problems are one line naming the shard
and the row, rows numbered from 1 within the shard as everywhere else.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass

import pandas as pd

from ..data import REQUIRED_COLUMNS, SUPPORTED_SUFFIXES, read_table
from ..errors import WsdmError, one_line

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Shard:
    """One input file: ``uri`` opens it (a local path or ``scheme://...``)."""

    uri: str

    @property
    def name(self) -> str:
        return self.uri

    @property
    def suffix(self) -> str:
        return os.path.splitext(self.uri)[1].lower()


def _filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    from pyarrow import fs

    if "://" in uri:
        try:
            return fs.FileSystem.from_uri(uri)
        except Exception as exc:  # noqa: BLE001 - unknown scheme, missing credentials, ...
            raise WsdmError(f"{uri}: cannot open this filesystem ({one_line(exc)})") from exc
    return fs.LocalFileSystem(), os.path.abspath(uri)


def _join(uri: str, path: str) -> str:
    """The URI of ``path`` on the filesystem ``uri`` names (local paths stay paths)."""
    if "://" not in uri:
        return path
    scheme = uri.split("://", 1)[0]
    return f"{scheme}://{path}" if scheme != "file" else f"file://{path}"


def _visible(path: str) -> bool:
    """Files Spark, Hive and Ray write next to the data (_SUCCESS, .crc, _metadata) are not shards."""
    return not any(part.startswith(("_", ".")) for part in path.split("/")[-1:])


def list_shards(source: str) -> list[Shard]:
    """The shards ``source`` names, sorted by path (the output follows this order)."""
    from pyarrow import fs

    filesystem, path = _filesystem(source)
    if any(char in path for char in GLOB_CHARS):
        base = path[: min(path.index(c) for c in GLOB_CHARS if c in path)].rsplit("/", 1)[0] or "/"
        try:
            infos = filesystem.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
        except Exception as exc:  # noqa: BLE001
            raise WsdmError(f"{source}: cannot list {base} ({one_line(exc)})") from exc
        found = [i.path for i in infos if i.type == fs.FileType.File and fnmatch.fnmatch(i.path, path)]
        if not found:
            raise WsdmError(f"{source}: no file matches")
    else:
        try:
            info = filesystem.get_file_info(path)
        except Exception as exc:  # noqa: BLE001
            raise WsdmError(f"{source}: cannot read ({one_line(exc)})") from exc
        if info.type == fs.FileType.NotFound:
            raise WsdmError(f"{source}: file or folder not found")
        if info.type == fs.FileType.Directory:
            infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
            found = [
                i.path
                for i in infos
                if i.type == fs.FileType.File and i.path.endswith(".parquet") and _visible(i.path)
            ]
            if not found:
                raise WsdmError(f"{source}: the folder holds no .parquet file")
        else:
            found = [path]
    shards = [Shard(_join(source, p) if "://" in source else p) for p in sorted(found)]
    for shard in shards:
        if shard.suffix not in SUPPORTED_SUFFIXES:
            raise WsdmError(
                f"{shard.name}: unsupported file type {shard.suffix or '(none)'}; use .parquet shards"
            )
        if shard.suffix != ".parquet" and "://" in shard.uri:
            raise WsdmError(f"{shard.name}: only .parquet shards are read from remote filesystems")
    return shards


def _parquet(shard: Shard):
    import pyarrow.parquet as pq

    filesystem, path = _filesystem(shard.uri)
    try:
        return pq.ParquetFile(filesystem.open_input_file(path))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        raise WsdmError(f"{shard.name}: unreadable or truncated parquet file ({one_line(exc)})") from exc


def inspect_shard(shard: Shard) -> dict:
    """Columns, row count, ids and identity of one shard; problems come back as ``error`` (a line).

    Runs in a CPU task per shard, so the checks of a thousand shards run in parallel; only the id
    column is read (Parquet), which is what the cross-shard duplicate check needs.
    """
    try:
        if shard.suffix == ".parquet":
            handle = _parquet(shard)
            columns = handle.schema_arrow.names
            _check_columns(shard, columns)
            try:
                ids = handle.read(columns=["id"]).column("id").to_pandas()
            except Exception as exc:  # noqa: BLE001
                raise WsdmError(
                    f"{shard.name}: unreadable or truncated parquet file ({one_line(exc)})"
                ) from exc
        else:
            frame = read_table(shard.uri)
            _check_columns(shard, list(frame.columns))
            ids = frame["id"]
        _check_ids(shard, ids)
        return {"rows": len(ids), "ids": ids.tolist(), "identity": shard_identity(shard), "error": None}
    except WsdmError as exc:
        return {"error": str(exc)}


def _check_columns(shard: Shard, columns: list[str]) -> None:
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise WsdmError(
            f"{shard.name}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(found: {', '.join(map(str, columns)) or 'none'})"
        )


def _check_ids(shard: Shard, ids: pd.Series) -> None:
    if len(ids) == 0:
        raise WsdmError(f"{shard.name}: the table has no rows")
    nulls = ids.isna().to_numpy().nonzero()[0]
    if len(nulls):
        raise WsdmError(f"{shard.name}: row {nulls[0] + 1}: id is null")
    duplicated = ids.duplicated(keep=False).to_numpy().nonzero()[0]
    if len(duplicated):
        first = duplicated[0]
        twin = next(int(p) for p in duplicated[1:] if ids.iloc[p] == ids.iloc[first])
        raise WsdmError(f"{shard.name}: duplicate id {ids.iloc[first]!r} at rows {first + 1} and {twin + 1}")


def check_across_shards(shards: list[Shard], ids: list[list]) -> None:
    """An id in two shards is one line naming both shards and rows (ids compare as text, as the
    submission writes them)."""
    seen: dict[str, tuple[int, int]] = {}
    for number, shard_ids in enumerate(ids):
        for row, value in enumerate(shard_ids):
            key = str(value)
            if key in seen:
                other, other_row = seen[key]
                raise WsdmError(
                    f"{shards[number].name}: row {row + 1}: id {value!r} is also in "
                    f"{shards[other].name} (row {other_row + 1})"
                )
            seen[key] = (number, row)


def shard_identity(shard: Shard) -> str:
    """What a work folder checks to know the shard is unchanged: the bytes' hash for a local file;
    size and modification time on a remote filesystem (hashing would read every byte twice)."""
    from pyarrow import fs

    filesystem, path = _filesystem(shard.uri)
    if isinstance(filesystem, fs.LocalFileSystem):
        digest = hashlib.sha256()
        with filesystem.open_input_stream(path) as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()
    info = filesystem.get_file_info(path)
    return f"size={info.size} mtime={info.mtime_ns}"


def read_unit_frame(shard: Shard, start: int, stop: int) -> pd.DataFrame:
    """Rows ``start:stop`` of a shard, with the columns prompting needs, reading as little as possible."""
    if shard.suffix != ".parquet":
        return read_table(shard.uri).iloc[start:stop].reset_index(drop=True)
    import pyarrow as pa

    handle = _parquet(shard)
    metadata = handle.metadata
    groups, first_row, row = [], None, 0
    for group in range(metadata.num_row_groups):
        size = metadata.row_group(group).num_rows
        if row + size > start and row < stop:
            groups.append(group)
            first_row = row if first_row is None else first_row
        row += size
    try:
        table = handle.read_row_groups(groups, columns=list(REQUIRED_COLUMNS)) if groups else pa.table({})
    except Exception as exc:  # noqa: BLE001
        raise WsdmError(f"{shard.name}: unreadable or truncated parquet file ({one_line(exc)})") from exc
    offset = start - (first_row or 0)
    return table.slice(offset, stop - start).to_pandas()
