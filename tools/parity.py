"""Do the hf and vllm engines give the same judgements? Same model, same real rows, both orders.

By default a tiny random Qwen2 (2 layers, hidden 256, head size 64, the real Qwen2.5 tokenizer) is
built in bf16; the real arena rows of tests/assets are rendered with the judge prompt, forward and
swapped, and scored by the transformers engine and by the vllm engine, each in its own process.
Printed: whether every decision is the same, and max |P_hf(A) - P_vllm(A)| (bf16: expect < 0.02).

The reference is always the transformers engine; ``--candidate`` and ``--reference-dtype`` choose
what it is compared with, which also measures how far bf16 itself moves the scores:

    PYTHONPATH=$PWD python tools/parity.py --candidate hf --reference-dtype float32   # hf bf16 vs fp32 (CPU too)
    PYTHONPATH=$PWD python tools/parity.py --reference-dtype float32                  # vllm bf16 vs hf fp32

    PYTHONPATH=$PWD python tools/parity.py                       # tiny bf16 model, one GPU
    PYTHONPATH=$PWD python tools/parity.py --gpus 0,1            # vllm engine data parallel (2 workers)
    PYTHONPATH=$PWD python tools/parity.py --tensor-parallel 2   # vllm engine tensor parallel
    PYTHONPATH=$PWD python tools/parity.py --model QUANT_DIR --reference-model BF16_DIR --tolerance 0.05
                                            # a GPTQ 8-bit g128 folder in vllm vs its source in hf

Exit status 0 when the engines agree within --tolerance (decision flips are allowed only for rows
that close to a tie), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ASSETS = REPO / "tests" / "assets"
TOKENIZER_DIR = ASSETS / "qwen2.5-tokenizer"
DTYPES = ["bfloat16", "float16", "float32"]
ROW_SOURCES = {"arena": ASSETS / "arena_hard_sample.parquet", "pandalm": ASSETS / "pandalm_train.parquet"}


def build_sequences(model_dir: Path, pandalm_rows: int) -> tuple[list[list[int]], tuple[int, int], list[str]]:
    """Forward and swapped token ids of real rows, as the pipeline builds them."""
    from wsdm_serve.data import ArenaRows, load_arena_rows
    from wsdm_serve.preprocess import build_prompts
    from wsdm_serve.prompt import letter_token_ids
    from wsdm_serve.tokenizer import load_tokenizer

    arena = load_arena_rows(ROW_SOURCES["arena"])
    pandalm = load_arena_rows(ROW_SOURCES["pandalm"])
    take = min(pandalm_rows, len(pandalm))
    rows = ArenaRows(
        ids=[f"arena-{i}" for i in arena.ids] + [f"pandalm-{i}" for i in pandalm.ids[:take]],
        prompts=arena.prompts + pandalm.prompts[:take],
        responses_a=arena.responses_a + pandalm.responses_a[:take],
        responses_b=arena.responses_b + pandalm.responses_b[:take],
        null_text_cells=0,
    )
    tokenizer = load_tokenizer(model_dir)
    prompts = build_prompts(rows, tokenizer, progress=False)
    assert prompts.swapped_token_ids is not None
    labels = [f"{i} forward" for i in rows.ids] + [f"{i} swapped" for i in rows.ids]
    return prompts.token_ids + prompts.swapped_token_ids, letter_token_ids(tokenizer), labels


def worker(args) -> None:
    """Score the saved sequences with one engine and save the logits (runs in its own process)."""
    import numpy as np

    data = json.loads(Path(args.sequences).read_text())
    sequences, letters = data["sequences"], tuple(data["letters"])
    from wsdm_serve.engines.settings import EngineSettings

    if args.worker == "hf":
        from wsdm_serve.engines.hf import HFEngine

        engine = HFEngine(args.model, letters, EngineSettings(name="hf", dtype=args.dtype))
        description = f"transformers on {engine.device}, {engine.dtype}"
    else:
        from wsdm_serve.engines.vllm import VLLMEngine

        settings = EngineSettings(
            name="vllm",
            gpus=args.gpus,
            tensor_parallel=args.tensor_parallel,
            dtype=args.dtype,
            gpu_memory_utilization=args.gpu_memory_utilization,
        )
        engine = VLLMEngine(args.model, letters, max(len(s) for s in sequences), settings)
        description = engine.plan.describe()
    print(f"[{args.worker}] {description}", flush=True)
    with engine:
        logits = engine.score(sequences)
    np.save(args.out, logits)


def run_worker(name: str, model: Path, dtype: str, args, sequences_path: Path, out: Path) -> None:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", name, "--sequences", str(sequences_path),
        "--out", str(out), "--model", str(model), "--dtype", dtype,
        "--gpu-memory-utilization", str(args.gpu_memory_utilization),
    ]  # fmt: skip
    if args.gpus:
        command += ["--gpus", args.gpus]
    if args.tensor_parallel:
        command += ["--tensor-parallel", str(args.tensor_parallel)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    completed = subprocess.run(command, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"the {name} engine failed (exit {completed.returncode}); see its output above")


def compare(reference, candidate, labels: list[str], tolerance: float) -> dict:
    """Decisions and probability differences; a flip only counts as a failure away from a tie."""
    import numpy as np

    from wsdm_serve.tta import softmax2

    p_ref, p_cand = softmax2(reference)[:, 0], softmax2(candidate)[:, 0]
    diff = np.abs(p_ref - p_cand)
    flips = np.nonzero((p_ref > 0.5) != (p_cand > 0.5))[0]
    near_tie = [int(i) for i in flips if min(abs(p_ref[i] - 0.5), abs(p_cand[i] - 0.5)) < tolerance]
    worst = int(diff.argmax())
    return {
        "sequences": len(labels),
        "identical_decisions": len(flips) == 0,
        "decision_flips": len(flips),
        "flips_near_a_tie": len(near_tie),
        "max_abs_diff_p_a": float(diff.max()),
        "mean_abs_diff_p_a": float(diff.mean()),
        "worst": {
            "row": labels[worst],
            "p_reference": float(p_ref[worst]),
            "p_candidate": float(p_cand[worst]),
        },
        "spread_p_a": [float(np.quantile(p_ref, q)) for q in (0.05, 0.5, 0.95)],
        "tolerance": tolerance,
        "passed": bool(diff.max() < tolerance and len(flips) == len(near_tie)),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model folder for the vllm engine [default: tiny bf16]"
    )
    parser.add_argument(
        "--reference-model", type=Path, default=None, help="model folder for the hf engine [default: --model]"
    )
    parser.add_argument(
        "--pandalm-rows", type=int, default=96, help="PandaLM rows added to the 32 arena rows"
    )
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="bfloat16",
        help="the candidate's dtype, and the tiny model's",
    )
    parser.add_argument("--candidate", choices=["vllm", "hf"], default="vllm", help="the engine compared")
    parser.add_argument(
        "--reference-dtype", choices=DTYPES, default=None, help="the hf reference's dtype [default: --dtype]"
    )
    parser.add_argument(
        "--init-std", type=float, default=0.1, help="tiny model: weight scale (spread of P(A))"
    )
    parser.add_argument("--gpus", default=None)
    parser.add_argument("--tensor-parallel", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--json", default=None, help="write the comparison to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sequences", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.worker:
        from wsdm_serve.errors import WsdmError

        try:
            worker(args)
        except WsdmError as exc:
            raise SystemExit(f"error: {exc}") from None
        return
    raise SystemExit(0 if run(args)["passed"] else 1)


def run(args) -> dict:
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="wsdm-parity-") as scratch:
        scratch = Path(scratch)
        if args.model is None:
            from wsdm_serve.tiny import build_tiny_model

            args.model = build_tiny_model(
                scratch / "tiny-bf16",
                TOKENIZER_DIR,
                seed=0,
                hidden_size=256,
                layers=2,
                heads=4,
                kv_heads=2,
                intermediate_size=512,
                init_std=args.init_std,
                dtype=args.dtype,
            )
        sequences, letters, labels = build_sequences(args.model, args.pandalm_rows)
        sequences_path = scratch / "sequences.json"
        sequences_path.write_text(json.dumps({"sequences": sequences, "letters": letters}))
        reference_dtype = args.reference_dtype or args.dtype
        run_worker(
            "hf",
            args.reference_model or args.model,
            reference_dtype,
            args,
            sequences_path,
            scratch / "ref.npy",
        )
        run_worker(args.candidate, args.model, args.dtype, args, sequences_path, scratch / "candidate.npy")
        result = compare(
            np.load(scratch / "ref.npy"), np.load(scratch / "candidate.npy"), labels, args.tolerance
        )
    result["model"] = str(args.model)
    result["reference_model"] = str(args.reference_model or args.model)
    result["reference"] = f"hf {reference_dtype}"
    result["candidate"] = f"{args.candidate} {args.dtype}"
    print(
        f"{result['sequences']} prompts ({len(labels) // 2} rows, forward and swapped); reference P(A) 5/50/95%: "
        + " / ".join(f"{q:.3f}" for q in result["spread_p_a"])
    )
    print(
        f"identical decisions: {'yes' if result['identical_decisions'] else 'no'} "
        f"({result['decision_flips']} flips, {result['flips_near_a_tie']} of them within {args.tolerance} of a tie)"
    )
    print(
        f"max |P(A) {result['reference']} - P(A) {result['candidate']}|: {result['max_abs_diff_p_a']:.5f} "
        f"(mean {result['mean_abs_diff_p_a']:.5f}; worst {result['worst']['row']}: "
        f"{result['worst']['p_reference']:.4f} vs {result['worst']['p_candidate']:.4f})"
    )
    print(f"parity within {args.tolerance}: {'PASSED' if result['passed'] else 'FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
