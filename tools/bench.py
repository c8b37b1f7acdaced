"""Scoring throughput on one GPU: wsdm's engines end to end against raw vLLM and the matmul ceiling.

One command, one GPU, one run. The model is Qwen2.5-14B-shaped with random weights (the judge's
exact shapes; speed does not depend on the values): vLLM builds them itself (``load_format="dummy"``),
transformers builds them with ``from_config`` directly on the GPU. The rows are real arena and
PandaLM rows, with responses lengthened from other real responses to a realistic length mix, run
through wsdm's own truncation and prompt (``--token-budget`` 10,000), so prompts share the real
system prompt the prefix cache sees in production.

Measurements (each in its own process, so GPU memory is returned between them):
  matmul        8192^3 bf16 ``torch.matmul``: the ceiling that "of ceiling" refers to
  vllm-bf16     the vllm engine (bf16), three methods on one ``vllm.LLM``, interleaved per repetition:
                  raw      the reference's method: every prompt, shortest first, in one
                           ``LLM.generate`` (max_tokens=1, allowed A/B, logprobs), logprobs read
                  score    ``VLLMEngine.score`` (queued shortest first, collected with progress callbacks)
                  predict  ``Judge.predict`` + ``write_predictions``: truncation, prompts,
                           scoring, probabilities, the submission CSV written (the judge is made
                           once, like the engine: model checks and tokenizer load are start-up;
                           with the engine running, prompts stream into it as they are built)
                (prefix cache reset before every pass; engine start-up reported separately)
  vllm-gptq8    the same with a GPTQ 8-bit g128 checkpoint config (vLLM picks its kernel)
  hf            the transformers engine, the same predict with the same rows
  vllm-fp8      the bf16 config run with --precision fp8 (vLLM quantizes it at load, default recipe)
  vllm-fp8ckpt  the quantization_config `wsdm-serve convert --to fp8` writes (FP8 kernels, dummy weights)

A measurement may carry vllm.LLM arguments of its own and the methods it times, so one run sweeps
settings: ``vllm-fp8ckpt@max_num_batched_tokens=32768+kv_cache_dtype="fp8"/predict``.
``--fp8-comparison`` runs bf16, GPTQ-8, FP8 online (default recipe and vLLM's per-tensor ``fp8``)
and the FP8 checkpoint (raw and predict; then a bigger scheduler step, CUDA graphs, both, FP8 KV cache),
one pass each, on one GPU:

    PYTHONPATH=$PWD python tools/bench.py --fp8-comparison --json bench-fp8.json

    PYTHONPATH=$PWD python tools/bench.py --json bench.json        # ~7 min on one H100
    PYTHONPATH=$PWD python tools/bench.py --quick                   # 2-layer model, smoke test

Targets (one H100, 14B shape): predict >= 0.95x raw vLLM (bf16 and GPTQ-8), vLLM predict >= 1.5x
the transformers engine, >= 24,000 tokens/s; FP8 (one H200): predict >= 40,000 tokens/s and >= 0.97x
raw vLLM on the FP8 checkpoint. The printed table says which were met.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wsdm_serve.errors import WsdmError  # noqa: E402
from wsdm_serve.models.fp8 import DEFAULT_RECIPE, Fp8Recipe, quantization_config  # noqa: E402
from wsdm_serve.tiny import QWEN25_14B_SHAPE  # noqa: E402

ASSETS = REPO / "tests" / "assets"
TOKENIZER_DIR = ASSETS / "qwen2.5-tokenizer"
SOURCES = (ASSETS / "arena_hard_sample.parquet", ASSETS / "pandalm_train.parquet")

QWEN25_14B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    **QWEN25_14B_SHAPE,
    "max_window_layers": 48,
    "use_sliding_window": False,
    "sliding_window": None,
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "use_cache": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1",  # as in the released config (transformers reads it when loading)
}
TINY = {
    **QWEN25_14B,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_window_layers": 2,
}
GPTQ8 = {
    "quant_method": "gptq",
    "bits": 8,
    "group_size": 128,
    "desc_act": False,
    "sym": True,
    "lm_head": False,
    "checkpoint_format": "gptq",
    # With random weights vLLM cannot look at tensors to learn which layers are quantized; without
    # this list it silently runs everything in bf16.
    "modules_in_block_to_quantize": [
        ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
        ["self_attn.o_proj"],
        ["mlp.up_proj", "mlp.gate_proj"],
        ["mlp.down_proj"],
    ],
}
MEASUREMENTS = ("matmul", "vllm-bf16", "vllm-gptq8", "hf", "vllm-fp8", "vllm-fp8ckpt")
DEFAULT_MEASURES = ("matmul", "vllm-bf16", "vllm-gptq8", "hf")
TARGETS = {"predict_vs_raw": 0.95, "vllm_vs_hf": 1.5, "tokens_per_s": 24_000}
FP8_TARGETS = {"tokens_per_s": 40_000, "predict_vs_raw": 0.97}
# One run on one H200 (~8-9 minutes): bf16 and GPTQ-8 beside FP8 online (the default recipe, and
# vLLM's per-tensor "fp8"), the FP8 checkpoint with raw vLLM, and the checkpoint with a bigger
# scheduler step, CUDA graphs and an FP8 KV cache. NAME/METHODS times only those methods;
# NAME@KEY=JSON+KEY=JSON adds vllm.LLM arguments to that measurement only.
FP8_COMPARISON = (
    "vllm-bf16/predict",
    "vllm-gptq8/predict",
    "vllm-fp8/predict",
    "vllm-fp8@quantization=fp8/predict",
    "vllm-fp8ckpt/raw+predict",
    "vllm-fp8ckpt@max_num_batched_tokens=32768/predict",
    "vllm-fp8ckpt@enforce_eager=false/raw+predict",
    "vllm-fp8ckpt@max_num_batched_tokens=32768+enforce_eager=false/raw+predict",
    "vllm-fp8ckpt@kv_cache_dtype=fp8/predict",
)


# ------------------------------------------------------------------------------- workload
def target_lengths(n: int, seed: int, median: float, sigma: float, budget_share: float) -> list[int]:
    """Prompt lengths to aim for: lognormal around ``median`` tokens, plus ``budget_share`` of rows
    long enough to be cut at the 10k budget (long multi-turn conversations are in every test set)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(math.log(median), sigma, size=n), 300, 10_000)
    forced = rng.permutation(n)[: int(round(budget_share * n))]
    lengths[forced] = 14_000  # beyond the budget: truncation brings these to ~10.2k
    return [int(x) for x in lengths]


def build_rows(n: int, seed: int, tokenizer, median: float, sigma: float, budget_share: float):
    """Real rows whose responses are extended with other real responses to reach the target lengths."""
    from wsdm_serve.data import ArenaRows, load_arena_rows
    from wsdm_serve.prompt import JudgePrompt

    pools = [load_arena_rows(path) for path in SOURCES]
    queries = [q for rows in pools for q in rows.prompts]
    responses_a = [r for rows in pools for r in rows.responses_a]
    responses_b = [r for rows in pools for r in rows.responses_b]
    fillers = [r for r in responses_a + responses_b if r.strip()]
    filler_tokens = [len(ids) for ids in tokenizer(fillers, add_special_tokens=False)["input_ids"]]
    template = len(
        tokenizer(JudgePrompt(tokenizer).render("", "", ""), add_special_tokens=False)["input_ids"]
    )
    base_tokens = tokenizer(
        [q + "\n" + a + "\n" + b for q, a, b in zip(queries, responses_a, responses_b, strict=True)],
        add_special_tokens=False,
    )["input_ids"]
    ids, prompts, out_a, out_b = [], [], [], []
    filler_at = seed % len(fillers)
    for row, target in enumerate(target_lengths(n, seed, median, sigma, budget_share)):
        source = (row * 7919 + seed) % len(queries)  # a fixed walk through all real rows
        a, b = responses_a[source], responses_b[source]
        have = template + len(base_tokens[source])
        turn = 0
        while have < target:
            text, extra = fillers[filler_at], filler_tokens[filler_at]
            filler_at = (filler_at + 1) % len(fillers)
            if turn % 2 == 0:
                a = f"{a}\n\n{text}"
            else:
                b = f"{b}\n\n{text}"
            have += extra + 2
            turn += 1
        ids.append(f"bench-{row}")
        prompts.append(queries[source])
        out_a.append(a)
        out_b.append(b)
    return ArenaRows(ids=ids, prompts=prompts, responses_a=out_a, responses_b=out_b, null_text_cells=0)


def write_model_dir(path: Path, config: dict, quantization: dict | None) -> Path:
    """config.json (+ the real tokenizer); vLLM and transformers create the weights themselves."""
    path.mkdir(parents=True, exist_ok=True)
    body = dict(config)
    if quantization:
        body["quantization_config"] = quantization
    (path / "config.json").write_text(json.dumps(body, indent=1))
    for item in TOKENIZER_DIR.iterdir():
        shutil.copy(item, path / item.name)
    return path


def flops_per_row(config: dict, length: int) -> float:
    """Useful FLOPs of one prefill: linear layers at every position, causal attention, and the two
    letter columns of the output head at the last position."""
    h, f, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = h // heads
    kv = config["num_key_value_heads"] * head_dim
    linear = n * (2 * h * h + 2 * h * kv + 3 * h * f)
    attention = n * 2 * heads * head_dim * length * (length + 1)
    return 2 * linear * length + attention + 2 * h * 2


def summarize(name: str, method: str, lengths: list[int], times: list[float], config: dict, **extra) -> dict:
    tokens = sum(lengths)
    median = statistics.median(times)
    flops = sum(flops_per_row(config, length) for length in lengths)
    result = {
        "measure": name,
        "method": method,
        "rows": len(lengths),
        "tokens": tokens,
        "times_s": [round(t, 3) for t in times],
        "median_s": round(median, 3),
        "tokens_per_s": round(tokens / median, 1),
        "rows_per_s": round(len(lengths) / median, 2),
        "tflops": round(flops / median / 1e12, 1),
    }
    result.update(extra)
    print("RESULT " + json.dumps(result), flush=True)
    return result


# --------------------------------------------------------------------------------- workers
def load_workload(workdir: Path):
    import pandas as pd

    from wsdm_serve.data import ArenaRows

    frame = pd.read_parquet(workdir / "rows.parquet")
    rows = ArenaRows(
        ids=frame["id"].tolist(),
        prompts=frame["prompt"].tolist(),
        responses_a=frame["response_a"].tolist(),
        responses_b=frame["response_b"].tolist(),
        null_text_cells=0,
    )
    token_ids = json.loads((workdir / "token_ids.json").read_text())
    return rows, token_ids


def predict_config(model_dir: Path):
    from wsdm_serve.settings import JudgeSettings

    return JudgeSettings(model=model_dir, tta="none", progress=False)


def predict_and_write(judge, rows, workdir: Path):
    """What `wsdm-serve predict` does per table once the model is up: score, then write the CSV."""
    from wsdm_serve.predict import write_predictions

    result = judge.predict(rows)
    write_predictions(result, workdir / "sub" / "submission.csv")
    return result


def timed(fn, sync=None):
    if sync:
        sync()
    started = time.perf_counter()
    value = fn()
    if sync:
        sync()
    return time.perf_counter() - started, value


def worker_matmul(args, config) -> None:
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        start.record()
        a @ b
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    median = statistics.median(times)
    result = {
        "measure": "matmul",
        "method": "matmul",
        "tflops": round(2 * n**3 / median / 1e12, 1),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    print("RESULT " + json.dumps(result), flush=True)


def scheduler_facts(llm) -> dict:
    """The scheduler settings vLLM chose, for the record (they decide how prefill is batched)."""
    config = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    scheduler = getattr(config, "scheduler_config", None)
    facts = {}
    for key in ("max_num_batched_tokens", "max_num_seqs", "async_scheduling"):
        value = getattr(scheduler, key, None)
        if value is not None:
            facts[key] = value
    return facts


def parse_measure(spec: str, default_methods: str) -> tuple[str, dict, list[str]]:
    """``NAME[:RECIPE][@KEY=JSON+KEY=JSON][/METHODS]`` -> (NAME[:RECIPE], extra vllm.LLM arguments,
    methods). RECIPE (vllm-fp8 and vllm-fp8ckpt only) is an FP8 recipe name such as
    ``per-channel+down-proj``; without it they run the default recipe."""
    spec, _, methods = spec.partition("/")
    base, _, overrides = spec.partition("@")
    extra = dict(vllm_arg(item) for item in overrides.split("+") if item) if overrides else {}
    name, _, recipe = base.partition(":")
    if name not in MEASUREMENTS:
        raise SystemExit(f"--measure {spec}: choose from {', '.join(MEASUREMENTS)}")
    if recipe:
        if name not in ("vllm-fp8", "vllm-fp8ckpt"):
            raise SystemExit(f"--measure {spec}: only vllm-fp8 and vllm-fp8ckpt take a :RECIPE")
        try:
            Fp8Recipe.parse(recipe)
        except WsdmError as error:
            raise SystemExit(f"--measure {spec}: {error}") from None
    chosen = [m.strip() for m in (methods.split("+") if methods else default_methods.split(",")) if m.strip()]
    unknown = set(chosen) - {"raw", "score", "predict"}
    if unknown:
        raise SystemExit(f"--measure {spec}: unknown method(s) {', '.join(sorted(unknown))}")
    return base, extra, chosen


def worker_vllm(args, config, name: str) -> None:
    import numpy as np
    import vllm

    from wsdm_serve.engines.settings import EngineSettings
    from wsdm_serve.engines.vllm import VLLMEngine
    from wsdm_serve.engines.vllm_setup import letter_logprobs
    from wsdm_serve.judge import Judge
    from wsdm_serve.prompt import letter_token_ids
    from wsdm_serve.tokenizer import load_tokenizer
    from wsdm_serve.tta import softmax2

    workdir = Path(args.workdir)
    base, overrides, chosen_methods = parse_measure(name, args.methods)
    name = name.partition("/")[0]  # results are named by measurement and variant, not methods
    base, _, recipe_name = base.partition(":")
    recipe = Fp8Recipe.parse(recipe_name) if recipe_name else DEFAULT_RECIPE
    model_dir = workdir / base
    if base == "vllm-fp8ckpt" and recipe != DEFAULT_RECIPE:  # that recipe's checkpoint config
        model_dir = write_model_dir(
            workdir / f"{base}-{recipe.name}",
            config,
            quantization_config(recipe, config["num_hidden_layers"]),
        )
    vllm_args = {**dict(args.vllm_arg), **overrides}
    if base == "vllm-fp8ckpt" and recipe.kv_cache_fp8:
        vllm_args.setdefault("kv_cache_dtype", "fp8")
    rows, token_ids = load_workload(workdir)
    tokenizer = load_tokenizer(model_dir)
    letters = letter_token_ids(tokenizer)
    lengths = [len(ids) for ids in token_ids]
    started = time.perf_counter()
    settings = EngineSettings(
        name="vllm",
        dtype="bfloat16",
        gpu_memory_utilization=args.gpu_memory_utilization,
        load_format="dummy",
        max_num_batched_tokens=args.max_num_batched_tokens,
        # vllm-fp8: the bf16 config quantized by vLLM at load with the default recipe (--precision fp8)
        precision="fp8" if base == "vllm-fp8" else "checkpoint",
    )
    engine = VLLMEngine(
        model_dir,
        letters,
        max(lengths),
        settings,
        extra_args=vllm_args,
        fp8_recipe=recipe if base == "vllm-fp8" else None,
    )
    startup = time.perf_counter() - started
    if engine.scorer is None:
        raise SystemExit("the bench runs one in-process engine; set CUDA_VISIBLE_DEVICES to one GPU")
    scorer = engine.scorer
    info = {
        "vllm": vllm.__version__,
        "startup_s": round(startup, 1),
        "plan": engine.plan.describe(),
        **scheduler_facts(scorer.llm),
        **({"vllm_args": vllm_args} if vllm_args else {}),
        **({"precision": "fp8", "fp8_recipe": recipe.name} if base == "vllm-fp8" else {}),
        **({"fp8_recipe": recipe.name} if base == "vllm-fp8ckpt" else {}),
    }
    print(f"[{name}] engine up in {startup:.1f} s: {info['plan']}", flush=True)
    config_for_predict = predict_config(model_dir)
    judge_setup, judge = timed(lambda: Judge(config_for_predict, engine))
    info["judge_setup_s"] = round(judge_setup, 2)
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    state = {}

    def raw():
        prompts = scorer.prompts([token_ids[i] for i in order])
        outputs = scorer.llm.generate(prompts, scorer.sampling, use_tqdm=False)
        logits = np.empty((len(order), 2), dtype=np.float32)
        logits[order] = letter_logprobs(outputs, letters, order)
        state["cached"] = sum(getattr(o, "num_cached_tokens", 0) or 0 for o in outputs)
        return logits

    def score():
        return engine.score(token_ids, lambda rows, tokens: None)

    def predict():
        return predict_and_write(judge, rows, workdir)

    def preprocess():
        return judge.prompts(rows)  # exactly the prompt building inside predict

    prompts = preprocess()
    if prompts.token_ids != token_ids:
        raise SystemExit(
            "the pipeline's token ids differ from the workload's; the comparison would be unfair"
        )
    warm = list(range(0, len(token_ids), max(1, len(token_ids) // 16)))
    scorer.llm.generate(scorer.prompts([token_ids[i] for i in warm]), scorer.sampling, use_tqdm=False)
    engine.score([token_ids[i] for i in warm])
    times = {"raw": [], "score": [], "predict": [], "preprocess": []}
    outputs = {}
    methods = [m for m in (("raw", raw), ("score", score), ("predict", predict)) if m[0] in chosen_methods]
    for _ in range(args.reps):
        for method, fn in methods:
            scorer.reset_prefix_cache()
            seconds, outputs[method] = timed(fn)
            times[method].append(seconds)
        times["preprocess"].append(timed(preprocess)[0])
    probabilities = {
        method: softmax2(value)[:, 0] if method != "predict" else value.forward[:, 0]
        for method, value in outputs.items()
    }
    agreement = {"cached_tokens_raw": state.get("cached")}
    for method in ("score", "predict"):
        if "raw" in probabilities and method in probabilities:
            agreement[f"max_abs_dp_{method}_vs_raw"] = float(
                np.abs(probabilities[method] - probabilities["raw"]).max()
            )
    for method, _ in methods:
        summarize(name, method, lengths, times[method], config, **info, **agreement)
    summarize(name, "preprocess", lengths, times["preprocess"], config)
    engine.close()


def worker_hf(args, config) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from wsdm_serve.engines.hf import HFEngine
    from wsdm_serve.judge import Judge
    from wsdm_serve.prompt import letter_token_ids
    from wsdm_serve.tokenizer import load_tokenizer

    workdir = Path(args.workdir)
    model_dir = workdir / "vllm-bf16"  # the same config.json and tokenizer
    rows, token_ids = load_workload(workdir)
    letters = letter_token_ids(load_tokenizer(model_dir))
    lengths = [len(ids) for ids in token_ids]
    started = time.perf_counter()
    hf_config = AutoConfig.from_pretrained(model_dir)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16, attn_implementation="sdpa")
    engine = HFEngine.from_model(model, letters, batch_tokens=args.hf_batch_tokens)
    startup = time.perf_counter() - started
    info = {"startup_s": round(startup, 1), "batch_tokens": engine.batch_tokens, "attention": "sdpa"}
    print(f"[hf] model built on the GPU in {startup:.1f} s", flush=True)
    judge = Judge(predict_config(model_dir), engine)
    engine.score([token_ids[i] for i in range(0, len(token_ids), max(1, len(token_ids) // 16))])
    times = []
    for _ in range(args.hf_reps):
        seconds, _ = timed(lambda: predict_and_write(judge, rows, workdir), torch.cuda.synchronize)
        times.append(seconds)
    summarize("hf", "predict", lengths, times, config, **info)
    engine.close()


# ---------------------------------------------------------------------------------- driver
def shown(line: str) -> bool:
    """Worker lines worth showing without --verbose: ours, results and errors (vLLM logs a lot)."""
    return line.startswith(("[", "RESULT ", "Traceback", "SystemExit")) or "Error" in line


def run_measurement(name: str, args, workdir: Path, device: str, script: Path | None = None) -> list[dict]:
    """Run ``script`` (this file by default) with the same arguments as a worker in its own process."""
    script = Path(script or __file__).resolve()
    command = [
        sys.executable, str(script), *sys.argv[1:], "--worker", name, "--workdir", str(workdir)
    ]  # fmt: skip
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=device)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    print(f"=== {name}", flush=True)
    started = time.time()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )

    def kill() -> None:
        print(f"=== {name}: killed after {args.timeout} s", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(args.timeout, kill)
    timer.start()
    results, log = [], []
    assert process.stdout is not None
    for line in process.stdout:
        log.append(line)
        if line.startswith("RESULT "):
            results.append(json.loads(line[len("RESULT ") :]))
        if args.verbose or shown(line):
            sys.stdout.write(line if line.startswith("[") else f"[{name}] {line}")
            sys.stdout.flush()
    code = process.wait()
    timer.cancel()
    print(f"=== {name}: exit {code} after {time.time() - started:.0f} s", flush=True)
    if code != 0:
        if not args.verbose:
            sys.stdout.writelines(f"[{name}] {line}" for line in log[-40:])
        results.append({"measure": name, "method": "failed", "exit_code": code})
    return results


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def report(results: list[dict], workload: dict) -> dict:
    ceiling = next((r["tflops"] for r in results if r["measure"] == "matmul"), None)

    def rate(measure: str, method: str) -> float | None:
        return next(
            (r["tokens_per_s"] for r in results if r["measure"] == measure and r["method"] == method), None
        )

    print()
    print(
        f"workload: {workload['rows']} rows, {workload['tokens']:,} tokens, length min {workload['min']}, "
        f"median {workload['median']}, p90 {workload['p90']}, max {workload['max']}; "
        f"{workload['gflop_per_token']:.2f} GFLOP/token"
    )
    if ceiling:
        device = next(r.get("device") for r in results if r["measure"] == "matmul")
        print(f"ceiling: 8192^3 bf16 matmul {ceiling} TFLOP/s on {device}")
    width = max([12] + [len(r["measure"]) for r in results])
    header = f"{'measure':{width}s} {'method':10s} {'tokens/s':>10s} {'rows/s':>7s} {'TFLOP/s':>8s} {'of ceiling':>10s} {'start s':>8s}"
    print(header)
    print("-" * len(header))
    for r in results:
        if r["measure"] == "matmul" or "tokens_per_s" not in r:
            if r.get("method") == "failed":
                print(f"{r['measure']:{width}s} failed (exit {r['exit_code']})")
            continue
        share = f"{100 * r['tflops'] / ceiling:9.1f}%" if ceiling and r["method"] != "preprocess" else ""
        tflops = f"{r['tflops']:8.1f}" if r["method"] != "preprocess" else ""
        print(
            f"{r['measure']:{width}s} {r['method']:10s} {r['tokens_per_s']:10,.0f} {r['rows_per_s']:7.2f} {tflops:>8s} "
            f"{share:>10s} {r.get('startup_s', ''):>8}"
        )
    ratios = {
        "bf16_predict_vs_raw": ratio(rate("vllm-bf16", "predict"), rate("vllm-bf16", "raw")),
        "bf16_score_vs_raw": ratio(rate("vllm-bf16", "score"), rate("vllm-bf16", "raw")),
        "gptq8_predict_vs_raw": ratio(rate("vllm-gptq8", "predict"), rate("vllm-gptq8", "raw")),
        "gptq8_score_vs_raw": ratio(rate("vllm-gptq8", "score"), rate("vllm-gptq8", "raw")),
        "bf16_predict_vs_hf_predict": ratio(rate("vllm-bf16", "predict"), rate("hf", "predict")),
        "gptq8_predict_vs_hf_predict": ratio(rate("vllm-gptq8", "predict"), rate("hf", "predict")),
        "fp8ckpt_predict_vs_raw": ratio(rate("vllm-fp8ckpt", "predict"), rate("vllm-fp8ckpt", "raw")),
        "fp8ckpt_predict_vs_bf16_predict": ratio(
            rate("vllm-fp8ckpt", "predict"), rate("vllm-bf16", "predict")
        ),
        "fp8_online_predict_vs_bf16_predict": ratio(
            rate("vllm-fp8", "predict"), rate("vllm-bf16", "predict")
        ),
    }
    for measure in dict.fromkeys(r["measure"] for r in results):  # every measure timed both ways
        both = ratio(rate(measure, "predict"), rate(measure, "raw"))
        if both is not None:
            ratios.setdefault(f"{measure}_predict_vs_raw", both)
    fp8_rates = {
        r["measure"]: r["tokens_per_s"]
        for r in results
        if r["measure"].startswith("vllm-fp8") and r.get("method") == "predict"
    }
    best_fp8 = max(fp8_rates, key=fp8_rates.get) if fp8_rates else None
    targets = {
        "bf16 predict >= 0.95x raw": _check(ratios["bf16_predict_vs_raw"], TARGETS["predict_vs_raw"]),
        "gptq8 predict >= 0.95x raw": _check(ratios["gptq8_predict_vs_raw"], TARGETS["predict_vs_raw"]),
        "bf16 predict >= 1.5x hf": _check(ratios["bf16_predict_vs_hf_predict"], TARGETS["vllm_vs_hf"]),
        "bf16 predict >= 24,000 tokens/s": _check(rate("vllm-bf16", "predict"), TARGETS["tokens_per_s"]),
        "gptq8 predict >= 24,000 tokens/s": _check(rate("vllm-gptq8", "predict"), TARGETS["tokens_per_s"]),
        f"fp8 predict >= 40,000 tokens/s (best: {best_fp8})": _check(
            fp8_rates.get(best_fp8), FP8_TARGETS["tokens_per_s"]
        ),
        "fp8ckpt predict >= 0.97x raw": _check(
            ratios["fp8ckpt_predict_vs_raw"], FP8_TARGETS["predict_vs_raw"]
        ),
    }
    print()
    for key, value in ratios.items():
        print(f"{key:36s} {value if value is not None else 'n/a'}")
    print()
    for key, value in targets.items():
        print(f"{key:{max(map(len, targets))}s} {value}")
    return {"ratios": ratios, "targets": targets, "ceiling_tflops": ceiling}


def _check(value: float | None, threshold: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value >= threshold else "NOT met"


def vllm_arg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=JSON, e.g. enforce_eager=false")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string, e.g. attention_backend=FLASH_ATTN


def first_gpu() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return visible.split(",")[0].strip() if visible else "0"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--measure",
        default=None,
        help="comma-separated: " + ", ".join(MEASUREMENTS) + ", each optionally NAME@KEY=JSON+KEY=JSON "
        "(vllm.LLM arguments of that measurement) and /METHOD+METHOD [default: "
        + ",".join(DEFAULT_MEASURES)
        + "]",
    )
    parser.add_argument(
        "--fp8-comparison",
        action="store_true",
        help="bf16, GPTQ-8 and the FP8 variants in one run, one pass each: " + ",".join(FP8_COMPARISON),
    )
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--reps", type=int, default=2, help="passes per vLLM method (median reported)")
    parser.add_argument("--methods", default="raw,score,predict", help="vLLM methods to time (see above)")
    parser.add_argument("--hf-reps", type=int, default=1)
    parser.add_argument(
        "--hf-batch-tokens", type=int, default=None, help="hf engine: padded tokens per batch"
    )
    parser.add_argument("--median", type=float, default=1350, help="median target prompt length (tokens)")
    parser.add_argument("--sigma", type=float, default=0.6, help="lognormal spread of the target lengths")
    parser.add_argument(
        "--budget-share", type=float, default=0.03, help="share of rows cut at the 10k budget"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-num-batched-tokens", type=int, default=None, help="vLLM scheduler step size [default: vLLM's]"
    )
    parser.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        type=vllm_arg,
        metavar="KEY=JSON",
        help="extra vllm.LLM argument for experiments, e.g. enforce_eager=false (repeatable)",
    )
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--gpu", default=None, help="the GPU to use [default: the first visible]")
    parser.add_argument("--timeout", type=int, default=480, help="seconds before a measurement is killed")
    parser.add_argument(
        "--workdir", default=None, help="folder for the workload and model configs [default: temp]"
    )
    parser.add_argument("--json", default=None, help="write all results to this file")
    parser.add_argument("--merge", nargs="+", default=None, help="print one report from earlier --json files")
    parser.add_argument("--quick", action="store_true", help="2-layer model, 48 rows, one pass: a smoke test")
    parser.add_argument("--verbose", action="store_true", help="show every line the workers print")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.reps = min(args.rows, 48), 1
    if args.fp8_comparison:
        args.measure, args.reps = args.measure or ",".join(FP8_COMPARISON), 1
    args.measure = args.measure or ",".join(DEFAULT_MEASURES)
    config = TINY if args.quick else QWEN25_14B

    if args.worker:
        if args.worker == "matmul":
            worker_matmul(args, config)
        elif args.worker == "hf":
            worker_hf(args, config)
        else:
            worker_vllm(args, config, args.worker)
        return
    if args.merge:
        merge(args.merge)
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wsdm-bench-"))
    workload = prepare(workdir, args, config)
    device = args.gpu or first_gpu()
    results = []
    names = [name.strip() for name in args.measure.split(",") if name.strip()]
    for name in names:
        parse_measure(name, args.methods)  # refuse a bad spec before the first measurement starts
    for name in names:
        results.extend(run_measurement(name, args, workdir, device))
    summary = report(results, workload)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"workload": workload, "results": results, **summary, "args": vars(args)}, indent=1)
        )
        print(f"\nresults -> {args.json}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


def prepare(workdir: Path, args, config: dict) -> dict:
    """Write the rows, their token ids and the two model folders; return the workload's statistics."""
    import pandas as pd
    from transformers import AutoTokenizer

    from wsdm_serve.preprocess import build_prompts

    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    rows = build_rows(args.rows, args.seed, tokenizer, args.median, args.sigma, args.budget_share)
    prompts = build_prompts(rows, tokenizer, with_swapped_ids=False, progress=False)
    pd.DataFrame(
        {
            "id": rows.ids,
            "prompt": rows.prompts,
            "response_a": rows.responses_a,
            "response_b": rows.responses_b,
        }
    ).to_parquet(workdir / "rows.parquet")
    (workdir / "token_ids.json").write_text(json.dumps(prompts.token_ids))
    write_model_dir(workdir / "vllm-bf16", config, None)
    write_model_dir(workdir / "vllm-gptq8", config, GPTQ8)
    write_model_dir(workdir / "vllm-fp8", config, None)
    # What `wsdm-serve convert --to fp8` writes, so vLLM builds the FP8 layers with dummy weights.
    write_model_dir(
        workdir / "vllm-fp8ckpt", config, quantization_config(DEFAULT_RECIPE, config["num_hidden_layers"])
    )
    lengths = sorted(len(ids) for ids in prompts.token_ids)
    tokens = sum(lengths)
    workload = {
        "rows": len(lengths),
        "tokens": tokens,
        "min": lengths[0],
        "median": lengths[len(lengths) // 2],
        "p90": lengths[int(0.9 * len(lengths))],
        "max": lengths[-1],
        "mean": round(tokens / len(lengths), 1),
        "over_5k": sum(n > 5000 for n in lengths),
        "gflop_per_token": sum(flops_per_row(config, n) for n in lengths) / tokens / 1e9,
        "target_median": args.median,
        "target_sigma": args.sigma,
        "budget_share": args.budget_share,
        "seed": args.seed,
        "shape": "tiny (2 layers)" if args.quick else "Qwen2.5-14B",
    }
    print(
        f"workload: {workload['rows']} rows, {tokens:,} tokens (min {lengths[0]}, median {workload['median']}, "
        f"p90 {workload['p90']}, max {lengths[-1]}) in {workdir}",
        flush=True,
    )
    return workload


def merge(paths: list[str]) -> None:
    """One report from runs split over several calls (same --rows/--seed, so the same workload)."""
    loaded = [json.loads(Path(path).read_text()) for path in paths]
    workloads = {(d["workload"]["rows"], d["workload"]["tokens"]) for d in loaded}
    if len(workloads) > 1:
        raise SystemExit(f"the files measured different workloads: {sorted(workloads)}")
    report([r for d in loaded for r in d["results"]], loaded[0]["workload"])


if __name__ == "__main__":
    main()
