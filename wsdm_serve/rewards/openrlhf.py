"""The user prompt and the response inside an OpenRLHF remote-reward request.

OpenRLHF (0.11) posts ``{"query": [...], "prompts": [...], "labels": [...]}`` to a remote reward
model, one item per sampled response:

- ``prompts[i]`` is the prompt as the policy saw it: with ``--data.apply_chat_template`` the chat
  template rendered with the generation prompt (``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``
  for ChatML), otherwise the dataset's text (after ``--data.input_template``);
- ``query[i]`` is the prompt's tokens followed by the response's tokens, decoded with the special
  tokens kept, so it is ``prompts[i]`` followed by the response and usually an end-of-turn token;
- ``labels[i]`` is the dataset's ``--data.label_key`` column: here, the reference response.

The response is ``query[i]`` after ``prompts[i]``, less the end-of-turn tokens it ends with
(:data:`END_MARKERS`). The user prompt is read from ``prompts[i]``: the user turns of a recognised
chat template (:data:`TEMPLATES`) joined with newlines, as :mod:`.messages` reads a conversation;
a prompt in none of them is taken whole (a plain-text prompt).
"""

from __future__ import annotations

import re

END_MARKERS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "<eos>",
    "</s>",
)
"""End-of-turn and end-of-text tokens of common chat models, removed from the end of a response."""

TEMPLATES = (
    ("ChatML (Qwen, many others)", re.compile(r"<\|im_start\|>user\n(.*?)(?:<\|im_end\|>|$)", re.S)),
    ("Llama 3", re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|$)", re.S)),
    ("Gemma", re.compile(r"<start_of_turn>user\n(.*?)(?:<end_of_turn>|$)", re.S)),
    ("Phi-3", re.compile(r"<\|user\|>\n?(.*?)(?:<\|end\|>|$)", re.S)),
    ("Mistral, Llama 2", re.compile(r"\[INST\](.*?)\[/INST\]", re.S)),
)
"""Chat templates whose user turns are recognised: (name, pattern of one user turn)."""

_LLAMA2_SYSTEM = re.compile(r"<<SYS>>.*?<</SYS>>", re.S)


def user_prompt(prompt: str) -> str:
    """The user's text in a rendered chat prompt: its user turns joined with newlines, or the whole
    prompt when no template of :data:`TEMPLATES` is recognised."""
    for name, pattern in TEMPLATES:
        turns = pattern.findall(prompt)
        if turns:
            if name.startswith("Mistral"):
                turns = [_LLAMA2_SYSTEM.sub("", turn).strip() for turn in turns]
            return "\n".join(turns)
    return prompt


def strip_end_markers(text: str) -> str:
    """``text`` without the :data:`END_MARKERS` (and whitespace after them) at its end."""
    while True:
        trimmed = text.rstrip()
        for marker in END_MARKERS:
            if trimmed.endswith(marker):
                text = trimmed[: -len(marker)]
                break
        else:
            return text


def response_of(query: str, prompt: str) -> str | None:
    """The response in ``query`` (``prompt`` followed by it), or None when ``query`` does not start
    with ``prompt``."""
    if not query.startswith(prompt):
        return None
    return strip_end_markers(query[len(prompt) :])
