"""`wsdm-serve rank` end to end on the tiny model: real PandaLM answers, real files, real bad inputs."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.conftest import ASSETS, console_script
from wsdm_serve.cli import main
from wsdm_serve.data import arena_rows_from_frame
from wsdm_serve.engines.settings import EngineSettings
from wsdm_serve.judge import run_predict
from wsdm_serve.rank.answers import load_answers
from wsdm_serve.settings import JudgeSettings
from wsdm_serve.truncation import TruncationConfig

BUDGET = "300"  # tokens of query + responses: keeps the tiny model's CPU time small
ENGINE = ("--token-budget", BUDGET, "--engine", "hf", "--device", "cpu")


def _tool():
    spec = importlib.util.spec_from_file_location(
        "pandalm_answers", ASSETS.parents[1] / "tools" / "pandalm_answers.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> Path:
    """6 PandaLM questions x 3 models, with a category per question (for the per-group boards)."""
    frame = _tool().pandalm_answers(questions=6, models=3)
    frame["category"] = np.where(frame["question_id"].str[-1].astype(int) % 2 == 0, "even", "odd")
    path = tmp_path_factory.mktemp("answers") / "answers.parquet"
    frame.to_parquet(path, index=False)
    return path


def rank(*args) -> object:
    return CliRunner().invoke(main, ["-q", "rank", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def ranked(answers, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranked")
    result = rank(answers, "--model", tiny_model_dir, "--baseline", "llama-7b", "--out", root / "out",
                  "--work-dir", root / "work", "--bootstrap", "100", *ENGINE)  # fmt: skip
    assert result.exit_code == 0, result.output
    return root, result


def test_outputs_and_the_board(ranked):
    root, result = ranked
    out = root / "out"
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board.columns) == [
        "model", "score", "ci_low", "ci_high", "win_rate", "win_rate_ci_low", "win_rate_ci_high",
        "n_judgements", "avg_length",
    ]  # fmt: skip
    assert sorted(board["model"]) == ["bloom-7b", "cerebras-gpt-6.7B", "llama-7b"]
    assert board["score"].is_monotonic_decreasing
    base = board.set_index("model").loc["llama-7b"]
    assert (base.score, base.ci_low, base.ci_high, base.win_rate, base.n_judgements) == (
        1000,
        1000,
        1000,
        0.5,
        12,
    )
    assert ((board.ci_low <= board.score) & (board.score <= board.ci_high)).all()
    judgements = pd.read_parquet(out / "judgements.parquet")
    assert len(judgements) == 12 and set(judgements["model_b"]) == {"llama-7b"}
    np.testing.assert_allclose(judgements.p_a, (judgements.p_a_forward + judgements.p_a_swapped) / 2)
    # The win rate is the mean P(win) against the baseline.
    for model, rate in board.set_index("model")["win_rate"].items():
        if model != "llama-7b":
            assert rate == pytest.approx(judgements.loc[judgements.model_a == model, "p_a"].mean(), abs=1e-4)
    document = json.loads((out / "leaderboard.json").read_text())
    assert document["settings"]["pairs"] == "baseline" and document["settings"]["baseline"] == "llama-7b"
    assert set(document["groups"]["category"]) == {"even", "odd"}
    assert set(document["groups"]["language"]) == {"English"}
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout.splitlines()[0].startswith("| # | model | score | 95% CI |")


def test_judgements_are_predicts_probabilities_in_both_orders(ranked, answers, tiny_model_dir):
    """rank judges a pair exactly as `predict --tta all` does (truncation, prompt, engine)."""
    judgements = pd.read_parquet(ranked[0] / "out" / "judgements.parquet")
    table = pd.read_parquet(answers).set_index(["question_id", "model"])["response"]
    prompts = pd.read_parquet(answers).groupby("question_id")["prompt"].first()
    rows = pd.DataFrame(
        {
            "id": range(len(judgements)),
            "prompt": prompts[judgements.question_id].to_numpy(),
            "response_a": [
                table[(q, m)] for q, m in zip(judgements.question_id, judgements.model_a, strict=True)
            ],
            "response_b": [
                table[(q, m)] for q, m in zip(judgements.question_id, judgements.model_b, strict=True)
            ],
        }
    )
    config = JudgeSettings(
        model=tiny_model_dir, tta="all", progress=False, truncation=TruncationConfig(token_budget=int(BUDGET)),
        engine=EngineSettings(name="hf", device="cpu"),
    )  # fmt: skip
    result = run_predict(arena_rows_from_frame(rows, "pairs"), config)
    np.testing.assert_allclose(judgements.p_a_forward, result.forward[:, 0], atol=1e-6)
    np.testing.assert_allclose(judgements.p_a_swapped, result.swapped[:, 1], atol=1e-6)
    np.testing.assert_allclose(judgements.p_a, result.probs[:, 0], atol=1e-6)


def test_refit_from_judgements_and_from_votes(ranked, tmp_path):
    out = ranked[0] / "out"
    again = rank("--judgements", out / "judgements.parquet", "--baseline", "llama-7b", "--bootstrap", "100",
                 "--out", tmp_path / "again")  # fmt: skip
    assert again.exit_code == 0, again.output
    first, second = (pd.read_csv(p / "leaderboard.csv") for p in (out, tmp_path / "again"))
    pd.testing.assert_frame_equal(first.drop(columns="avg_length"), second.drop(columns="avg_length"))
    votes = rank(
        "--judgements", ASSETS / "pandalm_train.parquet", "--out", tmp_path / "votes", "--bootstrap", "50"
    )
    assert votes.exit_code == 0, votes.output
    people = pd.read_csv(tmp_path / "votes" / "leaderboard.csv")
    assert len(people) == 5 and people["n_judgements"].sum() == 2 * 894
    assert abs(people["score"].mean() - 1000) < 1e-6  # no baseline: the mean at 1000
    hard = rank("--judgements", out / "judgements.parquet", "--outcomes", "hard", "--tie-margin", "0.01",
                "--style-control", "length", "--bootstrap", "20", "--out", tmp_path / "hard")  # fmt: skip
    assert hard.exit_code == 0, hard.output
    assert (
        "length"
        in json.loads((tmp_path / "hard" / "leaderboard.json").read_text())["overall"]["style_coefficients"]
    )


def test_adding_a_model_judges_only_its_pairs_and_a_killed_run_resumes(answers, tiny_model_dir, tmp_path):
    frame = pd.read_parquet(answers)
    two = tmp_path / "two.parquet"
    frame[frame.model != "bloom-7b"].to_parquet(two, index=False)
    work = tmp_path / "work"
    base = ["--model", tiny_model_dir, "--work-dir", work, "--bootstrap", "10", *ENGINE]
    args = [*base, "--pairs", "all"]
    # Killed after its first chunk of 2 pairs was saved (the fault holds it there), then resumed.
    env = {**os.environ, "WSDM_JOBS_FAULT": "hold-after-units=1"}
    command = [
        console_script("wsdm-serve"),
        "-q",
        "rank",
        two,
        "--out",
        tmp_path / "o2",
        "--chunk-rows",
        "2",
        *args,
    ]
    process = subprocess.Popen(
        list(map(str, command)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 300
        while not list(work.glob("judge-*/part-000001.parquet")):
            assert process.poll() is None, "rank ended before it was killed"
            assert time.time() < deadline, "rank saved no chunk in time"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (tmp_path / "o2").exists()
    resumed = rank(two, "--out", tmp_path / "o2", *args)
    assert resumed.exit_code == 0, resumed.output
    assert "6 judgements, 4 pairs judged now" in resumed.stderr
    three = rank(answers, "--out", tmp_path / "o3", *args)
    texts = frame.set_index(["question_id", "model"])["response"]

    def keys(judged):  # what a judgement is stored under: the question and the two texts, in order
        return {
            (q, texts[(q, a)], texts[(q, b)])
            for q, a, b in zip(judged.question_id, judged.model_a, judged.model_b, strict=True)
        }

    before = keys(pd.read_parquet(tmp_path / "o2" / "judgements.parquet"))
    after = keys(pd.read_parquet(tmp_path / "o3" / "judgements.parquet"))
    assert f"18 judgements, {len(after - before)} pairs judged now" in three.stderr  # only bloom-7b's pairs
    old = pd.read_parquet(tmp_path / "o2" / "judgements.parquet")
    latest = pd.read_parquet(tmp_path / "o3" / "judgements.parquet")
    merged = old.merge(latest, on=["question_id", "model_a", "model_b"], suffixes=("", "_new"))
    assert len(merged) == 6
    np.testing.assert_array_equal(merged.p_a, merged.p_a_new)
    again = rank(answers, "--out", tmp_path / "o3", "--pairs", "budget", "--max-judgements", "9", *base)
    assert again.exit_code == 0, again.output
    assert "9 judgements, 0 pairs judged now" in again.stderr  # every pair is in the work folder
    assert len(pd.read_parquet(tmp_path / "o3" / "judgements.parquet")) == 9


def test_answer_folders_read_as_the_table(answers, tmp_path):
    frame = pd.read_parquet(answers)
    table = load_answers(answers)
    alpaca = tmp_path / "alpaca"
    for model, part in frame.groupby("model"):
        (alpaca / model).mkdir(parents=True)
        outputs = [{"instruction": p, "output": r, "generator": model, "dataset": c}
                   for p, r, c in zip(part.prompt, part.response, part.category, strict=True)]  # fmt: skip
        (alpaca / model / "model_outputs.json").write_text(json.dumps(outputs))
    hard = tmp_path / "arena-hard"
    (hard / "model_answer").mkdir(parents=True)
    questions = frame.drop_duplicates("question_id")
    (hard / "question.jsonl").write_text(
        "".join(json.dumps({"uid": q, "category": c, "prompt": p}) + "\n"
                for q, c, p in zip(questions.question_id, questions.category, questions.prompt, strict=True))
    )  # fmt: skip
    for model, part in frame.groupby("model"):
        lines = [
            {"uid": q, "ans_id": "x", "model": model, "messages": [
                {"role": "user", "content": p}, {"role": "assistant", "content": {"answer": r}}]}
            for q, p, r in zip(part.question_id, part.prompt, part.response, strict=True)
        ]  # fmt: skip
        (hard / "model_answer" / f"{model}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    old = tmp_path / "arena-hard-v0.1"  # prompts only in question.jsonl; answers as choices[0].turns
    (old / "model_answer").mkdir(parents=True)
    (old / "question.jsonl").write_text(
        "".join(json.dumps({"question_id": q, "category": c, "turns": [{"content": p}]}) + "\n"
                for q, c, p in zip(questions.question_id, questions.category, questions.prompt, strict=True))
    )  # fmt: skip
    for model, part in frame.groupby("model"):
        lines = [{"question_id": q, "model_id": model, "choices": [{"index": 0, "turns": [{"content": r}]}]}
                 for q, r in zip(part.question_id, part.response, strict=True)]  # fmt: skip
        (old / "model_answer" / f"{model}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for path, layout in ((alpaca, "alpaca-eval"), (hard, "arena-hard"), (old / "model_answer", "arena-hard")):
        read = load_answers(path, layout)
        assert read.models == table.models
        by_prompt = dict(zip(read.prompts, read.responses, strict=True))
        assert [by_prompt[p] for p in table.prompts] == table.responses
        assert sorted(read.groups["category"]) == sorted(table.groups["category"])


def _bad(tmp_path: Path, frame: pd.DataFrame, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_parquet(path, index=False)
    return path


BAD = {
    "duplicate answer": (
        lambda f: pd.concat([f, f.iloc[[4]]]), [], "bad.csv: row 19: model cerebras-gpt-6.7B answers question pandalm-001 a second time (first at"
    ),
    "missing answer": (lambda f: f.drop(index=[5]), [], "model llama-7b has no answer to question pandalm-001;"),
    "one model": (lambda f: f[f.model == "llama-7b"].assign(model="x"), [], "answers of 1 model (x); ranking needs two"),
    "unknown baseline": (lambda f: f, ["--baseline", "gpt-5"], "--baseline gpt-5: no such model in"),
    "empty response": (lambda f: f.assign(response=f.response.where(f.index != 7)), [], "bad.csv: row 8: response is empty"),
    "two prompts": (lambda f: f.assign(prompt=f.prompt.where(f.index != 1, "other")), [], "question pandalm-000 has another prompt"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_answers_are_one_line_and_write_nothing(case, answers, tmp_path):
    change, extra, message = BAD[case]
    path = _bad(tmp_path, change(pd.read_parquet(answers)).reset_index(drop=True))
    result = rank(
        path,
        "--model",
        tmp_path / "no-model",
        "--out",
        tmp_path / "out",
        "--work-dir",
        tmp_path / "w",
        *extra,
    )
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"model_a": ["a"], "model_b": ["b"]}), "needs model_a, model_b and p_a (the judge's judgements) or winner"),
        (pd.DataFrame({"model_a": ["a", "b"], "model_b": ["b", "a"], "p_a": [0.3, 1.4]}), "row 2: p_a is 1.4, expected a probability"),
        (pd.DataFrame({"model_a": ["a", "b"], "model_b": ["b", "b"], "winner": ["tie", "model_a"]}), "row 2: model_a and model_b are both b"),
        (pd.DataFrame({"model_a": ["a", "b"], "model_b": ["b", "a"], "winner": ["tie", "A"]}), "row 2: winner is 'A', expected one of"),
        (pd.DataFrame({"model_a": ["a", "b"], "model_b": ["b", "a"], "winner": ["model_a", "model_b"]}), "no finite Bradley-Terry scores: a never lost"),
    ],
)  # fmt: skip
def test_bad_judgements_are_one_line_and_write_nothing(frame, message, tmp_path):
    path = _bad(tmp_path, frame, "votes.parquet")
    result = rank("--judgements", path, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()
