"""Contract-conformant processed data for the training tests, built from the shipped assets.

Uses the real prompt contract and truncation of ``wsdm_serve`` (the same code ``wsdm-train
prepare`` uses), at the budgets of the data contract, on small slices of the PandaLM rows so
the tiny training chain runs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from wsdm_serve.data import ArenaRows, read_table
from wsdm_serve.preprocess import build_prompts
from wsdm_serve.prompt import STUDENT_SYSTEM_PROMPT, TEACHER_SYSTEM_PROMPT
from wsdm_serve.truncation import TruncationConfig

ASSETS = Path(__file__).parent / "assets"
STUDENT_TRAIN = TruncationConfig(token_budget=2048, response_word_cap=1400)
STUDENT_DEV = TruncationConfig(token_budget=10000, response_word_cap=4200)
TEACHER_FOLD = TruncationConfig(token_budget=2048, response_word_cap=1400)
STUDENT_PRETRAIN = TruncationConfig(token_budget=1024, response_word_cap=1400)
TEACHER_PRETRAIN = TruncationConfig(token_budget=1024, response_word_cap=700)


def _rows(frame: pd.DataFrame) -> ArenaRows:
    return ArenaRows(
        ids=frame["id"].astype(str).tolist(),
        prompts=frame["prompt"].astype(str).tolist(),
        responses_a=frame["response_a"].astype(str).tolist(),
        responses_b=frame["response_b"].astype(str).tolist(),
        null_text_cells=0,
    )


def fold_frame(frame: pd.DataFrame, tokenizer, config: TruncationConfig, system_prompt: str) -> pd.DataFrame:
    """Columns of a fold file: row_key, id, source, fold, label, text, input_ids, n_tokens."""
    prompts = build_prompts(
        _rows(frame), tokenizer, config, system_prompt=system_prompt, with_swapped_ids=False, progress=False
    )
    return pd.DataFrame(
        {
            "row_key": frame["row_key"].tolist(),
            "id": frame["id"].astype(str).tolist(),
            "source": frame["source"].tolist(),
            "fold": frame["fold"].astype("int8").tolist(),
            "label": frame["label"].astype("int8").tolist(),
            "text": prompts.texts,
            "input_ids": [np.asarray(ids, dtype=np.int32) for ids in prompts.token_ids],
            "n_tokens": prompts.n_tokens.astype(np.int32),
        }
    )


def pretrain_frame(
    frame: pd.DataFrame, tokenizer, config: TruncationConfig, system_prompt: str
) -> pd.DataFrame:
    prompts = build_prompts(_rows(frame), tokenizer, config, system_prompt=system_prompt, progress=False)
    labels = frame["label"].astype("int8").to_numpy()
    return pd.DataFrame(
        {
            "row_key": frame["row_key"].tolist(),
            "label": labels,
            "text": prompts.texts,
            "input_ids": [np.asarray(ids, dtype=np.int32) for ids in prompts.token_ids],
            "n_tokens": prompts.n_tokens.astype(np.int32),
            "text_swapped": prompts.swapped_texts,
            "input_ids_swapped": [np.asarray(ids, dtype=np.int32) for ids in prompts.swapped_token_ids],
            "label_swapped": (1 - labels).astype("int8"),
        }
    )


def _shortest(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` rows with the least text: real rows, but quick to train on a CPU."""
    size = frame["prompt"].str.len() + frame["response_a"].str.len() + frame["response_b"].str.len()
    return frame.loc[size.sort_values(kind="stable").index[:n]].reset_index(drop=True)


def competition_rows(n: int, folds: int, seed: int = 2025) -> pd.DataFrame:
    frame = _shortest(read_table(ASSETS / "pandalm_train.parquet"), n)
    frame["label"] = (frame["winner"] != "model_a").astype(int)
    frame["row_key"] = "train:" + frame["id"].astype(str)
    frame["source"] = "train"
    rng = np.random.default_rng(seed)
    fold = np.empty(len(frame), dtype=int)
    for label in (0, 1):  # stratified round-robin over a shuffled order
        where = rng.permutation(np.flatnonzero(frame["label"].to_numpy() == label))
        fold[where] = np.arange(len(where)) % folds
    frame["fold"] = fold
    return frame


def lmsys_rows(n: int, offset: int = 0) -> pd.DataFrame:
    frame = _shortest(read_table(ASSETS / "pandalm_lmsys_format.csv").iloc[offset:], n)
    frame["label"] = (frame["winner_model_a"].astype(int) != 1).astype(int)
    frame["row_key"] = "lmsys:" + frame["id"].astype(str)
    frame["source"] = "lmsys"
    frame["fold"] = -1
    return frame


def write_processed(
    root: Path,
    tokenizer,
    teachers: tuple[str, ...],
    *,
    n_train: int = 48,
    n_lmsys: int = 16,
    n_pretrain: int = 40,
    folds: int = 2,
) -> Path:
    """Write the processed layout of the data contract under ``root``; returns ``root``."""
    root = Path(root)
    comp = competition_rows(n_train, folds)
    extra = lmsys_rows(n_lmsys)
    ut = lmsys_rows(n_pretrain, offset=500)
    ut["row_key"] = "ut:" + ut["id"].astype(str)
    root.mkdir(parents=True, exist_ok=True)
    comp[["id", "fold", "label"]].astype({"id": str}).to_parquet(root / "folds.parquet")
    roles = [
        ("student", root / "student", STUDENT_SYSTEM_PROMPT, STUDENT_TRAIN, STUDENT_DEV, STUDENT_PRETRAIN)
    ]
    for name in teachers:
        roles.append(
            (
                name,
                root / "teachers" / name,
                TEACHER_SYSTEM_PROMPT,
                TEACHER_FOLD,
                TEACHER_FOLD,
                TEACHER_PRETRAIN,
            )
        )
    for _, base, system, train_cfg, dev_cfg, pre_cfg in roles:
        for k in range(folds):
            out = base / f"fold{k}"
            out.mkdir(parents=True, exist_ok=True)
            train = pd.concat([comp[comp["fold"] != k], extra], ignore_index=True)
            fold_frame(train, tokenizer, train_cfg, system).to_parquet(out / "train.parquet")
            fold_frame(comp[comp["fold"] == k].reset_index(drop=True), tokenizer, dev_cfg, system).to_parquet(
                out / "dev.parquet"
            )
        pretrain_frame(ut, tokenizer, pre_cfg, system).to_parquet(base / "pretrain.parquet")
    return root


KEYWORDS = ("apple", "river", "castle", "guitar", "planet", "forest", "candle", "rocket")
FILLER = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "birds",
    "sing",
    "near",
    "green",
    "hills",
    "and",
    "calm",
    "water",
]


def keyword_rule_rows(n: int, seed: int) -> pd.DataFrame:
    """Arena rows with a learnable preference: the response that repeats the prompt's keyword wins.

    The loser is filler text without the keyword; the winner's slot (A or B) is random, so a model
    must locate the keyword's response to beat chance.
    """
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        keyword = KEYWORDS[rng.integers(len(KEYWORDS))]
        winner = " ".join([keyword] * int(rng.integers(3, 7)))
        loser = " ".join(rng.choice(FILLER, size=int(rng.integers(4, 10)), replace=False))
        label = int(rng.integers(2))
        a, b = (winner, loser) if label == 0 else (loser, winner)
        records.append(
            {
                "id": f"rule{seed}-{i}",
                "prompt": f"Repeat the word {keyword} a few times.",
                "response_a": a,
                "response_b": b,
                "label": label,
            }
        )
    return pd.DataFrame.from_records(records)


def rule_examples(tokenizer, n: int, seed: int):
    """Student-prompt token ids of :func:`keyword_rule_rows`, as trainer examples."""
    from wsdm_train.training.trainer import Examples

    frame = keyword_rule_rows(n, seed)
    frame["row_key"] = "train:" + frame["id"]
    frame["source"] = "train"
    frame["fold"] = 0
    fold = fold_frame(frame, tokenizer, STUDENT_TRAIN, STUDENT_SYSTEM_PROMPT)
    return Examples(
        [np.asarray(ids, dtype=np.int64) for ids in fold["input_ids"]],
        fold["label"].to_numpy(np.int64),
        fold["row_key"].tolist(),
    )
