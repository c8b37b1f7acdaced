"""GPU check of the training stages: memory and speed at the real shapes, and a loss that goes down.

Run on one CUDA GPU from a clone's root::

    python tools/gpu_train_check.py --out gpu_train_check.json

1. ``student-16bit``: one optimizer step of LoRA (r 64 on all seven projections) on a bf16 model of
   the Qwen2.5-14B shape (random weights), gradient checkpointing on, 2048-token sequences.
2. ``teacher-4bit``: the same model saved and reloaded through the training loader as 4-bit nf4
   (double quant, bf16 compute) with ``prepare_model_for_kbit_training``: one QLoRA step.
3. ``distill``: a short distillation run of a small random student, through the real training
   loop, on rows with a learnable rule and teachers that know it: the loss must go down.

Each check reports peak GPU memory and tokens/s. A missing optional package (bitsandbytes,
deepspeed) skips only the checks that need it, with one line saying which wheel to install.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from wsdm_serve.tiny import QWEN25_14B_SHAPE  # noqa: E402

QWEN25_14B = QWEN25_14B_SHAPE


def optional(name: str, hint: str):
    try:
        return __import__(name)
    except ImportError:
        print(f"SKIP: {name} is not installed ({hint})", flush=True)
        return None


def gib(n_bytes: int) -> float:
    return round(n_bytes / 2**30, 2)


def lora_step(head, seq_len: int, batch: int, steps: int = 2) -> dict:
    """``steps`` optimizer steps on random tokens; the last one is timed (the first warms up)."""
    import torch

    from wsdm_train.training.modeling import two_way_ce

    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    head.train()
    torch.cuda.reset_peak_memory_stats()
    timings = []
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, 150000, (batch, seq_len), device="cuda")
        mask = torch.ones_like(ids)
        labels = torch.randint(0, 2, (batch,), device="cuda")
        torch.cuda.synchronize()
        started = time.perf_counter()
        letters, _ = head(ids, mask)
        loss = two_way_ce(letters, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
        losses.append(float(loss))
    step_s = timings[-1]
    return {
        "seq_len": seq_len,
        "batch": batch,
        "step_s": round(step_s, 3),
        "tokens_per_s": round(batch * seq_len / step_s, 1),
        "peak_memory_gib": gib(torch.cuda.max_memory_allocated()),
        "trainable_params": sum(p.numel() for p in params),
        "losses": losses,
    }


def check_student(model_dir: Path, seq_len: int, batch: int) -> dict:
    from wsdm_train.training.modeling import (
        LetterHead,
        LoadSettings,
        LoraSettings,
        attach_lora,
        gradient_checkpointing_active,
        load_base_model,
    )

    base = load_base_model(
        model_dir, LoadSettings(dtype="bfloat16", gradient_checkpointing=True), "cuda", training=True
    )
    model = attach_lora(base, LoraSettings())
    assert gradient_checkpointing_active(model), "gradient checkpointing is not on"
    head = LetterHead(model, (32, 33)).cuda()
    result = lora_step(head, seq_len, batch)
    result["gradient_checkpointing"] = True
    del head, model, base
    return result


def check_teacher_4bit(model_dir: Path, seq_len: int, batch: int) -> dict:
    from wsdm_train.training.modeling import (
        LetterHead,
        LoadSettings,
        LoraSettings,
        attach_lora,
        gradient_checkpointing_active,
        load_base_model,
    )

    started = time.perf_counter()
    base = load_base_model(
        model_dir, LoadSettings(load_in_4bit=True, gradient_checkpointing=True), "cuda", training=True
    )
    load_s = time.perf_counter() - started
    model = attach_lora(base, LoraSettings())
    assert gradient_checkpointing_active(model), "gradient checkpointing is not on"
    quantized = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
    head = LetterHead(model, (32, 33))
    result = lora_step(head, seq_len, batch)
    result.update(load_s=round(load_s, 1), linear4bit_modules=quantized, gradient_checkpointing=True)
    del head, model, base
    return result


def make_14b_checkpoint(dest: Path, layers: int) -> Path:
    """A random bf16 model of the 14B shape, initialised on the GPU (fast) and saved for loading."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests" / "assets" / "qwen2.5-tokenizer")
    config = Qwen2Config(**{**QWEN25_14B, "num_hidden_layers": layers}, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(dest, max_shard_size="5GB")
    tokenizer.save_pretrained(dest)
    del model
    return dest


def check_distill(steps_epochs: int, deepspeed: str | None) -> dict:
    """A small student distilled through the real loop; the loss must fall and dev accuracy rise."""
    import numpy as np
    import torch
    from train_data import rule_examples
    from transformers import AutoTokenizer

    from wsdm_serve.tiny import build_tiny_model
    from wsdm_train.config import EvalCadence, StageSettings
    from wsdm_train.training.modeling import (
        LetterHead,
        LoadSettings,
        LoraSettings,
        attach_lora,
        load_base_model,
    )
    from wsdm_train.training.stages import distillation_loss
    from wsdm_train.training.trainer import (
        StageRun,
        init_distributed,
        resolve_deepspeed_config,
        run_stage,
        seed_everything,
    )

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests" / "assets" / "qwen2.5-tokenizer")
    work = Path(tempfile.mkdtemp(prefix="wsdm-distill-"))
    model_dir = build_tiny_model(
        work / "student",
        ROOT / "tests" / "assets" / "qwen2.5-tokenizer",
        seed=3,
        hidden_size=256,
        layers=4,
        heads=8,
        kv_heads=4,
        intermediate_size=704,
    )
    train = rule_examples(tokenizer, 1024, seed=11)
    dev = rule_examples(tokenizer, 128, seed=12)
    rng = np.random.default_rng(0)
    # Three teachers that know the rule with different confidence and some noise, [n, 3, 2].
    sign = np.where(train.labels[:, None] == 0, 1.0, -1.0)
    scale = np.array([3.0, 2.0, 1.0])[None, :]
    margin = sign * scale + rng.normal(0, 0.5, size=(len(train), 3))
    train.teacher = np.stack([margin / 2, -margin / 2], axis=-1).astype(np.float32)

    ds_path = resolve_deepspeed_config(deepspeed)
    ctx = init_distributed(ds_path is not None, "cuda")
    seed_everything(1234)
    base = load_base_model(
        model_dir, LoadSettings(dtype="bfloat16", gradient_checkpointing=True), "cuda", training=True
    )
    head = LetterHead(attach_lora(base, LoraSettings(r=16, alpha=32, dropout=0.05)), (32, 33)).cuda()
    settings = StageSettings(
        epochs=steps_epochs,
        learning_rate=2e-3,
        effective_batch=16,
        per_device_batch=8,
        warmup_ratio=0.015,
        log_every=4,
        eval=EvalCadence(every_steps=32, start_fraction=0.0),
    )
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = run_stage(
        StageRun(
            "gpu-distill",
            work / "out",
            settings,
            head,
            train,
            dev,
            distillation_loss(1.0, "reference"),
            tokenizer.pad_token_id,
            ctx,
            deepspeed=ds_path,
            progress=True,
            bf16=True,
        )
    )
    elapsed = time.perf_counter() - started
    log = [json.loads(line) for line in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if e["event"] == "train"]
    evals = [(e["step"], round(e["acc"], 4), round(e["log_loss"], 4)) for e in log if e["event"] == "eval"]
    first, last = float(np.mean(losses[:3])), float(np.mean(losses[-3:]))
    shutil.rmtree(work, ignore_errors=True)
    return {
        "deepspeed": str(ds_path) if ds_path else None,
        "steps": result.steps,
        "seconds": round(elapsed, 1),
        "loss_first": round(first, 4),
        "loss_last": round(last, 4),
        "loss_went_down": last < first * 0.8,
        "evals": evals,
        "best_acc": result.best_acc,
        "peak_memory_gib": gib(torch.cuda.max_memory_allocated()),
        "ok": last < first * 0.8 and result.best_acc >= 0.8,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("gpu_train_check.json"))
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--student-batch", type=int, default=1, help="Reference: 1 sequence per GPU.")
    parser.add_argument("--teacher-batch", type=int, default=1, help="Reference (70B teachers): 4 per GPU.")
    parser.add_argument("--layers", type=int, default=48, help="Fewer layers for a quicker smoke run.")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Where the 14B-shape checkpoint is written."
    )
    parser.add_argument("--skip", action="append", default=[], choices=["student", "teacher", "distill"])
    parser.add_argument("--distill-epochs", type=int, default=2)
    parser.add_argument("--deepspeed", default=None, help="zero2 / zero3 / JSON for the distill check.")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible", file=sys.stderr)
        return 2
    report: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "total_memory_gib": gib(torch.cuda.get_device_properties(0).total_memory),
    }
    import peft
    import transformers

    report.update(transformers=transformers.__version__, peft=peft.__version__)
    bnb = optional("bitsandbytes", "pip install bitsandbytes==0.50.2 (py3-none-manylinux_2_24_x86_64 wheel)")
    ds = (
        optional("deepspeed", "pip install deepspeed==0.19.8 (py3-none-any wheel)")
        if args.deepspeed
        else None
    )
    report["bitsandbytes"] = getattr(bnb, "__version__", None)
    if args.deepspeed:
        report["deepspeed"] = getattr(ds, "__version__", None)

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wsdm-14b-"))
    needs_checkpoint = "student" not in args.skip or ("teacher" not in args.skip and bnb is not None)
    checkpoint = None
    try:
        if needs_checkpoint:
            started = time.perf_counter()
            checkpoint = make_14b_checkpoint(workdir / "qwen2.5-14b-shape", args.layers)
            report["checkpoint_s"] = round(time.perf_counter() - started, 1)
            report["layers"] = args.layers
            gc.collect()
            torch.cuda.empty_cache()
        if "student" not in args.skip:
            report["student_16bit"] = check_student(checkpoint, args.seq_len, args.student_batch)
            print(json.dumps({"student_16bit": report["student_16bit"]}), flush=True)
            save()
            gc.collect()
            torch.cuda.empty_cache()
        if "teacher" not in args.skip:
            if bnb is None:
                report["teacher_4bit"] = "skipped: bitsandbytes not installed"
            else:
                report["teacher_4bit"] = check_teacher_4bit(checkpoint, args.seq_len, args.teacher_batch)
            print(json.dumps({"teacher_4bit": report["teacher_4bit"]}), flush=True)
            save()
            gc.collect()
            torch.cuda.empty_cache()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if "distill" not in args.skip:
        if args.deepspeed and ds is None:
            report["distill"] = "skipped: deepspeed not installed"
        else:
            report["distill"] = check_distill(args.distill_epochs, args.deepspeed)
        print(json.dumps({"distill": report["distill"]}), flush=True)
    save()
    print(json.dumps(report, indent=2))
    ok = isinstance(report.get("distill"), str) or report.get("distill", {}).get("ok", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
