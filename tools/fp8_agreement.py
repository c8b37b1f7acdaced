"""How faithful is each FP8 recipe to bf16 on a real judge? One process, one GPU, a few minutes.

The rows of a labelled table (``id, prompt, response_a, response_b, winner``; ties left out), and
optionally of an unlabelled one (``--unlabelled``: counted for agreement, not accuracy), are
prompted once by a :class:`~wsdm_serve.judge.Judge` (the package's truncation and prompt), then
scored, forward order, by the vllm engine once per recipe: bf16 first (the reference), then

  online:fp8                  vLLM's own online FP8 (``quantization="fp8"``: one scale per weight
                              tensor), what the first FP8 measurement used
  online:per-channel          ``--precision fp8`` on the bf16 folder: vLLM quantizes it at load with
                              the default recipe (per-channel weights, per-token activations)
  ckpt:RECIPE                 the folder `wsdm-serve convert --to fp8` writes with RECIPE, e.g.
                              per-channel, per-channel+first-last, per-channel+down-proj,
                              per-channel+first-last+down-proj, per-channel+kv-fp8, per-tensor
  gptq8                       the GPTQ checkpoint given with --gptq, as it is (Machete kernel)
  gptq8-ckpt:RECIPE           that GPTQ checkpoint converted --to fp8 (through its exact weights)

For each: decision agreement with bf16, mean / p99 / max |dP(A)|, accuracy on the labels and its
change, and agreement on near-tie rows (|P_bf16(A) - 0.5| < --near-tie) against the rest. The
target: >= 98.5% agreement and accuracy within 0.5 points. Results are printed as each recipe ends
and written (atomically) to --json after each one, so a run cut short keeps what it measured.

    PYTHONPATH=/tmp/site:$PWD python tools/fp8_agreement.py --model BF16_DIR --data held_out.parquet \\
        [--unlabelled more_rows.parquet] [--gptq GPTQ_DIR] --json fp8_agreement.json

``--engine hf`` runs the bf16 reference and the checkpoint recipes with the transformers engine
(weights decompressed, activations not quantized): a check of the tool on a CPU, not of FP8.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_RECIPES = (
    "bf16",
    "online:fp8",
    "online:per-channel",
    "ckpt:per-channel",
    "ckpt:per-channel+first-last",
    "ckpt:per-channel+down-proj",
    "ckpt:per-channel+first-last+down-proj",
    "ckpt:per-channel+kv-fp8",
    "gptq8",
    "gptq8-ckpt:per-channel",
)
TARGET_AGREEMENT = 0.985
TARGET_ACCURACY_DELTA = 0.005


def compare(p_ref, p, labels, near_tie: float) -> dict:
    """Agreement of ``p`` (P(A) per row) with the reference ``p_ref``, and accuracy on ``labels``.

    ``labels`` may cover only the first rows (the --data table): the rows after them (--unlabelled)
    count towards agreement, not accuracy, and both parts' agreement is reported."""
    import numpy as np

    from wsdm_serve.metrics import accuracy, picks_a

    p_ref, p = np.asarray(p_ref, dtype=np.float64), np.asarray(p, dtype=np.float64)
    same = picks_a(p) == picks_a(p_ref)
    diff = np.abs(p - p_ref)
    near = np.abs(p_ref - 0.5) < near_tie
    labelled = len(labels)
    acc, acc_ref = accuracy(p[:labelled], labels), accuracy(p_ref[:labelled], labels)
    result = {
        "rows": len(p),
        "decision_agreement": float(same.mean()),
        "flips": int((~same).sum()),
        "mean_abs_dp": float(diff.mean()),
        "p99_abs_dp": float(np.quantile(diff, 0.99)),
        "max_abs_dp": float(diff.max()),
        "accuracy": acc,
        "accuracy_delta": acc - acc_ref,
        "near_tie_rows": int(near.sum()),
        "near_tie_agreement": float(same[near].mean()) if near.any() else None,
        "other_rows_agreement": float(same[~near].mean()) if (~near).any() else None,
        "flips_near_tie": int((~same & near).sum()),
    }
    if labelled < len(p):
        result["labelled_agreement"] = float(same[:labelled].mean())
        result["unlabelled_agreement"] = float(same[labelled:].mean())
    result["meets_target"] = bool(
        result["decision_agreement"] >= TARGET_AGREEMENT
        and abs(result["accuracy_delta"]) <= TARGET_ACCURACY_DELTA
    )
    return result


def plan_recipe(name: str, args, workdir: Path) -> dict | None:
    """What a recipe name means: the folder to score, the engine settings; None when not runnable."""
    from wsdm_serve.models.fp8 import Fp8Recipe

    model, gptq = Path(args.model), Path(args.gptq) if args.gptq else None
    if name == "bf16":
        return {"folder": model, "precision": "checkpoint", "extra": {}}
    if name == "online:fp8":
        return {"folder": model, "precision": "checkpoint", "extra": {"quantization": "fp8"}, "online": True}
    if name.startswith("online:"):
        recipe = Fp8Recipe.parse(name[len("online:") :])
        return {"folder": model, "precision": "fp8", "recipe": recipe, "extra": {}, "online": True}
    if name == "gptq8":
        return (
            None if gptq is None else {"folder": gptq, "precision": "checkpoint", "extra": {}, "gptq": True}
        )
    for prefix, source in (("ckpt:", model), ("gptq8-ckpt:", gptq)):
        if name.startswith(prefix):
            if source is None:
                return None
            recipe = Fp8Recipe.parse(name[len(prefix) :])
            target = workdir / name.replace(":", "-").replace("+", "_")
            return {
                "folder": target,
                "convert": (source, recipe),
                "precision": "fp8",
                "recipe": recipe,
                "extra": {},
            }
    raise SystemExit(f"--recipes {name}: unknown recipe (see --help)")


def score(plan: dict, prompts, letters, args):
    """P(A) of every prompt with one engine, started for this recipe and closed after it."""
    from wsdm_serve.engines.settings import EngineSettings
    from wsdm_serve.tta import softmax2

    started = time.perf_counter()
    if args.engine == "vllm":
        from wsdm_serve.engines.vllm import VLLMEngine

        settings = EngineSettings(
            name="vllm",
            max_model_len=prompts.longest + 1,
            enforce_eager=True,
            gpu_memory_utilization=args.gpu_memory_utilization,
            precision=plan["precision"],
        )
        engine = VLLMEngine(
            plan["folder"],
            letters,
            prompts.longest,
            settings,
            fp8_recipe=plan.get("recipe"),
            extra_args=plan["extra"],
        )
        described = engine.describe()
    else:
        from wsdm_serve.engines.hf import HFEngine

        settings = EngineSettings(name="hf", device=args.device, dtype=args.hf_dtype)
        engine = HFEngine(plan["folder"], letters, settings)
        described = f"hf: {engine.device}, {engine.dtype}"
    up = time.perf_counter() - started
    try:
        scored = time.perf_counter()
        p_a = softmax2(engine.score(prompts.token_ids))[:, 0]
        seconds = time.perf_counter() - scored
    finally:
        engine.close()
    return p_a, {"engine": described, "startup_s": round(up, 1), "score_s": round(seconds, 1)}


def measure(plan: dict, prompts, letters, table, reference, args) -> dict:
    """Convert when the recipe needs a checkpoint, score, compare with the reference (or itself)."""
    from wsdm_serve.models.convert import convert_checkpoint

    convert_s = 0.0
    if "convert" in plan and not plan["folder"].exists():
        source, recipe = plan["convert"]
        convert_s = convert_checkpoint(
            source, plan["folder"], to="fp8", recipe=recipe, progress=False
        ).seconds
    p_a, info = score(plan, prompts, letters, args)
    result = {**compare(p_a if reference is None else reference, p_a, table.labels, args.near_tie), **info}
    if convert_s:
        result["convert_s"] = round(convert_s, 1)
    return {**result, "p_a": p_a}


def joined(first, second):
    """One set of rows from two tables (ids need not be unique across them: only order matters)."""
    from wsdm_serve.data import ArenaRows

    return ArenaRows(
        ids=[*first.ids, *second.ids],
        prompts=[*first.prompts, *second.prompts],
        responses_a=[*first.responses_a, *second.responses_a],
        responses_b=[*first.responses_b, *second.responses_b],
        null_text_cells=first.null_text_cells + second.null_text_cells,
    )


def print_row(name: str, result: dict) -> None:
    for key in ("skipped", "failed"):
        if key in result:
            print(f"{name:40s} {key}: {result[key]}", flush=True)
            return
    near = result["near_tie_agreement"]
    print(
        f"{name:40s} {100 * result['decision_agreement']:6.2f}% {result['flips']:5d} "
        f"{result['mean_abs_dp']:8.4f} {result['p99_abs_dp']:8.4f} {result['max_abs_dp']:7.4f} "
        f"{result['accuracy']:7.4f} {100 * result['accuracy_delta']:+6.2f} "
        f"{'-' if near is None else f'{100 * near:6.2f}%':>8s} {100 * (result['other_rows_agreement'] or 0):6.2f}% "
        f"{'yes' if result['meets_target'] else 'no':>4s} {result['startup_s']:6.1f} {result['score_s']:6.1f}",
        flush=True,
    )


def run(args) -> dict:
    import numpy as np

    from wsdm_serve.data import arena_rows_from_frame, read_table
    from wsdm_serve.evaluate import load_labelled
    from wsdm_serve.judge import Judge
    from wsdm_serve.outputs import atomic_write
    from wsdm_serve.settings import JudgeSettings

    started = time.time()
    table = load_labelled(args.data, args.rows)
    rows = arena_rows_from_frame(table.frame, args.data)
    if args.unlabelled:
        rows = joined(rows, arena_rows_from_frame(read_table(args.unlabelled), args.unlabelled))
    with Judge(JudgeSettings(model=Path(args.model), tta="none", progress=False)) as judge:
        prompts = judge.prompts(rows)  # the package's truncation and judge prompt, forward order
        letters = judge.letters
    tokens = int(prompts.n_tokens.sum())
    print(
        f"{len(rows)} rows ({len(table.labels)} labelled, {table.ties} ties left out), {tokens:,} tokens, "
        f"longest {prompts.longest}; prompted in {time.time() - started:.1f} s",
        flush=True,
    )
    report = {"model": str(args.model), "gptq": args.gptq, "data": str(args.data), "rows": len(rows)}
    report.update(labelled_rows=len(table.labels), unlabelled=args.unlabelled)
    report.update(tokens=tokens, near_tie=args.near_tie, engine=args.engine, recipes={})
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wsdm-fp8-"))
    workdir.mkdir(parents=True, exist_ok=True)
    header = (
        f"{'recipe':40s} {'agree':>7s} {'flips':>5s} {'mean|dP|':>8s} {'p99|dP|':>8s} {'max|dP|':>7s} "
        f"{'acc':>7s} {'dacc pt':>6s} {'near-tie':>8s} {'rest':>7s} {'ok':>4s} {'start':>6s} {'score':>6s}"
    )
    reference = None
    try:
        for name in args.recipes.split(","):
            name = name.strip()
            plan = plan_recipe(name, args, workdir)
            if plan is None:
                result = {"skipped": "needs --gptq"}
            elif args.engine == "hf" and (plan.get("online") or plan.get("gptq")):
                result = {"skipped": "needs the vllm engine"}
            elif reference is None and name != "bf16":
                raise SystemExit("--recipes must start with bf16: it is the reference")
            else:
                try:
                    result = measure(plan, prompts, letters, table, reference, args)
                except Exception as error:  # one recipe that vLLM refuses must not cost the others
                    if reference is None:
                        raise
                    result = {"failed": f"{type(error).__name__}: {error}"[:500]}
                if reference is None:
                    reference = result.pop("p_a")
                    np.save(workdir / "bf16_p_a.npy", reference)
                result.pop("p_a", None)
            if name == "bf16":
                print(header, flush=True)
            report["recipes"][name] = result
            print_row(name, result)
            if args.json:
                text = json.dumps(report, indent=1)
                atomic_write(args.json, lambda tmp, text=text: tmp.write_text(text))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    measured = {k: v for k, v in report["recipes"].items() if "meets_target" in v and k != "bf16"}
    met = [k for k, v in measured.items() if v["meets_target"] and not k.startswith("gptq8")]
    report["fp8_recipes_meeting_target"] = met
    print(
        f"\nFP8 recipes meeting the target (>= {100 * TARGET_AGREEMENT:.1f}% agreement, accuracy within "
        f"{100 * TARGET_ACCURACY_DELTA:.1f} points): {', '.join(met) or 'none'}; {time.time() - started:.0f} s in all"
    )
    if args.json:
        text = json.dumps(report, indent=1)
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
        print(f"results -> {args.json}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="the bf16 judge (reference and source of the FP8 recipes)"
    )
    parser.add_argument(
        "--data", required=True, help="labelled table: id, prompt, response_a, response_b, winner"
    )
    parser.add_argument(
        "--gptq",
        default=None,
        help="an 8-bit GPTQ or compressed-tensors checkpoint of the same judge (optional)",
    )
    parser.add_argument("--recipes", default=",".join(DEFAULT_RECIPES), help="comma-separated, bf16 first")
    parser.add_argument(
        "--unlabelled",
        default=None,
        help="a second table (id, prompt, response_a, response_b) scored for agreement only",
    )
    parser.add_argument("--rows", type=int, default=None, help="only the first N rows of --data")
    parser.add_argument(
        "--near-tie", type=float, default=0.05, help="|P_bf16(A) - 0.5| below this is a near tie"
    )
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--device", default="cpu", help="--engine hf: device")
    parser.add_argument("--hf-dtype", default="bfloat16", help="--engine hf: dtype")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    parser.add_argument("--workdir", default=None, help="keep the converted FP8 folders here [default: temp]")
    parser.add_argument("--json", default=None, help="write the results here (after every recipe)")
    return parser


if __name__ == "__main__":
    run(build_parser().parse_args())
