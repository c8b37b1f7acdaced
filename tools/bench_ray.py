"""`predict --ray` against single-process `predict` on one GPU: same rows, same run, vllm engine.

The model is Qwen2.5-14B-shaped with random weights (vLLM builds them, ``load_format="dummy"``);
the rows are ``tools/bench.py``'s workload (real rows lengthened to a realistic length mix), split
into Parquet shards for the Ray run. Each measurement runs in its own process, so GPU memory is
returned between them:

  single   ``Judge.predict`` + the submission CSV, on a ``VLLMEngine`` started beforehand (as
           tools/bench.py's "predict"); engine start-up reported separately
  ray      ``run_ray_job`` on a local Ray cluster over the shards: CPU tasks prompt, one engine
           actor scores unit by unit. Its scoring time is the span from the first unit's start to
           the last unit's end inside the actor (the engine's start-up is outside it, as above);
           the end-to-end time (Ray start, actor and engine start, everything) is reported too

    PYTHONPATH=$PWD python tools/bench_ray.py --out bench_ray.json      # ~5 min on one H200
    PYTHONPATH=$PWD python tools/bench_ray.py --quick --out quick.json   # 2-layer model, smoke test

Target: ray scoring throughput >= 0.9x single-process predict. Needs vllm and the ray extra.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import bench  # noqa: E402  (the workload and model folder helpers)

TARGET = 0.9


def engine_settings(args):
    from wsdm_serve.engines.settings import EngineSettings

    if args.engine == "hf":  # a CPU smoke test of this script: a tiny model with real weights
        return EngineSettings(name="hf", device="cpu")
    return EngineSettings(
        name="vllm", dtype="bfloat16", load_format="dummy", gpu_memory_utilization=args.gpu_memory_utilization
    )


def model_dir(args, workdir: Path) -> Path:
    return workdir / ("tiny-hf" if args.engine == "hf" else "vllm-bf16")


def predict_config(args, model_dir: Path):
    from wsdm_serve.settings import JudgeSettings

    return JudgeSettings(model=model_dir, tta="none", engine=engine_settings(args), progress=False)


def worker_single(args, workdir: Path) -> dict:
    import pandas as pd

    from wsdm_serve.data import load_arena_rows
    from wsdm_serve.judge import Judge
    from wsdm_serve.predict import write_predictions

    _, token_ids = bench.load_workload(workdir)
    # Read as the Ray path reads its shards (checked and normalised), so both score the same prompts.
    rows = load_arena_rows(workdir / "rows.parquet")
    folder = model_dir(args, workdir)
    config = predict_config(args, folder)
    judge = Judge(config)
    started = time.perf_counter()
    # Sized as the Ray actors size theirs: for the longest prompt truncation lets through.
    engine = judge.start()
    startup = time.perf_counter() - started
    engine.score([token_ids[i] for i in range(0, len(token_ids), max(1, len(token_ids) // 16))])  # warm-up
    if args.engine == "vllm":
        engine.scorer.reset_prefix_cache()
    started = time.perf_counter()
    result = judge.predict(rows)
    write_predictions(result, workdir / "single.csv")
    seconds = time.perf_counter() - started
    pd.DataFrame({"id": result.ids, "p_a": result.probs[:, 0]}).to_parquet(workdir / "single.parquet")
    engine.close()
    return {
        "startup_s": round(startup, 1),
        "predict_s": round(seconds, 3),
        "tokens": result.n_tokens,
        "engine": engine.describe(),
    }


def worker_ray(args, workdir: Path) -> dict:
    import pandas as pd

    from wsdm_serve.jobs import ray_job
    from wsdm_serve.jobs.output import write_shard_folder

    started = time.perf_counter()
    ray_job.init_ray(None, quiet=not args.verbose)  # a local cluster, as `predict --ray` starts it
    ray_up = time.perf_counter() - started
    job = ray_job.run_ray_job(
        str(workdir / "shards"), predict_config(args, model_dir(args, workdir)), address=None, work_dir=None,
        restart=False, chunk_rows=args.chunk_rows, started_at=time.time(),
        quiet=not args.verbose,
    )  # fmt: skip
    shards, ids, result = job
    spans = job.spans  # the actor's clock (one node): start and end of every unit
    write_shard_folder(result, shards, ids, workdir / "ray-out")
    total = time.perf_counter() - started
    pd.DataFrame({"id": result.ids, "p_a": result.probs[:, 0]}).to_parquet(workdir / "ray.parquet")
    first, last = min(s for s, _ in spans), max(f for _, f in spans)
    return {
        "ray_init_s": round(ray_up, 1),
        "end_to_end_s": round(total, 1),
        "scoring_span_s": round(last - first, 3),
        "units": len(spans),
        "tokens": result.n_tokens,
        "chunk_rows": args.chunk_rows,
        "unit_seconds": [round(f - s, 3) for s, f in sorted(spans)],
        "gaps_s": [round(b[0] - a[1], 3) for a, b in zip(sorted(spans), sorted(spans)[1:], strict=False)],
        "engine": result.engine,
    }


def worker_workdir(args, workdir: Path) -> dict:
    """`predict --work-dir` in one process (engine start-up included: it starts with the first unit)."""
    import pandas as pd

    from wsdm_serve.data import load_arena_rows
    from wsdm_serve.jobs.local import run_local_job

    rows = load_arena_rows(workdir / "rows.parquet")
    config = predict_config(args, model_dir(args, workdir))
    started = time.perf_counter()
    result = run_local_job(
        rows, config, workdir / "work", inputs={}, restart=True,
        chunk_rows=args.chunk_rows,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    pd.DataFrame({"id": result.ids, "p_a": result.probs[:, 0]}).to_parquet(workdir / "workdir.parquet")
    return {"seconds_with_startup": round(seconds, 1), "tokens": result.n_tokens, "engine": result.engine}


def run_worker(name: str, args, workdir: Path) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        *sys.argv[1:],
        "--worker",
        name,
        "--workdir",
        str(workdir),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    print(f"=== {name}", flush=True)
    started = time.time()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"=== {name}: killed after {args.timeout} s", flush=True)
        return {"measure": name, "failed": "timeout"}
    lines = (done.stdout + done.stderr).splitlines()
    results = [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]
    print(f"=== {name}: exit {done.returncode} after {time.time() - started:.0f} s", flush=True)
    if done.returncode != 0 or not results:
        print("\n".join(lines[-40:]), flush=True)
        return {"measure": name, "failed": f"exit {done.returncode}"}
    return results[0]


def prepare(args, workdir: Path) -> dict:
    """bench.py's workload, its model folder, and the rows again as Parquet shards."""
    import pandas as pd

    bench_args = argparse.Namespace(
        rows=args.rows, seed=args.seed, median=args.median, sigma=args.sigma, budget_share=args.budget_share,
        quick=args.quick,
    )  # fmt: skip
    config = bench.TINY if args.quick else bench.QWEN25_14B
    workload = bench.prepare(workdir, bench_args, config)  # writes the model folder vllm-bf16/
    if args.engine == "hf":
        from wsdm_serve.tiny import build_tiny_model

        build_tiny_model(workdir / "tiny-hf", bench.TOKENIZER_DIR, init_std=0.5)
    table = pd.read_parquet(workdir / "rows.parquet")
    (workdir / "shards").mkdir(exist_ok=True)
    bounds = [round(k * len(table) / args.shards) for k in range(args.shards + 1)]
    for k in range(args.shards):
        table.iloc[bounds[k] : bounds[k + 1]].to_parquet(workdir / "shards" / f"part-{k:03d}.parquet")
    return workload


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--chunk-rows", type=int, default=128, help="rows per unit (one actor call)")
    parser.add_argument("--median", type=float, default=1350)
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--budget-share", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--timeout", type=int, default=420, help="seconds before a measurement is killed")
    parser.add_argument("--quick", action="store_true", help="2-layer model, 48 rows: a smoke test")
    parser.add_argument(
        "--engine",
        choices=("vllm", "hf"),
        default="vllm",
        help="hf: a CPU smoke test of this script (tiny model)",
    )
    parser.add_argument("--verbose", action="store_true", help="let Ray forward its workers' logs")
    parser.add_argument(
        "--with-work-dir",
        action="store_true",
        help="also run `predict --work-dir` in one process (+~1.5 min)",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.chunk_rows = min(args.rows, 48), min(args.chunk_rows, 16)
    if args.worker:
        run = {"single": worker_single, "ray": worker_ray, "workdir": worker_workdir}[args.worker]
        print("RESULT " + json.dumps({"measure": args.worker, **run(args, Path(args.workdir))}), flush=True)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wsdm-bench-ray-"))
    workload = prepare(args, workdir)
    single = run_worker("single", args, workdir)
    distributed = run_worker("ray", args, workdir)
    report = {"workload": workload, "single": single, "ray": distributed, "args": vars(args)}
    if args.with_work_dir:
        report["workdir"] = run_worker("workdir", args, workdir)
        if "failed" not in report["workdir"] and "failed" not in single:
            import numpy as np
            import pandas as pd

            a, b = (pd.read_parquet(workdir / f"{n}.parquet") for n in ("single", "workdir"))
            report["workdir"]["max_abs_dp_vs_single"] = float(np.abs(a["p_a"] - b["p_a"]).max())
    if "failed" not in single and "failed" not in distributed:
        report.update(compare(workload, single, distributed, workdir))
    print(json.dumps({k: v for k, v in report.items() if k != "args"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"results -> {args.out}")


def compare(workload: dict, single: dict, distributed: dict, workdir: Path) -> dict:
    import numpy as np
    import pandas as pd

    a, b = pd.read_parquet(workdir / "single.parquet"), pd.read_parquet(workdir / "ray.parquet")
    same_order = a["id"].tolist() == b["id"].tolist()
    single_rate = single["tokens"] / single["predict_s"]
    ray_rate = distributed["tokens"] / distributed["scoring_span_s"]
    ratio = ray_rate / single_rate
    end_to_end = (single["startup_s"] + single["predict_s"]) / distributed["end_to_end_s"]
    return {
        "single_tokens_per_s": round(single_rate, 1),
        "ray_tokens_per_s": round(ray_rate, 1),
        "ray_vs_single": round(ratio, 3),
        "ray_vs_single_end_to_end": round(end_to_end, 3),
        "target": f"ray >= {TARGET}x single: {'met' if ratio >= TARGET else 'NOT met'}",
        "ids_in_order": same_order,
        "max_abs_dp": float(np.abs(a["p_a"].to_numpy() - b["p_a"].to_numpy()).max()) if same_order else None,
        "same_winner": float(((a["p_a"] > 0.5) == (b["p_a"] > 0.5)).mean()) if same_order else None,
    }


if __name__ == "__main__":
    main()
