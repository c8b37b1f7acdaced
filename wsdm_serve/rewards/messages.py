"""Texts from chat messages, the way RL trainers hand prompts and completions over.

A trainer's prompt is a string or a conversation (``[{"role": "user", "content": ...}, ...]``); a
completion is a string or the assistant's messages. The judge reads one prompt text and one
response text. A conversation's prompt is its user turns joined with newlines, the way the
reference joined the turns of multi-turn arena prompts it was trained on (system messages and
earlier assistant turns are left out); a completion is its assistant messages joined with
newlines. ``content`` may be a string or a list of content blocks, of which the text blocks count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def content_text(content: Any, where: str) -> str:
    """The text of one message's ``content``: a string, or the ``text`` of its text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        texts = []
        for block in content:
            if isinstance(block, str):
                texts.append(block)
            elif isinstance(block, Mapping) and isinstance(block.get("text"), str):
                texts.append(block["text"])
        return "\n".join(texts)
    if content is None:
        return ""
    raise ValueError(
        f"{where}: content must be a string or a list of content blocks, got {type(content).__name__}"
    )


def conversation_text(value: Any, roles: tuple[str, ...], where: str) -> str:
    """A string as it is; a list of messages as the contents of those with one of ``roles``
    (all messages when none has one) joined with newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):  # one message
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, bytes):
        raise ValueError(f"{where}: expected a string or a list of messages, got {type(value).__name__}")
    messages = []
    for position, message in enumerate(value):
        if not isinstance(message, Mapping) or "content" not in message:
            raise ValueError(f"{where}[{position}]: a message must be a mapping with role and content")
        messages.append(message)
    chosen = [message for message in messages if message.get("role") in roles] or messages
    return "\n".join(
        content_text(message["content"], f"{where}[{position}].content")
        for position, message in enumerate(chosen)
    )


def prompt_text(prompt: Any, where: str = "prompt") -> str:
    """The user's prompt: a string, or a conversation's user turns joined with newlines."""
    return conversation_text(prompt, ("user",), where)


def completion_text(completion: Any, where: str = "completion") -> str:
    """The response: a string, or the assistant messages' contents joined with newlines."""
    return conversation_text(completion, ("assistant",), where)
