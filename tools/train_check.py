"""The whole training chain on a given real model and data, with what each stage learned.

Run from a clone's root, on a GPU (or a CPU, slowly)::

    python tools/train_check.py --model MODEL_DIR --data DATA_DIR --work WORK_DIR --out check.json

``MODEL_DIR`` is a small Qwen2-family chat model in a transformers folder (it is the student and
the one 16-bit teacher of the ``small`` preset); ``DATA_DIR`` holds ``train.parquet`` (competition
layout) and ``ut.parquet`` (ut layout, other prompts). The tool runs ``wsdm-train all --config
small --until merge`` through the real command line, then reads every run's ``metrics.jsonl`` and
prints per stage: dev accuracy at the start, at its best and at the end, the training loss at the
start and end, tokens/s, peak GPU memory and wall time; for teacher-predict the out-of-fold
accuracy of the written logits; and the accuracy of the base model and of the merged model on the
fold dev rows (every competition row is a dev row of exactly one fold; the merged model averages
fold adapters, so each row was seen in training by the other folds' adapters).

``--cudnn-repro`` then runs the teacher's post-pretraining once more with PyTorch's cuDNN attention
allowed (``sdpa_cudnn: true``), the setting that produced NaN gradients on Hopper GPUs, and
reports how it ended: the guard's one line when a non-finite number appeared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
TEACHER = "base"


def chain_settings(model: Path, data: Path, work: Path, processed: Path | None = None) -> list[str]:
    settings = {
        "paths.data_dir": data,
        "paths.processed_dir": processed or work / "processed",
        "paths.model_dir": work / "models",
        "student.model": model,
        "teachers.0.model": model,
    }
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def run(command: list[str], log: Path) -> tuple[int, str, float]:
    """Run a command with the package importable from this clone; stderr to ``log`` and returned."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    return result.returncode, result.stderr, time.time() - started


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "wsdm_train.cli", *args]


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summarize_run(run_dir: Path) -> dict:
    """Dev accuracy start / best / end, loss start / end, speed, memory and time of one run."""
    records = events(run_dir / "metrics.jsonl")
    evals = [r for r in records if r["event"] == "eval"]
    train = [r for r in records if r["event"] == "train"]
    start = next((r for r in records if r["event"] == "start"), None)
    end = next((r for r in reversed(records) if r["event"] == "end"), None)
    stopped = next((r for r in records if r["event"] == "nonfinite"), None)
    best = max(evals, key=lambda r: (r["acc"], r["step"])) if evals else None
    return {
        "run": str(run_dir),
        "finished": end is not None,
        "nonfinite": stopped,
        "dev_acc_start": evals[0]["acc"] if evals else None,
        "dev_acc_best": best["acc"] if best else None,
        "best_step": best["step"] if best else None,
        "dev_acc_end": evals[-1]["acc"] if evals else None,
        "dev_log_loss_start": evals[0]["log_loss"] if evals else None,
        "dev_log_loss_end": evals[-1]["log_loss"] if evals else None,
        "dev_rows": evals[0]["n"] if evals else None,
        "steps": end["steps"] if end else (train[-1]["step"] if train else 0),
        "loss_start": train[0]["loss"] if train else None,
        "loss_end": train[-1]["loss"] if train else None,
        "tokens_per_s": float(np.median([r["tokens_per_s"] for r in train])) if train else None,
        "peak_memory_gib": max((r["peak_memory_gib"] for r in train if "peak_memory_gib" in r), default=None),
        "seconds": round(end["time"] - start["time"], 1) if start and end else None,
    }


def teacher_predictions(work: Path) -> list[dict]:
    """Out-of-fold accuracy and finiteness of every written teacher logit file."""
    out = []
    for path in sorted((work / "models" / "teachers" / TEACHER).glob("fold*/predictions.parquet")):
        fold = path.parent.name
        frame = pd.read_parquet(path)
        dev = pd.read_parquet(work / "processed" / "teachers" / TEACHER / fold / "dev.parquet")
        oof = frame[frame["out_of_fold"]].merge(dev[["row_key", "label"]], on="row_key")
        logits = oof[["logit_a", "logit_b"]].to_numpy()
        out.append(
            {
                "file": str(path),
                "rows": len(frame),
                "finite": bool(np.isfinite(frame[["logit_a", "logit_b"]].to_numpy()).all()),
                "out_of_fold_rows": len(oof),
                "out_of_fold_acc": float(((logits[:, 1] >= logits[:, 0]).astype(int) == oof["label"]).mean()),
            }
        )
    return out


def judge_accuracy(model: Path, table: Path, work: Path, name: str, device: str) -> dict:
    """`wsdm-serve evaluate` of a model folder on a labelled table (transformers engine)."""
    json_path = work / f"eval-{name}.json"
    code, stderr, seconds = run(
        [
            sys.executable, "-m", "wsdm_serve.cli", "-q", "evaluate", str(table), "--model", str(model),
            "--engine", "hf", "--device", device, "--no-plots", "--json", str(json_path),
            "--out-dir", str(work / f"eval-{name}"),
        ],
        work / f"eval-{name}.log",
    )  # fmt: skip
    if code != 0:
        return {"model": str(model), "error": stderr.strip().splitlines()[-1] if stderr.strip() else code}
    report = json.loads(json_path.read_text())
    return {
        "model": str(model),
        "seconds": round(seconds, 1),
        **{variant: report["metrics"][variant]["accuracy"] for variant in report["variants"]},
    }


def cudnn_repro(args, work: Path) -> dict:
    """Teacher post-pretraining with cuDNN attention allowed: how did it end?"""
    repro = work / "cudnn-repro"
    command = train_command(
        "pretrain", "--config", "small", "--quiet", "--deepspeed", "none", "--device", args.device,
        "--target", TEACHER, *chain_settings(args.model, args.data, repro, processed=work / "processed"),
        "--set", "teachers.0.sdpa_cudnn=true", *args.set,
    )  # fmt: skip
    # It runs after the chain and reads the chain's processed data; only its models are its own.
    code, stderr, seconds = run(command, work / "cudnn-repro.log")
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    return {
        "exit_code": code,
        "seconds": round(seconds, 1),
        "message": last if code else None,
        "run": summarize_run(repro / "models" / "teachers" / TEACHER / "pretrain"),
    }


def stage_times(stderr: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"all: ([\w-]+): done in ([\d.]+) s", stderr)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="base model folder (student and teacher)")
    parser.add_argument("--data", type=Path, required=True, help="folder with train.parquet and ut.parquet")
    parser.add_argument("--work", type=Path, default=Path("model_save/train_check"), help="output folder")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--cudnn-repro", action="store_true", help="first run with cuDNN attention allowed")
    parser.add_argument("--set", action="append", default=[], help="extra --set for every wsdm-train call")
    args = parser.parse_args()
    args.set = [arg for item in args.set for arg in ("--set", item)]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        args.device = device

    result: dict = {"model": str(args.model), "data": str(args.data), "device": device}
    if device == "cuda":
        import torch

        result["gpu"] = torch.cuda.get_device_name(0)
        result["torch"] = torch.__version__
    command = train_command(
        "all", "--config", "small", "--until", "merge", "--deepspeed", "none", "--device", device,
        *chain_settings(args.model, args.data, work), *args.set,
    )  # fmt: skip
    code, stderr, seconds = run(command, work / "all.log")
    result["all"] = {
        "exit_code": code,
        "seconds": round(seconds, 1),
        "stage_seconds": stage_times(stderr),
        "last_line": stderr.strip().splitlines()[-1] if stderr.strip() else "",
    }
    models = work / "models"
    runs = {
        "pretrain-student": models / "student" / "pretrain",
        f"pretrain-{TEACHER}": models / "teachers" / TEACHER / "pretrain",
    }
    for fold_dir in sorted((models / "teachers" / TEACHER).glob("fold*")):
        runs[f"finetune-{TEACHER}-{fold_dir.name}"] = fold_dir
    for fold_dir in sorted((models / "student").glob("fold*")):
        runs[f"distill-{fold_dir.name}"] = fold_dir
    result["runs"] = {name: summarize_run(path) for name, path in runs.items() if path.exists()}
    result["teacher_predict"] = teacher_predictions(work)
    table = args.data / "train.parquet"
    result["base_on_fold_dev_rows"] = judge_accuracy(args.model, table, work, "base", device)
    if (models / "merged" / "config.json").exists():
        result["merged_on_fold_dev_rows"] = judge_accuracy(models / "merged", table, work, "merged", device)
    if (args.data / "heldout.parquet").exists():
        held = args.data / "heldout.parquet"
        result["base_on_heldout"] = judge_accuracy(args.model, held, work, "base-heldout", device)
        if (models / "merged" / "config.json").exists():
            result["merged_on_heldout"] = judge_accuracy(
                models / "merged", held, work, "merged-heldout", device
            )

    print(f"all: exit {code} in {seconds:.0f} s; {result['all']['last_line']}")
    header = (
        f"{'run':28} {'dev acc start->best (end)':28} {'loss start->end':18} {'tok/s':>8} {'GiB':>6} {'s':>6}"
    )
    print(header)
    for name, item in result["runs"].items():

        def fmt(value, spec=".3f"):
            return "-" if value is None else format(value, spec)

        acc = f"{fmt(item['dev_acc_start'])}->{fmt(item['dev_acc_best'])} ({fmt(item['dev_acc_end'])})"
        loss = f"{fmt(item['loss_start'])}->{fmt(item['loss_end'])}"
        print(
            f"{name:28} {acc:28} {loss:18} {fmt(item['tokens_per_s'], ',.0f'):>8} "
            f"{fmt(item['peak_memory_gib'], '.1f'):>6} {fmt(item['seconds'], '.0f'):>6}"
        )
    for item in result["teacher_predict"]:
        print(
            f"teacher-predict {item['file']}: finite {item['finite']}, out-of-fold acc {item['out_of_fold_acc']:.3f}"
        )
    for key in ("base_on_fold_dev_rows", "merged_on_fold_dev_rows", "base_on_heldout", "merged_on_heldout"):
        if key in result:
            print(key, json.dumps(result[key]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.cudnn_repro:  # after the chain: its numbers matter more if time runs short
        result["cudnn_repro"] = cudnn_repro(args, work)
        print("cudnn repro:", json.dumps(result["cudnn_repro"], indent=1)[:3000], flush=True)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(0 if code == 0 else 1)


if __name__ == "__main__":
    main()
