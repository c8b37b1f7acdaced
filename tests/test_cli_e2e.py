"""`wsdm-serve predict` and `render` end to end through the installed console scripts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ARENA_SAMPLE, run_cli
from tests.test_prompt import expected_prompt
from wsdm_serve.engines.hf import HFEngine
from wsdm_serve.engines.settings import EngineSettings
from wsdm_serve.preprocess import tokenize_prompts
from wsdm_serve.textnorm import list_or_text
from wsdm_serve.tta import softmax2


@pytest.fixture(scope="module")
def rendered(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("render") / "prompts.parquet"
    result = run_cli("wsdm-serve", "render", ARENA_SAMPLE, "--model", tiny_model_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "render: 32 rows" in result.stderr
    return pd.read_parquet(out)


def test_render_writes_the_contract_for_each_row(rendered, tokenizer):
    source = pd.read_parquet(ARENA_SAMPLE)
    assert rendered.columns.tolist() == ["id", "text", "text_swapped", "n_tokens"]
    assert rendered["id"].tolist() == source["id"].tolist()
    checked = 0
    for (_, row), (_, src) in zip(rendered.iterrows(), source.iterrows(), strict=True):
        a, b = list_or_text(src.response_a), list_or_text(src.response_b)
        short = len(src.prompt.split(" ")) <= 256 and max(len(a.split(" ")), len(b.split(" "))) <= 4200
        if (
            short and len(tokenizer(src.prompt + a + b)["input_ids"]) < 9000
        ):  # untouched rows: the full contract
            assert row.text == expected_prompt(src.prompt, a, b)
            assert row.text_swapped == expected_prompt(src.prompt, b, a)
            checked += 1
        assert row.n_tokens == len(tokenizer(row.text, add_special_tokens=False)["input_ids"])
    assert checked >= 20


def test_render_csv_and_budget_option(tiny_model_dir, tmp_path, tokenizer):
    out = tmp_path / "p.csv"
    result = run_cli(
        "wsdm-serve",
        "-q",
        "render",
        ARENA_SAMPLE,
        "--model",
        tiny_model_dir,
        "--out",
        out,
        "--token-budget",
        "300",
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out, keep_default_na=False)
    template_tokens = len(tokenizer(expected_prompt("", "", ""), add_special_tokens=False)["input_ids"])
    assert frame.n_tokens.max() <= template_tokens + 300 + 6  # budget + template (+ boundary merges)


def test_predict_matches_direct_scoring_of_rendered_prompts(rendered, tiny_model_dir, tmp_path, tokenizer):
    out, probs_path = tmp_path / "sub.csv", tmp_path / "probs.parquet"
    result = run_cli(
        "wsdm-serve", "predict", ARENA_SAMPLE, "--model", tiny_model_dir, "--out", out,
        "--probs", probs_path, "--tta", "none", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "preprocess" in result.stderr and "score" in result.stderr and "tok/s" in result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("predict: 32 rows,") and "0 rows re-scored by TTA" in summary
    submission = pd.read_csv(out)
    probs = pd.read_parquet(probs_path)
    assert submission.columns.tolist() == ["id", "winner"]
    assert submission["id"].tolist() == pd.read_parquet(ARENA_SAMPLE)["id"].tolist()
    engine = HFEngine(tiny_model_dir, (32, 33), EngineSettings(name="hf", device="cpu"))
    direct = softmax2(engine.score(tokenize_prompts(tokenizer, rendered.text.tolist())))
    np.testing.assert_allclose(probs[["p_a", "p_b"]].to_numpy(), direct, atol=1e-5)
    expected = np.where(direct[:, 0] > direct[:, 1], "model_a", "model_b")
    assert submission["winner"].tolist() == expected.tolist()
    assert set(submission["winner"]) == {"model_a", "model_b"}


def test_tta_all_averages_forward_and_swapped(rendered, tiny_model_dir, tmp_path, tokenizer):
    probs_path = tmp_path / "probs.parquet"
    result = run_cli(
        "wsdm-serve", "-q", "predict", ARENA_SAMPLE, "--model", tiny_model_dir, "--out", tmp_path / "s.csv",
        "--probs", probs_path, "--tta", "all",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "32 rows re-scored by TTA" in result.stderr
    engine = HFEngine(tiny_model_dir, (32, 33), EngineSettings(name="hf", device="cpu"))
    forward = softmax2(engine.score(tokenize_prompts(tokenizer, rendered.text.tolist())))
    swapped = softmax2(engine.score(tokenize_prompts(tokenizer, rendered.text_swapped.tolist())))
    np.testing.assert_allclose(
        pd.read_parquet(probs_path)[["p_a", "p_b"]].to_numpy(), (forward + swapped[:, ::-1]) / 2, atol=1e-5
    )


def test_csv_and_jsonl_inputs_give_the_same_submission(tiny_model_dir, tmp_path):
    frame = pd.read_parquet(ARENA_SAMPLE).head(6)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    frame.assign(extra="kept and ignored").to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict(orient="records")))
    outputs = []
    for name in ("t.parquet", "t.csv", "t.jsonl"):
        out = tmp_path / f"{name}.sub.csv"
        result = run_cli(
            "wsdm-serve",
            "-q",
            "predict",
            tmp_path / name,
            "--model",
            tiny_model_dir,
            "--out",
            out,
            "--tta",
            "none",
        )
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] == outputs[2]


def test_null_text_is_empty_and_counted(tiny_model_dir, tmp_path):
    frame = pd.read_parquet(ARENA_SAMPLE).head(3)
    frame.loc[0, "response_a"] = None
    frame.loc[2, "prompt"] = None
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    result = run_cli(
        "wsdm-serve",
        "predict",
        tmp_path / "t.parquet",
        "--model",
        tiny_model_dir,
        "--out",
        tmp_path / "s.csv",
    )
    assert result.returncode == 0, result.stderr
    assert "2 null text cell(s) were read as empty strings" in result.stderr


def test_failed_run_keeps_the_existing_output(tiny_model_dir, tmp_path):
    out = tmp_path / "sub.csv"
    out.write_text("id,winner\nold,model_a\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    result = run_cli("wsdm-serve", "predict", ARENA_SAMPLE, "--model", broken, "--out", out)
    assert result.returncode == 2
    assert out.read_text() == "id,winner\nold,model_a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "sub.csv"]  # no temporary files left


def test_help_documents_every_option():
    result = run_cli("wsdm-serve", "predict", "--help")
    for option in (
        "--model",
        "--out",
        "--probs",
        "--tta",
        "--time-budget",
        "--text-normalization",
        "--engine",
    ):
        assert option in result.stdout
