"""Text normalisation of response fields, as the released model saw it during training.

The reference solution ran Python ``eval`` on every response and joined the result with newlines;
on any failure it deleted every square bracket and stripped the ends. Its training and test text
went through that, so the released model learned on the transformed text and we must reproduce it.
We never execute data: ``ast.literal_eval`` accepts exactly the literal subset of Python, which is
everything that ``eval`` of a table cell can legitimately produce. Non-literal expressions (names,
operators, calls) count as failures, which is what ``eval`` gives for them in practice
(``NameError``/``TypeError``), minus the code execution.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Literal

Normalization = Literal["reference", "none"]
NORMALIZATIONS: tuple[str, ...] = ("reference", "none")


def _strip_brackets(text: str) -> str:
    return text.replace("[", "").replace("]", "").strip()


def list_or_text(text: str) -> str:
    """Join a list literal's items with newlines; otherwise drop all brackets and strip the ends.

    ``"\\n".join(value)`` is applied to whatever the literal evaluates to, so a quoted string is
    split into one character per line and a dict contributes its keys, exactly as the reference
    did; a value whose items are not all strings falls back to bracket stripping.
    """
    try:
        value = ast.literal_eval(text)
        return "\n".join(value)
    except Exception:  # noqa: BLE001 - any parse or join failure means "plain text", as in the reference
        return _strip_brackets(text)


def normalize_response(value: object, mode: Normalization) -> str:
    """Normalise one response cell; ``value`` is a string, or a list of turns from parquet/jsonl."""
    if isinstance(value, str):
        return list_or_text(value) if mode == "reference" else value
    if isinstance(value, Iterable) and not isinstance(value, bytes | dict):
        items = list(value)
        if all(isinstance(item, str) for item in items):
            return "\n".join(items)
    return normalize_response(str(value), mode)


def normalize_prompt(value: object) -> str:
    """Prompts were used raw by the reference (never parsed); a list of turns is joined with newlines."""
    if isinstance(value, str):
        return value
    return normalize_response(value, "none")
