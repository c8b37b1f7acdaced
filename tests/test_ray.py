"""`predict --ray` on a real local Ray cluster (2 CPUs, loopback, no dashboard), hf engine, tiny model."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ARENA_SAMPLE, run_cli
from wsdm_serve.data import load_arena_rows
from wsdm_serve.engines.settings import EngineSettings
from wsdm_serve.errors import WsdmError
from wsdm_serve.jobs.local import run_local_job
from wsdm_serve.jobs.output import write_shard_folder
from wsdm_serve.jobs.ray_job import run_ray_job
from wsdm_serve.judge import run_predict
from wsdm_serve.predict import write_predictions
from wsdm_serve.settings import JudgeSettings
from wsdm_serve.truncation import TruncationConfig

ray = pytest.importorskip("ray")

BUDGET = 300
SPLITS = ((0, 7), (7, 12), (12, 20))


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=2, num_gpus=0, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
        object_store_memory=256 * 1024**2,
    )  # fmt: skip
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three Parquet shards of real rows; the last in row groups of 2, read in part by each unit."""
    folder = tmp_path_factory.mktemp("shards")
    table = pd.read_parquet(ARENA_SAMPLE)
    for number, (start, stop) in enumerate(SPLITS):
        table.iloc[start:stop].to_parquet(folder / f"part-{number}.parquet", row_group_size=2)
    (folder / "_SUCCESS").write_text("")  # what Spark leaves next to its shards
    return folder


def config_for(model, tta: str) -> JudgeSettings:
    return JudgeSettings(
        model=model, tta=tta, progress=False, truncation=TruncationConfig(token_budget=BUDGET),
        engine=EngineSettings(name="hf", device="cpu"),
    )  # fmt: skip


def run(source, config, **kwargs):
    options = {"address": None, "work_dir": None, "restart": False, "chunk_rows": 1024,
               "started_at": None}  # fmt: skip
    options.update(kwargs)
    options["started_at"] = options["started_at"] or time.time()
    return run_ray_job(str(source), config, quiet=True, **options)


@pytest.fixture(scope="module")
def distributed(cluster, shards, tiny_model_dir):
    return run(shards, config_for(tiny_model_dir, "all"))


def test_probabilities_equal_single_process_predict_exactly(distributed, shards, tiny_model_dir):
    listed, ids, result = distributed
    assert [s.uri.rsplit("/", 1)[-1] for s in listed] == [
        "part-0.parquet",
        "part-1.parquet",
        "part-2.parquet",
    ]
    config = config_for(tiny_model_dir, "all")
    at = 0
    for shard, shard_ids in zip(listed, ids, strict=True):
        single = run_predict(load_arena_rows(shard.uri), config)
        assert shard_ids == single.ids
        part = slice(at, at + len(shard_ids))
        np.testing.assert_array_equal(result.probs[part], single.probs)
        np.testing.assert_array_equal(result.forward[part], single.forward)
        at += len(shard_ids)
    assert len(result.rescored) == at == 20


def test_killed_actor_is_retried_and_output_is_complete(
    distributed, shards, tiny_model_dir, tmp_path, monkeypatch
):
    """The scoring actor ends its own process at its second unit; Ray restarts it and retries. The
    finished units went to the work folder as they arrived, one file each."""
    marker = tmp_path / "killed"
    monkeypatch.setenv("WSDM_JOBS_FAULT", f"exit-at-batch=2:{marker}")
    work = tmp_path / "work"
    listed, ids, result = run(
        f"file://{shards}/part-*.parquet", config_for(tiny_model_dir, "all"), work_dir=work
    )
    assert marker.exists()  # the actor really died
    assert ids == distributed.ids
    np.testing.assert_array_equal(result.probs, distributed.result.probs)
    assert sorted(p.name for p in (work / "forward").iterdir()) == [
        f"unit-00000{i}.parquet" for i in range(3)
    ]
    out = tmp_path / "scored"
    write_shard_folder(result, listed, ids, out)
    assert sorted(p.name for p in out.iterdir()) == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    source = pd.read_parquet(ARENA_SAMPLE)
    for number, (start, stop) in enumerate(SPLITS):
        written = pd.read_parquet(out / f"part-{number}.parquet")
        assert written.columns.tolist() == ["id", "winner", "p_a", "p_b"]
        assert written["id"].tolist() == source["id"].iloc[start:stop].tolist()
        assert (written["winner"] == np.where(written.p_a > written.p_b, "model_a", "model_b")).all()


def test_cli_joins_the_cluster_and_matches_a_local_work_dir_run(cluster, tiny_model_dir, tmp_path):
    """A single file in units of 6 rows: the same units as `predict --work-dir`, bit for bit; under
    `--tta budget` (ample), every row is re-scored in the second, TTA phase on the cluster too."""
    table = tmp_path / "table.parquet"
    pd.read_parquet(ARENA_SAMPLE).head(20).to_parquet(table)
    out = tmp_path / "ray.csv"
    distributed = run_cli("wsdm-serve", "-q", "predict", table, "--model", tiny_model_dir, "--out", out,
                          "--probs", tmp_path / "ray.parquet", "--ray", "--ray-address", cluster,
                          "--chunk-rows", "6", "--tta", "budget", "--time-budget", "600", "--token-budget",
                          str(BUDGET))  # fmt: skip
    assert distributed.returncode == 0, distributed.stderr
    assert "predict: 20 rows" in distributed.stderr and "20 rows re-scored by TTA" in distributed.stderr
    config = replace(config_for(tiny_model_dir, "budget"), time_budget_minutes=600)
    local = run_local_job(load_arena_rows(table), config, tmp_path / "work", inputs={}, chunk_rows=6)
    write_predictions(local, tmp_path / "one.csv", tmp_path / "one.parquet")
    assert out.read_bytes() == (tmp_path / "one.csv").read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "ray.parquet"), pd.read_parquet(tmp_path / "one.parquet")
    )


def _bad(folder, name, frame):
    folder.mkdir(exist_ok=True)
    frame.to_parquet(folder / name)


def test_bad_shards_are_one_line_naming_shard_and_row(cluster, tiny_model_dir, tmp_path):
    table = pd.read_parquet(ARENA_SAMPLE)
    config = config_for(tiny_model_dir, "none")
    dup = tmp_path / "dup"
    _bad(dup, "a.parquet", table.iloc[:5])
    _bad(dup, "b.parquet", table.iloc[3:8])
    with pytest.raises(WsdmError, match=r"b\.parquet: row 1: id .* is also in .*a\.parquet \(row 4\)"):
        run(dup, config)
    missing = tmp_path / "missing"
    _bad(missing, "a.parquet", table.iloc[:5])
    _bad(missing, "b.parquet", table.iloc[5:8].drop(columns=["response_b"]))
    with pytest.raises(WsdmError, match=r"b\.parquet: missing column response_b"):
        run(missing, config)
    broken = tmp_path / "broken"
    _bad(broken, "a.parquet", table.iloc[:5])
    (broken / "b.parquet").write_bytes((broken / "a.parquet").read_bytes()[:300])
    out = tmp_path / "out"
    result = run_cli("wsdm-serve", "predict", broken, "--model", tiny_model_dir, "--out", out, "--ray",
                     "--ray-address", cluster, "--tta", "none")  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "b.parquet: unreadable or truncated parquet file" in lines[0]
    assert not out.exists()
    with pytest.raises(WsdmError, match="no file matches"):
        run(tmp_path / "nothing-*.parquet", config)


def test_rank_on_the_cluster_judges_as_rank_here(cluster, tiny_model_dir, tmp_path):
    """`rank --ray` sends its pairs through predict's Ray job: the same judgements as in this process."""
    import importlib.util

    from click.testing import CliRunner

    from tests.conftest import ASSETS
    from wsdm_serve.cli import main

    spec = importlib.util.spec_from_file_location(
        "pandalm_answers", ASSETS.parents[1] / "tools" / "pandalm_answers.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    answers = tmp_path / "answers.parquet"
    tool.pandalm_answers(questions=4, models=3).to_parquet(answers)
    common = ["-q", "rank", str(answers), "--model", str(tiny_model_dir), "--baseline", "llama-7b",
              "--bootstrap", "10", "--token-budget", str(BUDGET), "--chunk-rows", "5"]  # fmt: skip
    here = CliRunner().invoke(
        main, [*common, "--out", str(tmp_path / "here"), "--engine", "hf", "--device", "cpu"]
    )
    assert here.exit_code == 0, here.output
    there = CliRunner().invoke(
        main, [*common, "--out", str(tmp_path / "ray"), "--ray", "--work-dir", str(tmp_path / "work")]
    )
    assert there.exit_code == 0, there.output
    local, distributed = (pd.read_parquet(tmp_path / name / "judgements.parquet") for name in ("here", "ray"))
    pd.testing.assert_frame_equal(local, distributed, check_exact=False, atol=1e-6)
    assert not list((tmp_path / "work").glob("judge-*/ray-*"))  # the job's scratch is gone once saved
