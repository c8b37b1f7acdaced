#!/usr/bin/env python3
"""GPU check of `wsdm-train quantize`: a Qwen2.5-14B-shaped model with random weights, quantized,
saved, then loaded from that checkpoint and scored by vLLM, with the time of every phase.

Random weights with the 14B's exact shapes (hidden 5120, MLP 13824, 40 heads, 8 KV heads, vocab
152064) exercise everything but the judge's accuracy: the calibration pipeline layer by layer on
a GPU, the compressed-tensors export and its on-disk verification, the GPTQ v1 conversion, and
vLLM's choice of kernel for each format. ``--layers`` sets the depth (default 4; the real model
has 48, which takes longer than one 10-minute device command).

llm-compressor (compressed-tensors 0.19) and vLLM 0.26 (compressed-tensors 0.17) cannot share an
environment, so the phases run in separate processes, each with its own PYTHONPATH:

  quantize   (llm-compressor on the path)  build, save bf16, score bf16 with the transformers
             engine, quantize with the project's stage, verify, score the quantized checkpoint
             with the transformers engine, convert to GPTQ v1, verify; writes WORK/quantize.json
  vllm       (vLLM on the path)  for the compressed-tensors and the GPTQ v1 checkpoint, one child
             process each: load with vLLM (quantization left to the checkpoint), report the method
             and kernels vLLM picked, score real rows, compare with the transformers engine;
             writes the combined summary (JSON) to --json and stdout
  all        both, as subprocesses, with --quant-path and --vllm-path as their PYTHONPATHs

Real rows: the Arena-Hard sample (32 rows, inference budget 10000) for parity, PandaLM rows
(--rows, default 400) for throughput. Calibration: real student training prompts (PandaLM rows at
the 2048 budget), --calibration-samples of them (the reference used 1024 of fold 0's).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsdm_serve.tiny import QWEN25_14B_SHAPE  # noqa: E402

ASSETS = ROOT / "tests" / "assets"
TOKENIZER = ASSETS / "qwen2.5-tokenizer"
ARENA = ASSETS / "arena_hard_sample.parquet"
PANDALM = ASSETS / "pandalm_train.parquet"

# num_hidden_layers comes from --layers
QWEN25_14B = {
    **{key: value for key, value in QWEN25_14B_SHAPE.items() if key != "num_hidden_layers"},
    "hidden_act": "silu",
    "initializer_range": 0.02,
}
VERSIONS = (
    "torch",
    "transformers",
    "llmcompressor",
    "compressed-tensors",
    "datasets",
    "pyarrow",
    "fsspec",
    "pydantic",
    "vllm",
)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in VERSIONS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def gib(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**30, 2)


def log(message: str) -> None:
    print(f"[gpu_quantize_check] {message}", file=sys.stderr, flush=True)


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                log(f"{name} ...")
                self.started = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = round(time.perf_counter() - self.started, 2)
                log(f"{name}: {timer.seconds[name]} s")

        return _Phase()


# --------------------------------------------------------------------------- shared: real rows


def rendered(path: Path, tokenizer, budget: int, word_cap: int, limit: int | None = None):
    """Real rows through the project's truncation and prompt contract."""
    import pandas as pd

    from wsdm_serve.data import load_arena_rows
    from wsdm_serve.preprocess import build_prompts
    from wsdm_serve.truncation import TruncationConfig

    source = path
    if limit is not None:
        source = Path(os.environ.get("TMPDIR", "/tmp")) / f"rows_{limit}_{path.stem}.parquet"
        pd.read_parquet(path).head(limit).to_parquet(source)
    return build_prompts(
        load_arena_rows(source),
        tokenizer,
        TruncationConfig(token_budget=budget, response_word_cap=word_cap),
        with_swapped_ids=False,
        progress=False,
    )


# --------------------------------------------------------------------------- phase: quantize


TINY_SHAPE = {  # --tiny: a CPU smoke test of this script and of the carried packages, not a measurement
    "vocab_size": 151936,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def hf_letter_logits(model_dir: Path, sequences, letters) -> list[list[float]]:
    import torch

    from wsdm_serve.engines.hf import HFEngine
    from wsdm_serve.engines.settings import EngineSettings

    cuda = torch.cuda.is_available()
    settings = EngineSettings(
        name="hf", device="cuda" if cuda else "cpu", dtype="bfloat16" if cuda else "float32"
    )
    with HFEngine(model_dir, letters, settings) as engine:
        return engine.score(sequences).tolist()


def phase_quantize(args) -> dict:
    import pandas as pd
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from wsdm_serve.models.quantization import verify_quantized_checkpoint
    from wsdm_serve.prompt import letter_token_ids
    from wsdm_train.export.quantize import QuantizeConfig, export_gptq_v1, quantize_model

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    bf16_dir, ct_dir, gptq_dir = work / "bf16", work / "ct", work / "gptq"
    timer = Timer()
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("no CUDA GPU visible; use --tiny for a CPU smoke test")
    summary: dict = {
        "layers": args.layers,
        "shape": "tiny (CPU smoke test)" if args.tiny else "Qwen2.5-14B",
        "versions": versions(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    letters = letter_token_ids(tokenizer)

    with timer("build random model on the GPU"):
        config = Qwen2Config(
            **{**QWEN25_14B, **(TINY_SHAPE if args.tiny else {})},
            num_hidden_layers=args.layers,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly: fp32 first would need 2x memory
        with torch.device("cuda" if cuda else "cpu"):
            model = Qwen2ForCausalLM(config)
        torch.set_default_dtype(torch.float32)
        summary["parameters"] = sum(p.numel() for p in model.parameters())
    with timer("save bf16"):
        model.save_pretrained(bf16_dir, max_shard_size="5GB")
        tokenizer.save_pretrained(bf16_dir)
        del model
        torch.cuda.empty_cache()
    summary["bf16_gib"] = gib(bf16_dir)

    with timer("calibration prompts"):
        calibration = rendered(PANDALM, tokenizer, 2048, 1400)
        calibration_file = work / "calibration.parquet"
        pd.DataFrame({"text": calibration.texts}).to_parquet(calibration_file)
        arena = rendered(ARENA, tokenizer, 10000, 4200)
    with timer("transformers engine, bf16, arena rows"):
        summary["hf_bf16_logits"] = hf_letter_logits(bf16_dir, arena.token_ids, letters)

    settings = QuantizeConfig(calibration_samples=args.calibration_samples)
    with timer("quantize (wsdm-train quantize: load, GPTQ, save, verify)"):
        result = quantize_model(bf16_dir, ct_dir, calibration=calibration_file, config=settings)
    summary["quantize_phases_s"] = {k: round(v, 2) for k, v in result.seconds.items()}
    summary["calibration"] = {"rows": result.calibration_rows, "tokens": result.calibration_tokens}
    summary["ct_checkpoint"] = verify_quantized_checkpoint(ct_dir).describe()
    summary["ct_gib"] = gib(ct_dir)
    summary["ct_quantization_config"] = json.loads((ct_dir / "config.json").read_text())[
        "quantization_config"
    ]
    if not args.keep_bf16:
        shutil.rmtree(bf16_dir)

    with timer("transformers engine, compressed-tensors (dequantized at load), arena rows"):
        summary["hf_ct_logits"] = hf_letter_logits(ct_dir, arena.token_ids, letters)
    with timer("convert to GPTQ v1 and verify"):
        gptq_dir.mkdir()
        export_gptq_v1(ct_dir, gptq_dir, settings)
        summary["gptq_checkpoint"] = verify_quantized_checkpoint(gptq_dir).describe()
    summary["gptq_gib"] = gib(gptq_dir)
    summary["seconds"] = timer.seconds
    summary["hf_max_abs_dp_bf16_vs_ct"] = max_abs_dp(summary["hf_bf16_logits"], summary["hf_ct_logits"])
    (work / "quantize.json").write_text(json.dumps(summary, indent=2))
    return summary


def p_a(logits) -> list[float]:
    import numpy as np

    values = np.asarray(logits, dtype=np.float64)
    return (1 / (1 + np.exp(values[:, 1] - values[:, 0]))).tolist()


def max_abs_dp(a, b) -> float:
    import numpy as np

    return round(float(np.max(np.abs(np.asarray(p_a(a)) - np.asarray(p_a(b))))), 6)


# --------------------------------------------------------------------------- phase: vLLM, one checkpoint


def phase_score_one(args) -> dict:
    """Runs in a child process: one vLLM engine per process keeps GPU memory accounting simple."""
    import numpy as np
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams, TokensPrompt

    from wsdm_serve.prompt import letter_token_ids

    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    checkpoint = Path(args.checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    letters = letter_token_ids(tokenizer)
    arena = rendered(ARENA, tokenizer, 10000, 4200)
    throughput = rendered(PANDALM, tokenizer, 10000, 4200, limit=args.rows)
    longest = max(max(map(len, arena.token_ids)), max(map(len, throughput.token_ids)))
    timer = Timer()
    with timer("vLLM load"):
        llm = LLM(
            model=str(checkpoint),
            dtype="bfloat16",
            enforce_eager=True,
            enable_prefix_caching=True,
            max_model_len=min(32768, longest + 16),
            gpu_memory_utilization=0.85,
            logprobs_mode="processed_logprobs",  # logprobs after the A/B mask: both letters present
            seed=0,
        )
    params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=list(letters), logprobs=2)

    def score(sequences) -> np.ndarray:
        outputs = llm.generate(
            [TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params, use_tqdm=False
        )
        result = np.full((len(sequences), 2), np.nan)
        for row, output in enumerate(outputs):
            logprobs = output.outputs[0].logprobs[0]
            for column, letter in enumerate(letters):
                if letter in logprobs:
                    result[row, column] = logprobs[letter].logprob
        return result

    with timer("warm-up"):
        score(throughput.token_ids[:8])
    with timer("arena rows"):
        arena_logprobs = score(arena.token_ids)
    with timer("throughput rows"):
        started = time.perf_counter()
        score(throughput.token_ids)
        elapsed = time.perf_counter() - started
    tokens = int(sum(map(len, throughput.token_ids)))
    engine = llm.llm_engine
    model_config = getattr(engine, "model_config", None) or engine.vllm_config.model_config
    return {
        "checkpoint": str(checkpoint),
        "quantization": getattr(model_config, "quantization", None),
        "dtype": str(getattr(model_config, "dtype", "")),
        "arena_logprobs": arena_logprobs.tolist(),
        "missing_letter_logprobs": int(np.isnan(arena_logprobs).sum()),
        "throughput": {
            "rows": len(throughput.token_ids),
            "tokens": tokens,
            "seconds": round(elapsed, 2),
            "rows_per_s": round(len(throughput.token_ids) / elapsed, 2),
            "tokens_per_s": round(tokens / elapsed, 1),
        },
        "seconds": timer.seconds,
        "versions": versions(),
    }


KERNEL_LINE = re.compile(r"(kernel|Kernel|quantization|Quantization|gptq|GPTQ|compressed)", re.I)


def run_child(argv: list[str], pythonpath: str | None, log_path: Path, timeout: int) -> tuple[int, str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    env.setdefault("PYTHONUNBUFFERED", "1")
    with log_path.open("w") as handle:
        try:
            process = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), *argv],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
                cwd=str(ROOT),
            )
            code = process.returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, log_path.read_text(errors="replace")


def result_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return None


def phase_vllm(args) -> dict:
    import numpy as np

    work = Path(args.work)
    quant = json.loads((work / "quantize.json").read_text())
    summary: dict = {k: v for k, v in quant.items() if not k.endswith("_logits")}
    hf_ct = np.asarray(quant["hf_ct_logits"])
    hf_diff = hf_ct[:, 0] - hf_ct[:, 1]
    vllm_results = {}
    for name in ("ct", "gptq"):
        log(f"vLLM on the {name} checkpoint ...")
        code, text = run_child(
            ["score-one", "--checkpoint", str(work / name), "--rows", str(args.rows)],
            args.vllm_path,
            work / f"vllm_{name}.log",
            args.child_timeout,
        )
        result = result_line(text) or {}
        result["exit_code"] = code
        result["log_lines"] = [line.strip()[:240] for line in text.splitlines() if KERNEL_LINE.search(line)][
            -12:
        ]
        if code != 0:
            result["log_tail"] = text.splitlines()[-25:]
        logprobs = result.pop("arena_logprobs", None)
        if logprobs is not None:
            values = np.asarray(logprobs, dtype=np.float64)
            diff = values[:, 0] - values[:, 1]  # 2-way logit difference, engine independent
            ok = ~np.isnan(diff)
            result["vs_hf_ct"] = {
                "max_abs_dp": round(
                    float(np.max(np.abs(1 / (1 + np.exp(-diff[ok])) - 1 / (1 + np.exp(-hf_diff[ok]))))), 6
                ),
                "logit_diff_corr": round(float(np.corrcoef(diff[ok], hf_diff[ok])[0, 1]), 6),
                "max_abs_logit_diff_error": round(float(np.max(np.abs(diff[ok] - hf_diff[ok]))), 4),
                "hf_logit_diff_std": round(float(np.std(hf_diff)), 4),
            }
        vllm_results[name] = result
    summary["vllm"] = vllm_results
    return summary


# --------------------------------------------------------------------------- entry point


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["quantize", "vllm", "all", "score-one"])
    parser.add_argument("--work", default="/tmp/wsdm_qcheck", help="Folder for checkpoints and logs.")
    parser.add_argument("--layers", type=int, default=4, help="Decoder layers (the 14B has 48).")
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--rows", type=int, default=400, help="PandaLM rows for the throughput pass.")
    parser.add_argument("--keep-bf16", action="store_true", help="Keep the unquantized checkpoint.")
    parser.add_argument(
        "--tiny", action="store_true", help="Small shapes on CPU: a smoke test of the script."
    )
    parser.add_argument("--json", default=None, help="Also write the summary here.")
    parser.add_argument("--quant-path", default="/tmp/qsite", help="PYTHONPATH of the quantize phase (all).")
    parser.add_argument("--vllm-path", default="/tmp/site", help="PYTHONPATH of the vLLM children.")
    parser.add_argument("--child-timeout", type=int, default=420)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "score-one":
        print("RESULT " + json.dumps(phase_score_one(args)), flush=True)
        return 0
    if args.phase == "quantize":
        summary = phase_quantize(args)
        summary = {k: v for k, v in summary.items() if not k.endswith("_logits")}
    elif args.phase == "vllm":
        summary = phase_vllm(args)
    else:
        argv = ["quantize", "--work", args.work, "--layers", str(args.layers)]
        argv += ["--calibration-samples", str(args.calibration_samples)]
        argv += ["--keep-bf16"] * args.keep_bf16 + ["--tiny"] * args.tiny
        Path(args.work).parent.mkdir(parents=True, exist_ok=True)
        log_path = Path(args.work).with_name(Path(args.work).name + "_quantize.log")
        code, text = run_child(argv, args.quant_path, log_path, 3600)
        if code != 0:
            print("\n".join(text.splitlines()[-40:]), file=sys.stderr)
            return code
        summary = phase_vllm(args)
    text = json.dumps(summary, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
