"""`wsdm-serve serve` on one GPU: throughput and latency of the vllm engine behind HTTP, against
offline predict on the same rows in the same run, and a check that the service answers exactly
what offline scoring answers.

Workload and model are tools/bench.py's (its helpers build them): Qwen2.5-14B-shaped random
weights (``load_format="dummy"``) and real rows lengthened to a realistic length mix, truncated at
the 10,000-token budget. The measurements run one after the other in one worker process (each
closes its engines, whose vLLM engine processes return their GPU memory; vLLM's first start-up
costs are paid once):

  parity   a small Qwen2 model with real (random, scaled) weights, float32: offline ``Judge.predict``
           with swap TTA on every row (the offline vllm engine), then the same rows through the HTTP
           service with ``"swap": "all"``; P(A), forward and swapped, must agree (the 14B dummy
           weights give P(A) = 0.5 everywhere, which would show nothing)
  offline  ``Judge.predict`` on the rows with the offline vllm engine (prompts streamed into it),
           prefix cache reset first: the reference throughput
  server   the service (uvicorn in a thread, vLLM's AsyncLLM) and HTTP clients in this process:
           single-pair latency on an idle server; then for each of 1, 8, 64 and 256 concurrent
           clients, every row once (one pair per request, prefix cache reset before each level,
           at most --level-seconds), tokens/s from the answers' usage; during the 64-client level
           a separate client measures single-pair latency under load

    PYTHONPATH=/tmp/site:$PWD python tools/bench_serve.py --out serve.json     # ~5 min on one H200
    PYTHONPATH=/tmp/site:$PWD python tools/bench_serve.py --quick --out q.json  # 2-layer model

Target: at saturation (256 clients) at least 0.9x offline predict's tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))

import bench  # noqa: E402  (tools/bench.py: workload, model folders, worker processes)

LEVELS = (1, 8, 64, 256)
TARGET_VS_OFFLINE = 0.9


# ---------------------------------------------------------------------------------- helpers
def pairs_of(rows, start: int = 0, stop: int | None = None) -> list[dict]:
    """Rows as API pairs; the texts are already normalised, so requests say ``none``."""
    stop = len(rows) if stop is None else stop
    return [
        {
            "id": str(rows.ids[i]),
            "prompt": rows.prompts[i],
            "response_a": rows.responses_a[i],
            "response_b": rows.responses_b[i],
        }
        for i in range(start, stop)
    ]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 1)


def result(record: dict) -> None:
    print("RESULT " + json.dumps(record), flush=True)


def print_targets(targets: dict[str, str], failed: list[str]) -> dict:
    """Print each target's verdict and the measurements that failed; the summary record of both."""
    print()
    for key, value in targets.items():
        print(f"{key:40s} {value}")
    if failed:
        print(f"failed measurements: {', '.join(failed)}")
    return {"targets": targets, "failed": failed}


def latency_record(state: str, latencies: list[float]) -> dict:
    """The p50/p99 record of single-request latencies taken in ``state`` (idle or under load)."""
    return {
        "measure": "latency",
        "state": state,
        "n": len(latencies),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
    }


def slice_rows(rows, start: int, stop: int):
    from wsdm_serve.data import ArenaRows

    return ArenaRows(
        ids=rows.ids[start:stop],
        prompts=rows.prompts[start:stop],
        responses_a=rows.responses_a[start:stop],
        responses_b=rows.responses_b[start:stop],
        null_text_cells=0,
    )


class Service:
    """The HTTP service on a free port, in a thread of this process, with a handle on its loop."""

    def __init__(self, model_dir: Path, engine_settings, make_engine=None) -> None:
        from wsdm_serve.server.config import ServeConfig
        from wsdm_serve.server.runner import JudgeServer, bind_socket
        from wsdm_serve.server.service import JudgeService
        from wsdm_serve.settings import JudgeSettings

        started = time.perf_counter()
        judge = JudgeSettings(model=model_dir, engine=engine_settings)
        config = ServeConfig(judge=judge, max_queued_pairs=100_000)
        self.service = JudgeService.prepare(config, make_engine)
        self.server = JudgeServer(self.service, bind_socket("127.0.0.1", 0)).start()
        self.server.wait_ready(timeout=600)
        self.startup_s = round(time.perf_counter() - started, 1)
        self.url = self.server.url

    def on_loop(self, coroutine, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coroutine, self.service.loop).result(timeout)

    def reset_prefix_cache(self) -> None:
        if hasattr(self.service.engine, "reset_prefix_cache"):  # the vllm engine; hf has no cache
            self.on_loop(self.service.engine.reset_prefix_cache())

    def batch_counts(self) -> tuple[float, float]:
        """(steps, running requests summed over steps) of the engine so far."""
        metrics = self.service.metrics.batch_sequences
        samples = {s.name: s.value for family in metrics.collect() for s in family.samples}
        return samples.get("wsdm_engine_batch_sequences_count", 0.0), samples.get(
            "wsdm_engine_batch_sequences_sum", 0.0
        )

    def stop(self) -> None:
        self.server.stop(timeout=120)


async def post(http, pairs: list[dict], swap: str = "none") -> tuple[float, dict]:
    started = time.perf_counter()
    response = await http.post("/v1/judge", json={"pairs": pairs, "swap": swap, "text_normalization": "none"})
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    return seconds, response.json()


def http_client(url: str, connections: int):
    import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, timeout=600, limits=limits)


async def run_level(
    url: str, pairs: list[dict], clients: int, seconds: float, pairs_per_request: int, probes=None
):
    """``clients`` concurrent clients take the next request from one shared list until it is done
    or ``seconds`` have passed; ``probes`` (single pairs), if given, are sent one after another
    meanwhile by one more client. Returns the level's numbers and the probe latencies."""
    requests = [pairs[i : i + pairs_per_request] for i in range(0, len(pairs), pairs_per_request)]
    latencies: list[float] = []
    probe_latencies: list[float] = []
    tokens = answered = 0
    next_index = 0
    done = asyncio.Event()
    async with http_client(url, clients + 2) as http:
        started = time.perf_counter()
        deadline = started + seconds

        async def client() -> None:
            nonlocal next_index, tokens, answered
            while next_index < len(requests) and time.perf_counter() < deadline:
                request = requests[next_index]
                next_index += 1
                latency, body = await post(http, request)
                latencies.append(latency)
                tokens += body["usage"]["tokens"]
                answered += len(body["results"])

        async def prober() -> None:
            for probe in probes or []:
                if done.is_set():
                    return
                latency, _ = await post(http, [probe])
                if not done.is_set():  # only probes that ran entirely under load count
                    probe_latencies.append(latency)

        probing = asyncio.create_task(prober()) if probes else None
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        done.set()
        if probing is not None:
            await probing
    level = {
        "clients": clients,
        "requests": len(latencies),
        "pairs": answered,
        "tokens": tokens,
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1),
        "request_p50_ms": ms(percentile(latencies, 50)),
        "request_p99_ms": ms(percentile(latencies, 99)),
        "complete": answered == len(pairs),
    }
    return level, probe_latencies


# ---------------------------------------------------------------------------------- workers
def engine_settings(args, dtype: str, **vllm_settings):
    """The engine of a measurement: vllm (the benchmark), or hf to run the tool's machinery on a CPU."""
    from wsdm_serve.engines.settings import EngineSettings

    if args.engine == "hf":
        return EngineSettings(name="hf", dtype=dtype)
    return EngineSettings(name="vllm", dtype=dtype, **vllm_settings)


def random_hf_engine(model_dir: Path, letters, dtype: str = "float32"):
    """The transformers engine on a model built from config.json with random weights (no files)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from wsdm_serve.engines.hf import HFEngine

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(model_dir), dtype=getattr(torch, dtype)
        )
    return HFEngine.from_model(model, letters)


def worker_parity(args) -> None:
    import numpy as np

    from wsdm_serve.judge import Judge
    from wsdm_serve.settings import JudgeSettings
    from wsdm_serve.tiny import build_tiny_model

    workdir = Path(args.workdir)
    rows, _ = bench.load_workload(workdir)
    rows = slice_rows(rows, 0, min(args.parity_rows, len(rows)))
    # parity.py's shape: vLLM's attention kernels need head size >= 32; init_std spreads P(A).
    model = build_tiny_model(
        workdir / "parity-model", bench.TOKENIZER_DIR, hidden_size=256, heads=4, kv_heads=2,
        intermediate_size=512, init_std=0.1,
    )  # fmt: skip
    options = engine_settings(args, "float32", gpu_memory_utilization=0.3)
    with Judge(JudgeSettings(model=model, tta="all", engine=options, progress=False)) as judge:
        offline = judge.predict(rows)
    service = Service(model, options)
    try:

        async def everything():
            pairs = pairs_of(rows)
            async with http_client(service.url, 16) as http:
                answers = await asyncio.gather(
                    *(post(http, pairs[i : i + 8], swap="all") for i in range(0, len(pairs), 8))
                )
            return [r for _, body in answers for r in body["results"]]

        results = asyncio.run(everything())
    finally:
        service.stop()
    assert [r["id"] for r in results] == [str(i) for i in rows.ids], "results out of order"
    served = np.array([[r["p_a"], r["p_a_forward"], r["p_a_swapped"]] for r in results])
    expected = np.stack([offline.probs[:, 0], offline.forward[:, 0], offline.swapped[:, 1]], axis=1)
    difference = np.abs(served - expected).max(axis=0)
    decisions = bool(((served[:, 0] > 0.5) == (expected[:, 0] > 0.5)).all())
    record = {
        "measure": "parity",
        "rows": len(rows),
        "model": f"tiny qwen2 (hidden 256, 2 layers, init_std 0.1), {args.engine} float32",
        "max_abs_dp_a": float(difference[0]),
        "max_abs_dp_a_forward": float(difference[1]),
        "max_abs_dp_a_swapped": float(difference[2]),
        "identical_decisions": decisions,
        "p_a_p5_p95": [round(float(np.percentile(expected[:, 0], q)), 3) for q in (5, 95)],
        "tolerance": args.tolerance,
        "passed": bool(difference.max() <= args.tolerance and decisions),
        "server_startup_s": service.startup_s,
    }
    print(
        f"[parity] {len(rows)} rows, max |dP(A)| {difference.max():.2e}, decisions identical: {decisions}",
        flush=True,
    )
    result(record)


def worker_offline(args, config) -> None:
    from wsdm_serve.engines.settings import EngineSettings
    from wsdm_serve.engines.vllm import VLLMEngine
    from wsdm_serve.judge import Judge
    from wsdm_serve.prompt import letter_token_ids
    from wsdm_serve.tokenizer import load_tokenizer

    workdir = Path(args.workdir)
    model_dir = workdir / "vllm-bf16"
    rows, token_ids = bench.load_workload(workdir)
    rows, token_ids = slice_rows(rows, 0, args.rows), token_ids[: args.rows]
    letters = letter_token_ids(load_tokenizer(model_dir))
    started = time.perf_counter()
    if args.engine == "hf":
        engine = random_hf_engine(model_dir, letters)
    else:
        settings = EngineSettings(
            name="vllm",
            dtype="bfloat16",
            gpu_memory_utilization=args.gpu_memory_utilization,
            load_format="dummy",
        )
        engine = VLLMEngine(model_dir, letters, max(len(ids) for ids in token_ids), settings)
    startup = time.perf_counter() - started
    print(f"[offline] engine up in {startup:.1f} s: {engine.describe()}", flush=True)
    judge = Judge(bench.predict_config(model_dir), engine)
    engine.score([token_ids[i] for i in range(0, len(token_ids), max(1, len(token_ids) // 16))])
    times, tokens = [], 0
    for _ in range(args.reps):
        if args.engine == "vllm":
            engine.scorer.reset_prefix_cache()
        seconds, predicted = bench.timed(lambda: judge.predict(rows))
        times.append(seconds)
        tokens = predicted.n_tokens
    median = statistics.median(times)
    print(f"[offline] predict: {tokens:,} tokens in {median:.2f} s", flush=True)
    result(
        {
            "measure": "offline",
            "rows": len(rows),
            "tokens": tokens,
            "times_s": [round(t, 3) for t in times],
            "tokens_per_s": round(tokens / median, 1),
            "startup_s": round(startup, 1),
            "plan": engine.describe(),
            **(bench.scheduler_facts(engine.scorer.llm) if args.engine == "vllm" else {}),
        }
    )
    engine.close()


def worker_server(args) -> None:
    workdir = Path(args.workdir)
    rows, _ = bench.load_workload(workdir)
    load = pairs_of(rows, 0, args.rows)
    probes = pairs_of(rows, args.rows, len(rows))
    model_dir = workdir / "vllm-bf16"
    options = engine_settings(
        args, "bfloat16", gpu_memory_utilization=args.gpu_memory_utilization, load_format="dummy"
    )
    make_engine = None
    if args.engine == "hf":
        from wsdm_serve.engines.asynchronous import BatchingEngine

        def make_engine(letters, longest):
            return BatchingEngine(lambda: random_hf_engine(model_dir, letters))

    service = Service(model_dir, options, make_engine)
    engine = service.service.engine
    facts = {}
    if args.engine == "vllm":
        scheduler = engine.llm.vllm_config.scheduler_config
        facts = {key: getattr(scheduler, key, None) for key in ("max_num_batched_tokens", "max_num_seqs")}
    print(f"[server] up in {service.startup_s} s: {engine.describe()} {facts}", flush=True)
    result({"measure": "server-start", "startup_s": service.startup_s, "engine": engine.describe(), **facts})
    try:
        warm = load[:: max(1, len(load) // 16)]
        asyncio.run(run_level(service.url, warm, 16, 120, 1))
        service.reset_prefix_cache()

        async def idle() -> list[float]:
            async with http_client(service.url, 2) as http:
                return [(await post(http, [probe]))[0] for probe in probes]

        latencies = asyncio.run(idle())
        record = latency_record("idle", latencies)
        print(f"[server] idle single pair: p50 {record['p50_ms']} ms, p99 {record['p99_ms']} ms", flush=True)
        result(record)
        for clients in args.levels:
            service.reset_prefix_cache()
            steps_before, running_before = service.batch_counts()
            under_load = probes if clients == args.load_clients else None
            level, probe_latencies = asyncio.run(
                run_level(service.url, load, clients, args.level_seconds, args.pairs_per_request, under_load)
            )
            steps, running = service.batch_counts()
            level["measure"] = "level"
            level["mean_running_per_step"] = round(
                (running - running_before) / max(steps - steps_before, 1), 1
            )
            print(
                f"[server] {clients} clients: {level['tokens_per_s']:,.0f} tokens/s, {level['pairs']} pairs in "
                f"{level['seconds']} s",
                flush=True,
            )
            result(level)
            if under_load is not None:
                result(latency_record(f"under load ({clients} clients)", probe_latencies))
    finally:
        service.stop()


MEASURES = ("parity", "offline", "server")


def run_worker(args, config, measures: list[str]) -> None:
    """Every measure in this one process, one after the other: each closes its engines (vLLM's run
    in processes of their own, so their GPU memory is returned), and a process pays vLLM's first
    start-up costs once (a later engine starts in a fraction of the time). A measure that fails is
    reported and the next one still runs."""
    import traceback

    workers = {"parity": lambda: worker_parity(args), "offline": lambda: worker_offline(args, config)}
    workers["server"] = lambda: worker_server(args)
    for name in measures:
        started = time.perf_counter()
        try:
            workers[name]()
        except Exception as exc:  # noqa: BLE001 - reported in the results, the next measure runs
            traceback.print_exc()
            result({"measure": name, "method": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]})
        print(f"[{name}] done in {time.perf_counter() - started:.0f} s", flush=True)


# ---------------------------------------------------------------------------------- report
def report(results: list[dict], args) -> dict:
    def first(measure: str) -> dict:
        return next((r for r in results if r.get("measure") == measure), {})

    offline = first("offline")
    base = offline.get("tokens_per_s")
    levels = [r for r in results if r.get("measure") == "level"]
    print()
    if offline:
        print(
            f"offline predict: {offline['rows']} rows, {offline['tokens']:,} tokens, {base:,.0f} tokens/s "
            f"(engine start {offline['startup_s']} s; {offline.get('plan', '')})"
        )
    header = f"{'clients':>7} {'pairs':>6} {'seconds':>8} {'tokens/s':>9} {'x offline':>9} {'req p50 ms':>10} {'req p99 ms':>10} {'run/step':>8}"
    print(header)
    print("-" * len(header))
    for level in levels:
        share = f"{level['tokens_per_s'] / base:9.3f}" if base else f"{'n/a':>9}"
        level["vs_offline"] = round(level["tokens_per_s"] / base, 3) if base else None
        print(
            f"{level['clients']:7d} {level['pairs']:6d} {level['seconds']:8.2f} {level['tokens_per_s']:9,.0f} {share} "
            f"{level['request_p50_ms']!s:>10} {level['request_p99_ms']!s:>10} {level['mean_running_per_step']:8.1f}"
        )
    for latency in (r for r in results if r.get("measure") == "latency"):
        print(
            f"single-pair latency, {latency['state']}: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms (n={latency['n']})"
        )
    parity = first("parity")
    if parity:
        print(
            f"parity ({parity['model']}, {parity['rows']} rows, swap all): max |dP(A)| {parity['max_abs_dp_a']:.2e}, "
            f"forward {parity['max_abs_dp_a_forward']:.2e}, swapped {parity['max_abs_dp_a_swapped']:.2e}; "
            f"decisions identical: {parity['identical_decisions']}; P(A) p5-p95 {parity['p_a_p5_p95']}"
        )
    failed = [r["measure"] for r in results if r.get("method") == "failed"]
    saturated = next((level for level in levels if level["clients"] == max(args.levels)), None)
    targets = {
        f"{max(args.levels)} clients >= {TARGET_VS_OFFLINE}x offline": bench._check(
            saturated and saturated.get("vs_offline"), TARGET_VS_OFFLINE
        ),
        "server answers == offline (parity)": "not measured"
        if not parity
        else ("met" if parity["passed"] else "NOT met"),
    }
    return print_targets(targets, failed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=None, help="write every result to this JSON file")
    parser.add_argument(
        "--measure", default="parity,offline,server", help="comma-separated subset of parity, offline, server"
    )
    parser.add_argument("--rows", type=int, default=256, help="rows of the load (each level sends each once)")
    parser.add_argument("--probes", type=int, default=48, help="extra rows for the single-pair latency")
    parser.add_argument("--parity-rows", type=int, default=64)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="parity: max |dP| (float32)")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent clients per level")
    parser.add_argument(
        "--load-clients", type=int, default=64, help="level during which latency under load is measured"
    )
    parser.add_argument(
        "--level-seconds", type=float, default=20.0, help="longest a level sends new requests"
    )
    parser.add_argument("--pairs-per-request", type=int, default=1)
    parser.add_argument("--reps", type=int, default=1, help="offline predict passes (median reported)")
    parser.add_argument("--median", type=float, default=1350, help="median target prompt length (tokens)")
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--budget-share", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument(
        "--engine",
        choices=("vllm", "hf"),
        default="vllm",
        help="hf: the transformers engine, to run the tool on a CPU",
    )
    parser.add_argument("--gpu", default=None, help="the GPU to use [default: the first visible]")
    parser.add_argument("--timeout", type=int, default=540, help="seconds before the measurements are killed")
    parser.add_argument("--workdir", default=None, help="folder for the workload and models [default: temp]")
    parser.add_argument("--quick", action="store_true", help="2-layer model, 48 rows: a smoke test")
    parser.add_argument("--verbose", action="store_true", help="show every line the workers print")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.levels = [int(n) for n in str(args.levels).split(",") if n.strip()]
    if args.quick:
        args.rows, args.probes, args.parity_rows, args.level_seconds = (
            min(args.rows, 48),
            min(args.probes, 8),
            min(args.parity_rows, 16),
            10.0,
        )
    config = bench.TINY if args.quick else bench.QWEN25_14B

    measures = [name.strip() for name in args.measure.split(",") if name.strip()]
    unknown = sorted(set(measures) - set(MEASURES))
    if unknown:
        raise SystemExit(f"--measure {','.join(unknown)}: choose from {', '.join(MEASURES)}")
    if args.worker:
        run_worker(args, config, measures)
        return

    started = time.time()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wsdm-bench-serve-"))
    rows, probes = args.rows, args.probes
    args.rows = rows + probes  # one workload; the rows after --rows are the latency probes
    workload = bench.prepare(workdir, args, config)
    args.rows = rows
    device = args.gpu or bench.first_gpu()
    results = bench.run_measurement("gpu", args, workdir, device, script=Path(__file__))
    summary = report(results, args)
    print(f"\ntotal {time.time() - started:.0f} s")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"workload": workload, "results": results, **summary, "args": vars(args)}, indent=1)
        )
        print(f"results -> {args.out}")


if __name__ == "__main__":
    main()
