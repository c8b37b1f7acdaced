"""Models' answers to a set of questions: read from a table or an answers folder, then checked.

Three layouts (``--format``):

  table        .parquet / .csv / .jsonl with ``question_id, prompt, model, response``
               (optional ``language``, ``category``), one row per answer
  alpaca-eval  a folder holding AlpacaEval ``model_outputs.json`` files (a JSON list of objects with
               ``instruction``, ``output``, ``generator``; ``dataset`` becomes the category); the
               instruction identifies the question, as in AlpacaEval
  arena-hard   an Arena-Hard-Auto benchmark folder (``model_answer/<model>.jsonl``, and
               ``question.jsonl`` beside it for categories) or the ``model_answer`` folder itself;
               v2 answers (``uid``, ``model``, ``messages``: user turns, then the assistant's, whose
               content is text or ``{"answer": ...}``) and v0.1 answers (``question_id``, ``model_id``,
               ``choices[0].turns``, with the prompts in ``question.jsonl``)

Every answer keeps where it came from (file and row or line), so each problem is one line that
names it: a duplicate answer, a question with two prompts, a model that misses a question, fewer
than two models. Turns of a multi-turn conversation are joined with newlines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import jsonl_records, read_table, validate_frame
from ..errors import WsdmError

FORMATS: tuple[str, ...] = ("table", "alpaca-eval", "arena-hard")
REQUIRED = ("question_id", "prompt", "model", "response")
GROUP_COLUMNS = ("language", "category")


@dataclass(frozen=True)
class Answers:
    """Every model's answer to every question, checked.

    ``responses[q][m]`` is model ``models[m]``'s answer to question ``question_ids[q]``; ``groups``
    holds the language and category of each question where the input has them.
    """

    source: str
    question_ids: list
    prompts: list[str]
    models: tuple[str, ...]
    responses: list[list[str]]
    groups: dict[str, list]

    @property
    def n_questions(self) -> int:
        return len(self.question_ids)

    def lengths(self) -> np.ndarray:
        """(questions, models) answer lengths in characters."""
        return np.array([[len(text) for text in row] for row in self.responses], dtype=np.int64).reshape(
            self.n_questions, len(self.models)
        )


def load_answers(path: Path, answers_format: str = "table") -> Answers:
    """Read ``path`` in ``answers_format`` and check it; every problem is a one-line WsdmError."""
    path = Path(path)
    if answers_format == "table":
        frame = read_table(path)
        validate_frame(frame, path, required=REQUIRED)
        frame = frame.assign(where=[f"{path}: row {i + 1}" for i in range(len(frame))])
    elif answers_format == "alpaca-eval":
        frame = read_alpaca_eval(path)
    elif answers_format == "arena-hard":
        frame = read_arena_hard(path)
    else:
        raise WsdmError(f"--format {answers_format}: one of {', '.join(FORMATS)}")
    return check_answers(frame, str(path))


def check_answers(frame: pd.DataFrame, source: str) -> Answers:
    """The answers of ``frame`` (REQUIRED columns, optional groups, ``where`` of each row) as a grid."""
    where = frame["where"].tolist()
    for column in REQUIRED:
        nulls = np.flatnonzero(frame[column].isna().to_numpy())
        if len(nulls):
            raise WsdmError(f"{where[nulls[0]]}: {column} is empty")
    models = frame["model"].astype(str).tolist()
    questions = frame["question_id"].tolist()
    first_row: dict = {}
    for row, key in enumerate(zip(map(str, questions), models, strict=True)):
        if key in first_row:
            raise WsdmError(
                f"{where[row]}: model {key[1]} answers question {key[0]} a second time "
                f"(first at {where[first_row[key]]})"
            )
        first_row[key] = row
    question_ids = list(dict.fromkeys(questions))
    names = tuple(sorted(set(models)))
    if len(names) < 2:
        raise WsdmError(
            f"{source}: answers of {len(names)} model ({', '.join(names)}); ranking needs two or more"
        )
    q_index = {str(q): i for i, q in enumerate(question_ids)}
    m_index = {m: i for i, m in enumerate(names)}
    responses: list[list[str | None]] = [[None] * len(names) for _ in question_ids]
    for (question, model), row in first_row.items():
        responses[q_index[question]][m_index[model]] = as_text(frame["response"].iat[row])
    for model in names:
        missing = [question_ids[q] for q in range(len(question_ids)) if responses[q][m_index[model]] is None]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise WsdmError(
                f"{source}: model {model} has no answer to question {missing[0]}{more}; "
                "every model must answer every question"
            )
    prompts = _per_question(frame, "prompt", question_ids, where)
    groups = {
        column: _per_question(frame, column, question_ids, where)
        for column in GROUP_COLUMNS
        if column in frame.columns
    }
    return Answers(source, question_ids, prompts, names, responses, groups)  # type: ignore[arg-type]


def _per_question(frame: pd.DataFrame, column: str, question_ids: list, where: list[str]) -> list:
    """One value of ``column`` per question; two rows of a question that disagree are an error."""
    seen: dict[str, tuple[object, int]] = {}
    values = frame[column].tolist()
    for row, (question, value) in enumerate(zip(frame["question_id"].tolist(), values, strict=True)):
        value = None if _is_null(value) else (as_text(value) if column == "prompt" else str(value))
        key = str(question)
        if key not in seen:
            seen[key] = (value, row)
        elif seen[key][0] != value:
            raise WsdmError(
                f"{where[row]}: question {question} has another {column} than at {where[seen[key][1]]}"
            )
    return [seen[str(q)][0] for q in question_ids]


def as_text(value: object) -> str:
    """A cell as text: a list of turns (parquet, jsonl) joined with newlines, anything else as is."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | np.ndarray) and all(isinstance(item, str) for item in value):
        return "\n".join(value)
    return str(value)


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


# ------------------------------------------------------------------------------------ folders
def _folder(path: Path, what: str) -> Path:
    if not path.exists():
        raise WsdmError(f"{path}: not found")
    if not path.is_dir():
        raise WsdmError(f"{path}: --format {what} reads a folder, this is a file")
    return path


def _json_file(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WsdmError(f"{path}: unreadable JSON ({exc})") from exc


def _jsonl_records(path: Path) -> list[tuple[int, dict]]:
    try:
        return jsonl_records(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise WsdmError(f"{path}: unreadable ({exc})") from exc


def read_alpaca_eval(folder: Path) -> pd.DataFrame:
    """Rows from every ``model_outputs.json`` under ``folder`` (the model: ``generator``, else the
    file's folder name)."""
    files = sorted(_folder(folder, "alpaca-eval").rglob("model_outputs.json"))
    if not files:
        raise WsdmError(f"{folder}: no model_outputs.json under this folder (--format alpaca-eval)")
    rows = []
    for file in files:
        items = _json_file(file)
        if not isinstance(items, list):
            raise WsdmError(f"{file}: expected a JSON list of outputs")
        for number, item in enumerate(items, start=1):
            where = f"{file}: item {number}"
            if not isinstance(item, dict):
                raise WsdmError(f"{where}: not a JSON object")
            for key in ("instruction", "output"):
                if not isinstance(item.get(key), str):
                    raise WsdmError(f"{where}: {key} missing or not text")
            rows.append(
                {
                    "question_id": item["instruction"],
                    "prompt": item["instruction"],
                    "model": str(item.get("generator") or file.parent.name),
                    "response": item["output"],
                    "category": item.get("dataset"),
                    "where": where,
                }
            )
    frame = pd.DataFrame(rows)
    return frame if frame["category"].notna().any() else frame.drop(columns="category")


def read_arena_hard(folder: Path) -> pd.DataFrame:
    """Rows from ``model_answer/*.jsonl`` (v2 or v0.1), with ``question.jsonl``'s prompts and groups."""
    folder = _folder(folder, "arena-hard")
    if (folder / "model_answer").is_dir():
        answers_dir, question_file = folder / "model_answer", folder / "question.jsonl"
    else:
        answers_dir, question_file = folder, folder.parent / "question.jsonl"
    files = sorted(answers_dir.glob("*.jsonl"))
    if not files:
        raise WsdmError(f"{answers_dir}: no <model>.jsonl answer files (--format arena-hard)")
    questions = _arena_questions(question_file) if question_file.is_file() else {}
    rows = []
    for file in files:
        for number, record in _jsonl_records(file):
            where = f"{file}: line {number}"
            rows.append(_arena_answer(record, file, where, questions))
    frame = pd.DataFrame(rows)
    for column in GROUP_COLUMNS:
        if column in frame.columns and frame[column].isna().all():
            frame = frame.drop(columns=column)
    return frame


def _arena_questions(path: Path) -> dict[str, dict]:
    """question id -> prompt (v0.1 turns or v2 prompt), category, language where given."""
    questions = {}
    for number, record in _jsonl_records(path):
        qid = record.get("uid", record.get("question_id"))
        if qid is None:
            raise WsdmError(f"{path}: line {number} has neither uid nor question_id")
        prompt = record.get("prompt")
        if prompt is None and isinstance(record.get("turns"), list):
            prompt = "\n".join(
                _text(turn.get("content"), f"{path}: line {number}") for turn in record["turns"]
            )
        questions[str(qid)] = {
            "prompt": prompt,
            "category": record.get("category"),
            "language": record.get("language"),
        }
    return questions


def _arena_answer(record: dict, file: Path, where: str, questions: dict[str, dict]) -> dict:
    qid = record.get("uid", record.get("question_id"))
    if qid is None:
        raise WsdmError(f"{where}: neither uid (v2) nor question_id (v0.1)")
    question = questions.get(str(qid), {})
    model = record.get("model", record.get("model_id")) or file.stem
    if isinstance(record.get("messages"), list):  # v2: the conversation, the answer last
        messages = record["messages"]
        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
            raise WsdmError(f"{where}: messages do not end with the assistant's answer")
        users = [m for m in messages[:-1] if isinstance(m, dict) and m.get("role") == "user"]
        prompt = "\n".join(_text(m.get("content"), where) for m in users) or question.get("prompt")
        response = _text(messages[-1].get("content"), where)
    elif isinstance(record.get("choices"), list) and record["choices"]:  # v0.1: turns, prompt elsewhere
        turns = record["choices"][0].get("turns") or []
        response = "\n".join(_text(turn.get("content"), where) for turn in turns)
        prompt = question.get("prompt")
        if prompt is None:
            raise WsdmError(
                f"{where}: question {qid} has no prompt (v0.1 answers need question.jsonl beside model_answer)"
            )
    else:
        raise WsdmError(f"{where}: neither messages (v2) nor choices (v0.1)")
    return {
        "question_id": str(qid),
        "prompt": prompt,
        "model": str(model),
        "response": response,
        "category": question.get("category", record.get("category")),
        "language": question.get("language", record.get("language")),
        "where": where,
    }


def _text(content: object, where: str) -> str:
    """A message's text: a string, or Arena-Hard v2's ``{"answer": ...}``."""
    if isinstance(content, dict) and isinstance(content.get("answer"), str):
        return content["answer"]
    if isinstance(content, str):
        return content
    raise WsdmError(f"{where}: a message whose content is not text ({type(content).__name__})")
