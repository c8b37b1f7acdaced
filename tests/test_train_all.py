"""`wsdm-train all --config tiny` end to end, interrupted and resumed, then served.

The chain runs through the installed console scripts from a clone's root (the tiny preset reads the
PandaLM pairs and the tokenizer from tests/assets), with only its output folders moved into a
temporary folder. The first run is killed in the middle of the distillation; the next runs skip
what finished, resume what was interrupted and redo what changed; the folder it makes is then
checked by `wsdm-serve check-model` and used by `wsdm-serve predict` on real arena rows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ARENA_SAMPLE, console_script, run_cli

ROOT = Path(__file__).resolve().parents[1]
# One torch thread per command: the tests share two cores between two workers, and torch's
# intra-op threads then wait on each other (scoring measured several times slower on busy cores).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TEACHERS = ["tiny_small", "tiny_large"]
EARLY = ["prepare", "pretrain", "finetune", "teacher-predict"]


def outputs(root: Path) -> list[str]:
    return [
        "--set",
        f"paths.processed_dir={root / 'processed'}",
        "--set",
        f"paths.model_dir={root / 'models'}",
    ]


def wsdm_train_all(root: Path, *extra: str) -> subprocess.CompletedProcess:
    started = time.time()
    result = run_cli(
        "wsdm-train", "all", "--config", "tiny", "--quiet", *outputs(root), *extra, cwd=ROOT, env=ONE_THREAD
    )
    print(f"all {' '.join(extra)}: {time.time() - started:.1f}s, exit {result.returncode}")
    print(result.stderr[-3000:])
    return result


STAGES = [*EARLY, "distill", "merge", "quantize"]


def stage_lines(stderr: str) -> dict[str, str]:
    """The last `all: <stage>: ...` line of each stage."""
    lines = {}
    for line in stderr.splitlines():
        stage, _, message = line.removeprefix("all: ").partition(": ")
        if line.startswith("all: ") and stage in STAGES:
            lines[stage] = message
    return lines


def pipeline(root: Path) -> dict:
    return json.loads((root / "models" / "pipeline.json").read_text())["stages"]


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def kill_during_distillation(root: Path) -> int:
    """Start `all`, wait until a distillation fold has a checkpoint but no final adapter, kill it."""
    models = root / "models"
    command = [console_script("wsdm-train"), "all", "--config", "tiny", "--quiet", *outputs(root)]
    log = root / "first-run.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD}
        )
        # The loop ends as soon as a checkpoint appears; the generous limit only guards against a hang
        # on a slow or busy machine.
        deadline = time.time() + 2400
        try:
            while time.time() < deadline:
                if process.poll() is not None:
                    pytest.fail(
                        f"the first run ended (exit {process.returncode}) before it could be "
                        f"interrupted:\n{log.read_text()[-3000:]}"
                    )
                for fold in (0, 1):
                    out = models / "student" / f"fold{fold}"
                    if (out / "last" / "trainer_state.json").exists() and not (out / "final").exists():
                        process.send_signal(signal.SIGKILL)
                        process.wait()
                        return fold
                time.sleep(0.05)
            pytest.fail(f"no distillation checkpoint within the time limit:\n{log.read_text()[-3000:]}")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    raise AssertionError("unreachable")


def mtimes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_tiny_chain_interrupted_resumed_and_served(tmp_path):
    if importlib.util.find_spec("llmcompressor") is None:
        pytest.skip(
            "llm-compressor is not installed (pip install 'wsdm[quantize]'); the chain ends in quantize"
        )
    models = tmp_path / "models"

    # 1. Killed (SIGKILL: no cleanup of any kind) while distilling fold k, after a checkpoint.
    fold = kill_during_distillation(tmp_path)
    record = pipeline(tmp_path)
    assert [record[s]["status"] for s in EARLY[1:]] == ["finished"] * 3
    assert record["distill"]["status"] == "running"
    step_at_kill = json.loads(
        (models / "student" / f"fold{fold}" / "last" / "trainer_state.json").read_text()
    )
    assert step_at_kill["state"]["step"] >= 2

    # 2. The next run skips the finished stages and resumes the distillation; merge is given an
    #    output that is one of its inputs, so the run stops there with one line and exit code 2.
    adapter = models / "student" / "fold0" / "best"
    second = wsdm_train_all(tmp_path, "--set", f"merge.adapter_out={adapter}")
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"error: {adapter}: is an input of the merge; write the output elsewhere"
    )
    lines = stage_lines(second.stderr)
    assert lines["prepare"].startswith("up to date, skipped")
    for stage in EARLY[1:]:
        assert lines[stage] == "skipped (finished; settings and inputs unchanged)", stage
    assert lines["distill"].startswith("done in"), lines
    assert "resuming an interrupted run" in second.stderr
    resumed = [
        e for e in events(models / "student" / f"fold{fold}" / "metrics.jsonl") if e["event"] == "resume"
    ]
    assert resumed and resumed[0]["step"] == step_at_kill["state"]["step"], "the fold continued from last/"
    assert [e["event"] for e in events(models / "student" / f"fold{fold}" / "metrics.jsonl")].count(
        "start"
    ) == 1
    assert pipeline(tmp_path)["merge"]["status"] == "running"
    assert (adapter / "adapter_model.safetensors").exists(), "the input was not touched"

    # 3. Fixed: merge starts over (its settings changed), quantize runs, the rest is skipped.
    third = wsdm_train_all(tmp_path)
    assert third.returncode == 0, third.stderr
    lines = stage_lines(third.stderr)
    for stage in [*EARLY[1:], "distill"]:
        assert lines[stage].startswith("skipped"), stage
    assert (
        lines["merge"].startswith("done in") and "settings or inputs changed; starting over" in third.stderr
    )
    assert lines["quantize"].startswith("done in")
    final = Path(third.stdout.strip().splitlines()[-1])
    assert final == models / "final_model"
    quantization = json.loads((final / "config.json").read_text())["quantization_config"]
    (group,) = quantization["config_groups"].values()
    assert (group["weights"]["num_bits"], group["weights"]["group_size"]) == (8, 128)
    merge_info = json.loads((models / "merged" / "merge_info.json").read_text())
    assert [Path(a["path"]) for a in merge_info["adapters"]] == [
        models / "student" / f"fold{k}" / "best" for k in (0, 1)
    ]

    # 4. The folder is a model the serving side accepts.
    check = run_cli("wsdm-serve", "check-model", final, env=ONE_THREAD)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "compressed-tensors" in check.stdout
    submission = tmp_path / "submission.csv"
    predict = run_cli(
        "wsdm-serve", "predict", ARENA_SAMPLE, "--model", final, "--out", submission, "--device", "cpu",
        env=ONE_THREAD,
    )  # fmt: skip
    assert predict.returncode == 0, predict.stderr
    frame = pd.read_csv(submission, dtype={"id": str})
    rows = pd.read_parquet(ARENA_SAMPLE)
    assert list(frame.columns) == ["id", "winner"]
    assert frame["id"].tolist() == rows["id"].astype(str).tolist()
    assert set(frame["winner"]) <= {"model_a", "model_b"}

    # 5. Nothing left to do: every stage is skipped and no file changes.
    before = mtimes(models)
    fourth = wsdm_train_all(tmp_path)
    assert fourth.returncode == 0, fourth.stderr
    lines = stage_lines(fourth.stderr)
    assert f"all: finished; model folder: {final}" in fourth.stderr
    assert fourth.stdout.strip() == str(final)
    assert set(lines) == set(STAGES)
    assert all(message.startswith(("skipped", "up to date, skipped")) for message in lines.values()), lines
    assert mtimes(models) == before

    # 6. A changed quantize setting redoes only the quantization.
    fifth = wsdm_train_all(tmp_path, "--set", "quantize.calibration_samples=8")
    assert fifth.returncode == 0, fifth.stderr
    lines = stage_lines(fifth.stderr)
    assert [s for s, m in lines.items() if not m.startswith(("skipped", "up to date"))] == ["quantize"]
    assert json.loads((final / "quantize_info.json").read_text())["calibration_rows"] == 8

    # 7. The fast path: teacher predictions given as files (here, the ones this run made). The
    #    teachers are neither prepared nor trained; the student distils from the files.
    fast = tmp_path / "fast"
    given = models / "teachers"
    result = run_cli(
        "wsdm-train", "all", "--config", "tiny", "--quiet", *outputs(fast),
        "--teacher-predictions", given, "--until", "distill", cwd=ROOT, env=ONE_THREAD,
    )  # fmt: skip
    print(result.stderr[-2000:])
    assert result.returncode == 0, result.stderr
    lines = stage_lines(result.stderr)
    assert (
        lines["finetune"]
        == lines["teacher-predict"]
        == ("not needed (every teacher's predictions are given as files)")
    )
    assert "all: stopped after distill (--until)" in result.stderr
    assert not (fast / "models" / "teachers").exists()
    assert not (fast / "processed" / "teachers").exists()
    start = events(fast / "models" / "student" / "fold1" / "metrics.jsonl")[0]
    assert start["teachers"] == TEACHERS and start["dropped_rows"] == 0
    assert result.stdout == ""  # no finished model folder before quantize


def test_bad_invocations_are_one_line_errors(tmp_path):
    missing = tmp_path / "nowhere"

    def run_all():
        return run_cli(
            "wsdm-train",
            "all",
            "--config",
            "tiny",
            *outputs(tmp_path),
            "--teacher-predictions",
            missing,
            cwd=ROOT,
        )

    result = run_all()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {missing}: teacher predictions folder not found (--teacher-predictions)"
    ]
    (missing / "tiny_small" / "fold0").mkdir(parents=True)
    result = run_all()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {missing / 'tiny_small' / 'fold0' / 'predictions.parquet'}: teacher predictions of tiny_small "
        "not found (2 of 2 folds missing; expected row_key, logit_a, logit_b)"
    ]
    result = run_cli(
        "wsdm-train",
        "all",
        "--config",
        "tiny",
        *outputs(tmp_path),
        "--from",
        "quantize",
        "--until",
        "merge",
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --from quantize comes after --until merge"]
    absent = tmp_path / "no-model"
    result = run_cli(
        "wsdm-train", "all", "--config", "tiny", *outputs(tmp_path),
        "--set", "student.build_tiny=null", "--set", f"student.model={absent}", cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {absent}: model folder not found (student.model)"]
    assert not (tmp_path / "models").exists() and not (tmp_path / "processed").exists()


def test_all_refuses_to_start_without_llm_compressor(tmp_path, monkeypatch):
    """The quantize extra missing stops `all` before any work, not after hours of training."""
    from wsdm_serve.errors import WsdmError
    from wsdm_train import pipeline
    from wsdm_train.config import load_config

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llmcompressor" else real(name, *a),
    )
    config = load_config(
        "tiny", [f"paths.processed_dir={tmp_path / 'p'}", f"paths.model_dir={tmp_path / 'm'}"]
    )
    with pytest.raises(
        WsdmError, match=r"llm-compressor is not installed.*or stop before quantizing with --until merge"
    ):
        pipeline.run_pipeline(config, pipeline.PipelineOptions())
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(WsdmError, match="runs in one process"):
        pipeline.run_pipeline(config, pipeline.PipelineOptions(until="merge"))
