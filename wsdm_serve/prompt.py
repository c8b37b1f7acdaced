"""The judge prompt contract.

The released model was trained on exactly these strings (blank lines, the 30-hyphen separators and
the trailing newline of each message included), rendered through the tokenizer's own chat template
and followed by " Choice: ". The next token is the answer letter "A" or "B" (no leading space).
This module is the only place in the code base that knows the wording; training and serving both
import it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import WsdmError

STUDENT_SYSTEM_PROMPT = """You are a judge tasked with evaluating responses from two language models. Select the response that best meets the user's needs based on their query.

**Input:**
<Query>
User's original query.
</Query>

<Response_A>
First model's response.
</Response_A>

<Response_B>
Second model's response.
</Response_B>

**Output:**
Return only one letter:
- A for Response_A
- B for Response_B

**Guidelines:**
- Respond with only A or B.
- Do not provide explanations.
"""

TEACHER_SYSTEM_PROMPT = """You are a skilled judge evaluating responses from two large language models(LLMs). Your task is to select the response that best meets the user's needs based on the query provided.

**Input Format:**
<Query>
[User's original query to both LLMs]
</Query>

<Response_A>
[First LLM's response]
</Response_A>

<Response_B>
[Second LLM's response]
</Response_B>

**Your Task:**
Carefully analyze both <Response_A> and <Response_B> in relation to the Query. Determine which response is more likely to be selected by a user based on the following criteria:
- Completeness in addressing the query
- Accuracy of information
- Clarity and coherence
- Conciseness vs appropriate detail
- Helpful examples or explanations when needed
- Professional yet engaging tone
- Sound reasoning and logic
- Format and presentation

**Output:**
Respond with only a single letter:
- A if <Response_A> is better.
- B if <Response_B> is better.

**Important Notes:**
- Provide only the letter A or B as your response.
- No explanations are needed.
"""

SEPARATOR = "-" * 30
CHOICE_SUFFIX = " Choice: "
ANSWER_LETTERS = ("A", "B")


def user_message(query: str, answer_a: str, answer_b: str) -> str:
    """The user turn; texts are inserted verbatim (braces in them are not format fields)."""
    return (
        "Here is your input to process now-\n\n"
        f"<Query>\n{query}\n</Query>\n"
        f"{SEPARATOR}\n"
        f"<Response_A>\n{answer_a}\n</Response_A>\n"
        f"{SEPARATOR}\n"
        f"<Response_B>\n{answer_b}\n</Response_B>\n"
    )


@dataclass(frozen=True)
class JudgePrompt:
    """Renders the judge prompt through a tokenizer's chat template."""

    tokenizer: object
    system_prompt: str = STUDENT_SYSTEM_PROMPT

    def __post_init__(self) -> None:
        if not getattr(self.tokenizer, "chat_template", None):
            name = getattr(self.tokenizer, "name_or_path", "the tokenizer")
            raise WsdmError(f"{name}: tokenizer has no chat template; the judge prompt needs one")

    def render(self, query: str, answer_a: str, answer_b: str) -> str:
        messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": user_message(query, answer_a, answer_b)},
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + CHOICE_SUFFIX

    def render_pair(self, query: str, answer_a: str, answer_b: str) -> tuple[str, str]:
        """The prompt and its swapped variant (B's text in the Response_A slot), same truncation."""
        return self.render(query, answer_a, answer_b), self.render(query, answer_b, answer_a)


def letter_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of "A" and "B": the last id of each letter tokenized without special tokens."""
    ids = []
    for letter in ANSWER_LETTERS:
        encoded = tokenizer(letter, add_special_tokens=False)["input_ids"]
        if not encoded:
            raise WsdmError(f"tokenizer encodes {letter!r} to no token")
        ids.append(encoded[-1])
    return ids[0], ids[1]
