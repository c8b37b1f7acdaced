"""The prompt contract, checked against the full expected string written out by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import ARENA_SAMPLE
from wsdm_serve.prompt import JudgePrompt, letter_token_ids
from wsdm_serve.textnorm import list_or_text

SYSTEM = (
    "You are a judge tasked with evaluating responses from two language models. Select the response that "
    "best meets the user's needs based on their query.\n"
    "\n"
    "**Input:**\n"
    "<Query>\n"
    "User's original query.\n"
    "</Query>\n"
    "\n"
    "<Response_A>\n"
    "First model's response.\n"
    "</Response_A>\n"
    "\n"
    "<Response_B>\n"
    "Second model's response.\n"
    "</Response_B>\n"
    "\n"
    "**Output:**\n"
    "Return only one letter:\n"
    "- A for Response_A\n"
    "- B for Response_B\n"
    "\n"
    "**Guidelines:**\n"
    "- Respond with only A or B.\n"
    "- Do not provide explanations.\n"
)


def expected_prompt(query: str, a: str, b: str) -> str:
    hyphens = "------------------------------"
    user = (
        "Here is your input to process now-\n\n<Query>\n" + query + "\n</Query>\n" + hyphens + "\n"
        "<Response_A>\n" + a + "\n</Response_A>\n" + hyphens + "\n<Response_B>\n" + b + "\n</Response_B>\n"
    )
    return (
        "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\n" + user + "<|im_end|>\n"
        "<|im_start|>assistant\n Choice: "
    )


def test_separator_is_thirty_hyphens():
    assert len("------------------------------") == 30


@pytest.mark.parametrize("row", range(6))
def test_rendered_prompt_equals_the_contract_on_real_rows(tokenizer, row):
    frame = pd.read_parquet(ARENA_SAMPLE)
    record = frame.iloc[row]
    a, b = list_or_text(record.response_a), list_or_text(record.response_b)
    prompt = JudgePrompt(tokenizer)
    assert prompt.render(record.prompt, a, b) == expected_prompt(record.prompt, a, b)
    forward, swapped = prompt.render_pair(record.prompt, a, b)
    assert swapped == expected_prompt(record.prompt, b, a)
    assert forward != swapped or a == b


def test_braces_in_text_are_not_format_fields(tokenizer):
    text = "def f(): return {'a': {x}}"
    assert JudgePrompt(tokenizer).render(text, "{0}", "{query}") == expected_prompt(text, "{0}", "{query}")


def test_letter_ids_are_the_plain_capitals(tokenizer):
    assert letter_token_ids(tokenizer) == (32, 33)
