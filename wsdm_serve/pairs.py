"""A pair as Python callers hand it over: a mapping or a ``(prompt, response_a, response_b)`` tuple.

The in-process judge and the HTTP client accept the same shapes, so they share this one
conversion; what a table or a JSON request holds is checked where those are read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import WsdmError

PAIR_FIELDS = ("prompt", "response_a", "response_b")

Pair = Mapping[str, Any] | Sequence[str]
"""``{"prompt": ..., "response_a": ..., "response_b": ..., "id": ...}`` (``id`` optional) or a
``(prompt, response_a, response_b)`` tuple."""


class PairError(WsdmError, ValueError):
    """A pair that is not one of the accepted shapes (a ``ValueError`` for Python callers)."""


def pair_record(pair: Pair, index: int, *, check: bool = True) -> dict:
    """The pair as a dict with the three texts (and ``id`` when it has one); errors name
    ``pairs[index]`` and the field. ``check=False`` only turns a tuple into a dict and leaves a
    mapping's fields to whoever reads it next (the server, which answers 422 naming them)."""
    if isinstance(pair, Mapping) and not check:
        return dict(pair)
    if isinstance(pair, Mapping):
        missing = [name for name in PAIR_FIELDS if name not in pair]
        if missing:
            raise PairError(f"pairs[{index}]: missing {', '.join(missing)}")
        record = {name: pair[name] for name in PAIR_FIELDS}
        if "id" in pair:
            record["id"] = pair["id"]
    elif isinstance(pair, Sequence) and not isinstance(pair, str | bytes):
        if len(pair) != 3:
            raise PairError(
                f"pairs[{index}]: a tuple must be (prompt, response_a, response_b); it has {len(pair)} items"
            )
        record = dict(zip(PAIR_FIELDS, pair, strict=True))
    else:
        raise PairError(
            f"pairs[{index}]: expected a mapping with {', '.join(PAIR_FIELDS)} or a "
            f"(prompt, response_a, response_b) tuple, got {type(pair).__name__}"
        )
    if check:
        for name in PAIR_FIELDS:
            if not isinstance(record[name], str):
                raise PairError(f"pairs[{index}].{name}: must be a string, got {type(record[name]).__name__}")
    return record


def pair_records(pairs: Iterable[Pair], *, check: bool = True) -> list[dict]:
    """Every pair as a dict, in order."""
    if isinstance(pairs, str | bytes | Mapping):
        raise PairError("pairs: expected a list of pairs, not a single " + type(pairs).__name__)
    return [pair_record(pair, index, check=check) for index, pair in enumerate(pairs)]
