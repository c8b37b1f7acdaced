"""Group rewards over HTTP on one GPU: `POST /v1/rewards` with groups of 8 responses, pairs per
second against offline predict on the same pairs in the same run, and the latency of one group
when the server is idle and under load.

Workload and model are tools/bench.py's, the service and its HTTP clients tools/bench_serve.py's:
Qwen2.5-14B-shaped random weights (``load_format="dummy"``) and real rows lengthened to the
default length mix. A group is one row's prompt with the 8 responses of 4 consecutive rows (and
the next row's response A as the reference), so a pair's prompt has the length mix of bench.py's
rows. Every pair is judged in both orders, by the service and by predict (``tta="all"``).

The measurements run one after the other in one worker process:

  offline  ``Judge.predict(pairs, tta="all")`` on every pair of the load groups (the offline vllm
           engine, prefix cache reset first): the reference pairs/s
  server   the service (uvicorn in a thread, vLLM's AsyncLLM) and HTTP clients in this process:
           the latency of one group on the idle server (each probe group once, one after the
           other); then for each level of concurrent clients, every load group once (one group
           per request, prefix cache reset before each level, at most --level-seconds), pairs/s
           from the answers' usage; during the --load-clients level one more client sends the
           probe groups one at a time: the latency of one group under load

    PYTHONPATH=/tmp/site:$PWD python tools/bench_rewards.py --out rewards.json        # one GPU
    PYTHONPATH=$PWD python tools/bench_rewards.py --engine hf --quick --out q.json    # CPU smoke test

Target: at saturation (the most clients) at least 0.9x offline predict's pairs/s.
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
import bench_serve  # noqa: E402  (tools/bench_serve.py: the service in a thread, HTTP clients)
from bench_serve import latency_record, ms, percentile, result  # noqa: E402

GROUP_SIZE = 8
ROWS_PER_GROUP = GROUP_SIZE // 2 + 1  # 4 rows give 8 responses, one more the reference
LEVELS = (1, 4, 16)
TARGET_VS_OFFLINE = 0.9


# ---------------------------------------------------------------------------------- workload
def build_groups(rows, start: int, count: int) -> list[dict]:
    """``count`` groups from the rows from ``start`` on (see the module doc)."""
    groups = []
    for index in range(count):
        first = start + index * ROWS_PER_GROUP
        responses = []
        for row in range(first, first + GROUP_SIZE // 2):
            responses += [rows.responses_a[row], rows.responses_b[row]]
        reference = rows.responses_a[first + GROUP_SIZE // 2]
        groups.append({"id": f"g{start + index}", "prompt": rows.prompts[first], "responses": responses, "reference": reference})  # fmt: skip
    return groups


def pair_rows(groups: list[dict], method: str):
    """Every pair of the groups as arena rows, as the service builds them (texts as they are)."""
    from wsdm_serve.data import arena_rows_from_records
    from wsdm_serve.rewards import GroupBatch

    return arena_rows_from_records(GroupBatch.plan(groups, method).pairs, "none")


async def post_groups(http, groups: list[dict], method: str) -> tuple[float, dict]:
    started = time.perf_counter()
    body = {"groups": groups, "method": method, "text_normalization": "none"}
    response = await http.post("/v1/rewards", json=body)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    return seconds, response.json()


async def run_level(url: str, groups: list[dict], clients: int, seconds: float, method: str, probes=None):
    """``clients`` concurrent clients take the next group from one shared list until it is done or
    ``seconds`` have passed; ``probes`` (groups), if given, are sent one after another meanwhile
    by one more client. Returns the level's numbers and the probe latencies."""
    latencies: list[float] = []
    probe_latencies: list[float] = []
    pairs = tokens = answered = 0
    next_index = 0
    done = asyncio.Event()
    async with bench_serve.http_client(url, clients + 2) as http:
        started = time.perf_counter()
        deadline = started + seconds

        async def client() -> None:
            nonlocal next_index, pairs, tokens, answered
            while next_index < len(groups) and time.perf_counter() < deadline:
                group = groups[next_index]
                next_index += 1
                latency, body = await post_groups(http, [group], method)
                latencies.append(latency)
                pairs += body["usage"]["pairs"]
                tokens += body["usage"]["tokens"]
                answered += len(body["results"])

        async def prober() -> None:
            for probe in probes or []:
                if done.is_set():
                    return
                latency, _ = await post_groups(http, [probe], method)
                if not done.is_set():  # only probes that ran entirely under load count
                    probe_latencies.append(latency)

        probing = asyncio.create_task(prober()) if probes else None
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        done.set()
        if probing is not None:
            await probing
    level = {
        "measure": "level",
        "clients": clients,
        "groups": answered,
        "pairs": pairs,
        "tokens": tokens,
        "seconds": round(elapsed, 2),
        "pairs_per_s": round(pairs / elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1),
        "group_p50_ms": ms(percentile(latencies, 50)),
        "group_p99_ms": ms(percentile(latencies, 99)),
        "complete": answered == len(groups),
    }
    return level, probe_latencies


# ---------------------------------------------------------------------------------- workers
def workload(args) -> tuple[list[dict], list[dict]]:
    rows, _ = bench.load_workload(Path(args.workdir))
    load = build_groups(rows, 0, args.groups)
    probes = build_groups(rows, args.groups * ROWS_PER_GROUP, args.probes)
    return load, probes


def worker_offline(args) -> None:
    from wsdm_serve.engines.settings import EngineSettings
    from wsdm_serve.engines.vllm import VLLMEngine
    from wsdm_serve.judge import Judge
    from wsdm_serve.preprocess import longest_admissible_prompt
    from wsdm_serve.prompt import letter_token_ids
    from wsdm_serve.tokenizer import load_tokenizer

    model_dir = Path(args.workdir) / "vllm-bf16"
    load, _ = workload(args)
    rows = pair_rows(load, args.method)
    tokenizer = load_tokenizer(model_dir)
    letters = letter_token_ids(tokenizer)
    longest = longest_admissible_prompt(tokenizer, bench.predict_config(model_dir).truncation)
    started = time.perf_counter()
    if args.engine == "hf":
        engine = bench_serve.random_hf_engine(model_dir, letters)
    else:
        settings = EngineSettings(
            name="vllm",
            dtype="bfloat16",
            gpu_memory_utilization=args.gpu_memory_utilization,
            load_format="dummy",
        )
        engine = VLLMEngine(model_dir, letters, longest, settings)  # as the server sizes it
    startup = time.perf_counter() - started
    print(f"[offline] engine up in {startup:.1f} s: {engine.describe()}", flush=True)
    with Judge(bench.predict_config(model_dir), engine) as judge:
        judge.predict(bench_serve.slice_rows(rows, 0, min(16, len(rows))), tta="all")  # warm-up
        times, tokens = [], 0
        for _ in range(args.reps):
            if args.engine == "vllm":
                engine.scorer.reset_prefix_cache()
            seconds, predicted = bench.timed(lambda: judge.predict(rows, tta="all"))
            times.append(seconds)
            tokens = predicted.n_tokens
    median = statistics.median(times)
    print(f"[offline] predict: {len(rows)} pairs, {tokens:,} tokens in {median:.2f} s", flush=True)
    result(
        {
            "measure": "offline",
            "groups": len(load),
            "pairs": len(rows),
            "tokens": tokens,
            "times_s": [round(t, 3) for t in times],
            "pairs_per_s": round(len(rows) / median, 2),
            "tokens_per_s": round(tokens / median, 1),
            "startup_s": round(startup, 1),
            "plan": engine.describe(),
        }
    )
    engine.close()


def worker_server(args) -> None:
    load, probes = workload(args)
    model_dir = Path(args.workdir) / "vllm-bf16"
    options = bench_serve.engine_settings(
        args, "bfloat16", gpu_memory_utilization=args.gpu_memory_utilization, load_format="dummy"
    )
    make_engine = None
    if args.engine == "hf":
        from wsdm_serve.engines.asynchronous import BatchingEngine

        def make_engine(letters, longest):
            return BatchingEngine(lambda: bench_serve.random_hf_engine(model_dir, letters))

    service = bench_serve.Service(model_dir, options, make_engine)
    print(f"[server] up in {service.startup_s} s: {service.service.engine.describe()}", flush=True)
    result(
        {
            "measure": "server-start",
            "startup_s": service.startup_s,
            "engine": service.service.engine.describe(),
        }
    )
    try:
        asyncio.run(run_level(service.url, load[: max(1, len(load) // 4)], 4, 120, args.method))  # warm-up
        service.reset_prefix_cache()

        async def idle() -> list[float]:
            async with bench_serve.http_client(service.url, 2) as http:
                return [(await post_groups(http, [probe], args.method))[0] for probe in probes]

        latencies = asyncio.run(idle())
        record = latency_record("idle", latencies)
        print(f"[server] idle, one group: p50 {record['p50_ms']} ms, p99 {record['p99_ms']} ms", flush=True)
        result(record)
        for clients in args.levels:
            service.reset_prefix_cache()
            under_load = probes if clients == args.load_clients else None
            level, probe_latencies = asyncio.run(
                run_level(service.url, load, clients, args.level_seconds, args.method, under_load)
            )
            print(
                f"[server] {clients} clients: {level['pairs_per_s']:,.1f} pairs/s, {level['groups']} groups "
                f"in {level['seconds']} s",
                flush=True,
            )
            result(level)
            if under_load is not None:
                result(latency_record(f"under load ({clients} clients)", probe_latencies))
    finally:
        service.stop()


MEASURES = ("offline", "server")


def run_worker(args, measures: list[str]) -> None:
    """Every measure in this one process, one after the other (see tools/bench_serve.py)."""
    import traceback

    workers = {"offline": lambda: worker_offline(args), "server": lambda: worker_server(args)}
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
    offline = next((r for r in results if r.get("measure") == "offline"), {})
    base = offline.get("pairs_per_s")
    levels = [r for r in results if r.get("measure") == "level"]
    print()
    if offline:
        print(
            f"offline predict, both orders: {offline['groups']} groups of {GROUP_SIZE} ({args.method}), "
            f"{offline['pairs']} pairs, {offline['tokens']:,} tokens, {base:,.2f} pairs/s "
            f"(engine start {offline['startup_s']} s; {offline.get('plan', '')})"
        )
    header = f"{'clients':>7} {'groups':>6} {'pairs':>6} {'seconds':>8} {'pairs/s':>8} {'x offline':>9} {'group p50 ms':>12} {'group p99 ms':>12}"
    print(header)
    print("-" * len(header))
    for level in levels:
        level["vs_offline"] = round(level["pairs_per_s"] / base, 3) if base else None
        share = f"{level['vs_offline']:9.3f}" if base else f"{'n/a':>9}"
        print(
            f"{level['clients']:7d} {level['groups']:6d} {level['pairs']:6d} {level['seconds']:8.2f} "
            f"{level['pairs_per_s']:8.2f} {share} {level['group_p50_ms']!s:>12} {level['group_p99_ms']!s:>12}"
        )
    for latency in (r for r in results if r.get("measure") == "latency"):
        print(
            f"one group of {GROUP_SIZE}, {latency['state']}: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms "
            f"(n={latency['n']})"
        )
    failed = [r["measure"] for r in results if r.get("method") == "failed"]
    saturated = next((level for level in levels if level["clients"] == max(args.levels)), None)
    key = f"{max(args.levels)} clients >= {TARGET_VS_OFFLINE}x offline pairs/s"
    targets = {key: bench._check(saturated and saturated.get("vs_offline"), TARGET_VS_OFFLINE)}
    return bench_serve.print_targets(targets, failed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=None, help="write every result to this JSON file")
    parser.add_argument(
        "--measure", default="offline,server", help="comma-separated subset of offline, server"
    )
    parser.add_argument(
        "--method", choices=("round-robin", "vs-reference", "circular"), default="round-robin",
        help="how each group is judged: round-robin 28 pairs per group of 8, the others 8",
    )  # fmt: skip
    parser.add_argument(
        "--groups", type=int, default=16, help="groups of the load (each level sends each once)"
    )
    parser.add_argument("--probes", type=int, default=6, help="extra groups for the latency of one group")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent clients per level")
    parser.add_argument(
        "--load-clients", type=int, default=16, help="level during which latency under load is measured"
    )
    parser.add_argument("--level-seconds", type=float, default=60.0, help="longest a level sends new groups")
    parser.add_argument("--reps", type=int, default=1, help="offline predict passes (median reported)")
    parser.add_argument(
        "--median", type=float, default=1350, help="median target length of a pair's prompt (tokens)"
    )
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
    parser.add_argument("--timeout", type=int, default=570, help="seconds before the measurements are killed")
    parser.add_argument("--workdir", default=None, help="folder for the workload and models [default: temp]")
    parser.add_argument(
        "--quick", action="store_true", help="2-layer model, short rows, 4 groups: a smoke test"
    )
    parser.add_argument("--verbose", action="store_true", help="show every line the workers print")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.levels = [int(n) for n in str(args.levels).split(",") if n.strip()]
    if args.quick:
        args.groups, args.probes, args.level_seconds = min(args.groups, 4), min(args.probes, 2), 30.0
        args.median, args.budget_share = 300, 0.0
        args.levels, args.load_clients = [1, 4], 4
    measures = [name.strip() for name in args.measure.split(",") if name.strip()]
    unknown = sorted(set(measures) - set(MEASURES))
    if unknown:
        raise SystemExit(f"--measure {','.join(unknown)}: choose from {', '.join(MEASURES)}")
    if args.worker:
        run_worker(args, measures)
        return

    started = time.time()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wsdm-bench-rewards-"))
    args.rows = (args.groups + args.probes) * ROWS_PER_GROUP
    workload_facts = bench.prepare(workdir, args, bench.TINY if args.quick else bench.QWEN25_14B)
    device = args.gpu or bench.first_gpu()
    results = bench.run_measurement("gpu", args, workdir, device, script=Path(__file__))
    summary = report(results, args)
    print(f"\ntotal {time.time() - started:.0f} s")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"workload": workload_facts, "results": results, **summary, "args": vars(args)}, indent=1
            )
        )
        print(f"results -> {args.out}")


if __name__ == "__main__":
    main()
