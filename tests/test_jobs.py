"""Resumable predict and evaluate (`--work-dir`): a real subprocess SIGKILLed mid-job, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ARENA_SAMPLE, PANDALM_LMSYS, console_script, run_cli
from wsdm_serve.data import load_arena_rows
from wsdm_serve.engines.settings import EngineSettings
from wsdm_serve.errors import WsdmError
from wsdm_serve.jobs.local import run_local_job
from wsdm_serve.jobs.units import plan_units
from wsdm_serve.judge import run_predict
from wsdm_serve.settings import JudgeSettings
from wsdm_serve.truncation import TruncationConfig

BUDGET = 300
"""Short prompts keep each CPU run to a second or two; truncation itself is tested elsewhere."""
CPU = ("--device", "cpu", "--token-budget", str(BUDGET))
ROWS = 20


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "rows.parquet"
    pd.read_parquet(ARENA_SAMPLE).head(ROWS).to_parquet(path)
    return path


def config_for(model, tta="none", **kwargs):
    return JudgeSettings(
        model=model, tta=tta, progress=False, truncation=TruncationConfig(token_budget=BUDGET),
        engine=EngineSettings(name="hf", device="cpu"), **kwargs,
    )  # fmt: skip


def predict_args(table, model, out, work, *extra):
    return ("predict", table, "--model", model, "--out", out, "--probs", out.with_suffix(".parquet"),
            "--work-dir", work, "--chunk-rows", "3", "--tta", "all", *CPU, *extra)  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(table, tiny_model_dir, tmp_path_factory):
    """The job run start to finish once: what every interrupted run must reproduce."""
    root = tmp_path_factory.mktemp("whole")
    out = root / "sub.csv"
    result = run_cli("wsdm-serve", *predict_args(table, tiny_model_dir, out, root / "work"))
    assert result.returncode == 0, result.stderr
    return out


def test_units_cover_every_row_once_and_never_span_shards():
    units = plan_units([10, 3, 4], 4)
    assert [(u.shard, u.start, u.stop) for u in units] == [
        (0, 0, 4), (0, 4, 8), (0, 8, 10), (1, 0, 3), (2, 0, 4),
    ]  # fmt: skip
    assert [u.offset for u in units] == [0, 4, 8, 10, 13]


def test_sigkill_mid_job_resumes_to_an_identical_submission(table, tiny_model_dir, uninterrupted, tmp_path):
    out, work = tmp_path / "sub.csv", tmp_path / "work"
    args = predict_args(table, tiny_model_dir, out, work)
    env = {**os.environ, "WSDM_JOBS_FAULT": "hold-after-units=3"}
    process = subprocess.Popen(
        [console_script("wsdm-serve"), "-q", *map(str, args)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while len(list((work / "forward").glob("unit-*.parquet"))) < 3:
            assert process.poll() is None, "the job ended before it was killed"
            assert time.time() < deadline, "the job saved no units in time"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()  # killed before the end: no output, and no partial one
    assert len(list((work / "forward").glob("unit-*"))) == 3
    spent = json.loads((work / "state.json").read_text())["spent_seconds"]

    resumed = run_cli("wsdm-serve", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{ROWS - 9}/{ROWS - 9}" in resumed.stderr  # only the rows of the 4 missing units
    assert out.read_bytes() == uninterrupted.read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(out.with_suffix(".parquet")), pd.read_parquet(uninterrupted.with_suffix(".parquet"))
    )
    state = json.loads((work / "state.json").read_text())
    assert state["spent_seconds"] > spent and state["tta_count"] == ROWS
    assert len(list((work / "forward").glob("unit-*"))) == 7


def test_work_dir_scores_match_a_plain_run(table, tiny_model_dir, uninterrupted, tmp_path):
    """Units are batched apart, so scores agree to float rounding; with one unit, exactly."""
    plain = pd.read_parquet(uninterrupted.with_suffix(".parquet"))
    config = config_for(tiny_model_dir, "all")
    rows = load_arena_rows(table)
    reference = run_predict(rows, config)
    np.testing.assert_allclose(plain[["p_a", "p_b"]].to_numpy(), reference.probs, atol=1e-5)
    whole = run_local_job(rows, config, tmp_path / "w", inputs={}, chunk_rows=64)
    np.testing.assert_array_equal(whole.probs, reference.probs)
    np.testing.assert_array_equal(whole.forward, reference.forward)
    assert whole.n_tokens == reference.n_tokens


def test_a_changed_setting_is_refused_and_restart_starts_over(table, tiny_model_dir, tmp_path):
    out, work = tmp_path / "sub.csv", tmp_path / "work"
    args = ("predict", table, "--model", tiny_model_dir, "--out", out, "--work-dir", work,
            "--chunk-rows", "16", "--tta", "none", *CPU)  # fmt: skip
    assert run_cli("wsdm-serve", "-q", *args).returncode == 0
    first = out.read_bytes()
    changed = run_cli("wsdm-serve", "-q", *args, "--response-word-cap", "50")
    assert changed.returncode == 2
    lines = changed.stderr.strip().splitlines()
    assert len(lines) == 1 and "--restart" in lines[0] and "response_word_cap 4200 -> 50" in lines[0]
    assert out.read_bytes() == first  # nothing was written
    restarted = run_cli("wsdm-serve", "-q", *args, "--response-word-cap", "50", "--restart")
    assert restarted.returncode == 0, restarted.stderr
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["settings"]["truncation"]["response_word_cap"] == 50


def test_other_input_or_foreign_folder_is_refused(table, tiny_model_dir, tmp_path):
    config = config_for(tiny_model_dir)
    rows = load_arena_rows(table)
    work = tmp_path / "work"
    run_local_job(rows, config, work, inputs={"sha256": "a"}, chunk_rows=32)
    with pytest.raises(WsdmError, match=r"input.sha256 a -> b.*--restart"):
        run_local_job(rows, config, work, inputs={"sha256": "b"}, chunk_rows=32)
    with pytest.raises(WsdmError, match=r"kind predict -> evaluate"):
        run_local_job(rows, config, work, inputs={"sha256": "a"}, chunk_rows=32,
                      kind="evaluate")  # fmt: skip
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff")
    for restart in (False, True):
        with pytest.raises(WsdmError, match="is not a work folder"):
            run_local_job(rows, config, foreign, inputs={}, restart=restart)
    assert (foreign / "cat.jpg").exists()
    inside = run_cli("wsdm-serve", "predict", table, "--model", tiny_model_dir, "--out",
                     work / "sub.csv", "--work-dir", work, *CPU)  # fmt: skip
    assert inside.returncode == 2 and "inside --work-dir" in inside.stderr


def test_time_budget_counts_time_spent_by_earlier_attempts(table, tiny_model_dir, tmp_path):
    """An earlier attempt that spent 59 of 60 minutes leaves no time for TTA on the resume."""
    config = config_for(tiny_model_dir, "budget", time_budget_minutes=60)
    rows = load_arena_rows(table)
    work = tmp_path / "late"
    fresh = run_local_job(rows, config, work, inputs={}, chunk_rows=4)
    assert len(fresh.rescored) == ROWS  # seconds of scoring fit many times into the budget
    for folder in ("forward", "swapped"):
        for file in (work / folder).glob("unit-00000[1-3].parquet"):
            file.unlink()  # three units lost, as if the first attempt died there
    state = json.loads((work / "state.json").read_text())
    state.update(spent_seconds=59 * 60, tta_count=None)
    (work / "state.json").write_text(json.dumps(state))
    resumed = run_local_job(rows, config, work, inputs={}, chunk_rows=4)
    assert len(resumed.rescored) == 0 and resumed.seconds > 59 * 60
    np.testing.assert_array_equal(resumed.forward, fresh.forward)


def test_evaluate_resumes_from_its_work_dir(tiny_model_dir, tmp_path):
    args = ("evaluate", PANDALM_LMSYS, "--model", tiny_model_dir, "--limit", "12", "--no-plots",
            "--work-dir", tmp_path / "work", "--chunk-rows", "5", *CPU)  # fmt: skip
    first = run_cli("wsdm-serve", *args, "--json", tmp_path / "a.json")
    assert first.returncode == 0, first.stderr
    assert len(list((tmp_path / "work" / "swapped").glob("unit-*"))) == 3
    for file in (tmp_path / "work" / "forward").glob("unit-000002.parquet"):
        file.unlink()
    again = run_cli("wsdm-serve", *args, "--json", tmp_path / "b.json")
    assert again.returncode == 0, again.stderr
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert a["metrics"] == b["metrics"] and a["position_bias"] == b["position_bias"]
    other = run_cli("wsdm-serve", *args[:4], "--limit", "10", *args[6:], "--json", tmp_path / "c.json")
    assert other.returncode == 2 and "input.limit 12 -> 10" in other.stderr
    manifest = json.loads((tmp_path / "work" / "manifest.json").read_text())
    assert manifest["kind"] == "evaluate" and manifest["settings"]["tta"] == "all"
