"""A group of responses as Python callers hand it over: one prompt, its N responses and, when the
rewards compare against one, a reference response.

    {"prompt": "2+2?", "responses": ["4", "5", "four"], "reference": "4", "id": "q1"}
    ("2+2?", ["4", "5", "four"], "4")        # or ("2+2?", ["4", "5", "four"]) without a reference

The in-process judge and the HTTP client accept the same shapes, so they share this one
conversion (as they share :mod:`wsdm_serve.pairs` for pairs); what a JSON request holds is checked
where it is read, with the same messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import WsdmError

GROUP_FIELDS = ("prompt", "responses", "reference")

Group = Mapping[str, Any] | Sequence[Any]
"""``{"prompt": ..., "responses": [...], "reference": ..., "id": ...}`` (``reference`` and ``id``
optional) or a ``(prompt, responses)`` / ``(prompt, responses, reference)`` tuple."""


class GroupError(WsdmError, ValueError):
    """A group that is not one of the accepted shapes, or that the method cannot score; ``group``
    (its index) and ``field`` say where, for callers that report them separately (the server)."""

    def __init__(self, message: str, group: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.group = group
        self.field = field


def group_record(group: Group, index: int, *, check: bool = True) -> dict:
    """The group as a dict with ``prompt``, ``responses`` (a list), ``reference`` (None when absent)
    and ``id`` when it has one; errors name ``groups[index]`` and the field. ``check=False`` only
    turns a tuple into a dict and leaves a mapping's fields to the server, which answers 422."""
    if isinstance(group, Mapping):
        if not check:
            return dict(group)
        missing = [name for name in ("prompt", "responses") if name not in group]
        if missing:
            raise GroupError(f"groups[{index}]: missing {', '.join(missing)}", index, missing[0])
        record = {
            "prompt": group["prompt"],
            "responses": group["responses"],
            "reference": group.get("reference"),
        }
        if "id" in group:
            record["id"] = group["id"]
    elif isinstance(group, Sequence) and not isinstance(group, str | bytes):
        if len(group) not in (2, 3):
            raise GroupError(
                f"groups[{index}]: a tuple must be (prompt, responses) or (prompt, responses, reference); "
                f"it has {len(group)} items",
                index,
            )
        record = {
            "prompt": group[0],
            "responses": group[1],
            "reference": group[2] if len(group) == 3 else None,
        }
    else:
        raise GroupError(
            f"groups[{index}]: expected a mapping with prompt, responses and optionally reference, or a "
            f"(prompt, responses[, reference]) tuple, got {type(group).__name__}",
            index,
        )
    if isinstance(record["responses"], Sequence) and not isinstance(record["responses"], str | bytes):
        record["responses"] = list(record["responses"])
    if check:
        check_group(record, index)
    return record


def check_group(record: Mapping, index: int) -> None:
    """Raise :class:`GroupError` naming the field unless the texts are strings and there is at
    least one response."""
    if not isinstance(record["prompt"], str):
        raise GroupError(
            f"groups[{index}].prompt: must be a string, got {type(record['prompt']).__name__}",
            index,
            "prompt",
        )
    responses = record["responses"]
    if not isinstance(responses, list):
        raise GroupError(
            f"groups[{index}].responses: must be a list of strings, got {type(responses).__name__}",
            index,
            "responses",
        )
    if not responses:
        raise GroupError(f"groups[{index}].responses: empty; a group needs at least one", index, "responses")
    for position, response in enumerate(responses):
        if not isinstance(response, str):
            raise GroupError(
                f"groups[{index}].responses[{position}]: must be a string, got {type(response).__name__}",
                index,
                "responses",
            )
    reference = record.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise GroupError(
            f"groups[{index}].reference: must be a string or absent, got {type(reference).__name__}",
            index,
            "reference",
        )


def group_records(groups: Iterable[Group], *, check: bool = True) -> list[dict]:
    """Every group as a dict, in order."""
    if isinstance(groups, str | bytes | Mapping):
        raise GroupError("groups: expected a list of groups, not a single " + type(groups).__name__)
    return [group_record(group, index, check=check) for index, group in enumerate(groups)]
