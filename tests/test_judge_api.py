"""The in-process door: ``Judge.from_pretrained(model, **settings).predict(pairs)``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ARENA_SAMPLE, run_cli
from wsdm_serve import Judge, JudgeSettings
from wsdm_serve.pairs import PairError
from wsdm_serve.settings import SettingsError, settings_from_options

ROWS = 12
BUDGET = 500


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.read_parquet(ARENA_SAMPLE).head(ROWS)


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    with Judge.from_pretrained(
        tiny_model_dir, engine="hf", token_budget=BUDGET, tta="all", progress=False
    ) as judge:
        yield judge


@pytest.fixture(scope="module")
def cli_probs(tiny_model_dir, frame, tmp_path_factory) -> pd.DataFrame:
    """What `wsdm-serve predict --probs` writes for the same rows and options."""
    folder = tmp_path_factory.mktemp("cli")
    table = folder / "rows.parquet"
    frame.to_parquet(table)
    result = run_cli(
        "wsdm-serve", "-q", "predict", table, "--model", tiny_model_dir, "--engine", "hf", "--tta", "all",
        "--token-budget", str(BUDGET), "--out", folder / "sub.csv", "--probs", folder / "probs.parquet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return pd.read_parquet(folder / "probs.parquet")


def test_dicts_tuples_and_a_dataframe_give_what_predict_writes(judge, frame, cli_probs):
    dicts = frame[["id", "prompt", "response_a", "response_b"]].to_dict("records")
    tuples = list(frame[["prompt", "response_a", "response_b"]].itertuples(index=False, name=None))
    expected = cli_probs[["p_a", "p_b"]].to_numpy()
    for pairs in (dicts, tuples, frame, frame.drop(columns=["id"])):
        result = judge.predict(pairs)
        np.testing.assert_allclose(result.probs, expected, atol=1e-6)
    assert judge.predict(dicts).ids == frame["id"].tolist()
    assert judge.predict(tuples).ids == list(range(ROWS))  # no id: numbered by position


def test_both_orders_are_reported_per_pair_and_tta_can_change_per_call(judge, frame):
    both = judge.predict(frame)
    np.testing.assert_allclose((both.p_a_forward + both.p_a_swapped) / 2, both.probs[:, 0], atol=1e-12)
    once = judge.predict(frame, tta="none")
    np.testing.assert_allclose(once.probs, both.forward, atol=1e-6)
    assert np.isnan(once.p_a_swapped).all() and len(once.rescored) == 0
    with pytest.raises(ValueError, match="tta='twice'"):
        judge.predict(frame, tta="twice")


def test_settings_are_one_object_checked_by_name(tiny_model_dir):
    settings = settings_from_options(
        tiny_model_dir, engine="hf", device="cpu", token_budget=300, response_word_cap=50, precision="checkpoint",
        tta="none", text_normalization="none", trust_remote_code=False, gpus=[0, 1],
    )  # fmt: skip
    assert isinstance(settings, JudgeSettings)
    assert (settings.engine.name, settings.engine.device, settings.engine.gpus) == ("hf", "cpu", "0,1")
    assert (settings.truncation.token_budget, settings.truncation.response_word_cap) == (300, 50)
    assert settings.truncation.query_word_cap == 256  # the reference's, untouched
    cases = {
        "tokn_budget": "unknown setting tokn_budget",
        "token_budget": "setting token_budget='500': must be an integer",
        "tta": "setting tta='sometimes': must be one of none, all, budget",
        "gpu_memory_utilization": "setting gpu_memory_utilization=1.5: must be in (0, 1]",
        "enforce_eager": "setting enforce_eager='yes': must be True or False or None",
    }
    values = {"tokn_budget": 1, "token_budget": "500", "tta": "sometimes", "gpu_memory_utilization": 1.5,
              "enforce_eager": "yes"}  # fmt: skip
    for name, message in cases.items():
        with pytest.raises(SettingsError, match=re.escape(message)) as caught:
            Judge.from_pretrained(tiny_model_dir, **{name: values[name]})
        assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def test_bad_pairs_are_one_error_naming_the_pair(judge):
    good = ("q", "a", "b")
    cases = [
        ([good, ("q", "a")], "pairs[1]: a tuple must be (prompt, response_a, response_b); it has 2 items"),
        ([good, {"prompt": "q", "response_a": "a"}], "pairs[1]: missing response_b"),
        ([{"prompt": "q", "response_a": 3, "response_b": "b"}], "pairs[0].response_a: must be a string, got int"),
        ([good, 7], "pairs[1]: expected a mapping"),
        ("just a string", "pairs: expected a list of pairs"),
        ([], "pairs: no pairs to judge"),
        ([{"id": "x", "prompt": "q", "response_a": "a", "response_b": "b"}] * 2,
         "pairs: duplicate id 'x' at pairs[0] and pairs[1]"),
    ]  # fmt: skip
    for pairs, message in cases:
        with pytest.raises(PairError, match=re.escape(message)):
            judge.predict(pairs)
    with pytest.raises(ValueError, match="missing column"):
        judge.predict(pd.DataFrame({"prompt": ["q"], "response_a": ["a"]}))


def test_a_judge_can_start_its_engine_for_any_admissible_prompt_and_closes_it(tiny_model_dir):
    judge = Judge.from_pretrained(tiny_model_dir, engine="hf", token_budget=BUDGET, progress=False)
    assert judge.engine is None
    assert judge.longest_prompt > BUDGET  # the template and the slack come on top
    engine = judge.start()
    assert judge.start() is engine and engine.model is not None
    judge.close()
    assert judge.engine is None and engine.model is None
    with pytest.raises(Exception, match="no config.json"):
        Judge.from_pretrained(tiny_model_dir.parent)


def test_the_readme_judge_example_runs_as_written(tiny_model_dir, tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [
        block
        for block in re.findall(r"^```python\n(.*?)^```$", readme, flags=re.M | re.S)
        if "Judge.from_pretrained" in block and "load_arena_rows" not in block
    ]
    assert len(blocks) == 1, "README should show one example of judging pairs in process"
    shutil.copytree(tiny_model_dir, tmp_path / "model_save" / "final_model")
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    printed = [float(x) for x in re.findall(r"[0-9]\.[0-9e\-]+", result.stdout)]
    assert len(printed) == 2 and all(0 < p < 1 for p in printed)
