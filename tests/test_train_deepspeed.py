"""The DeepSpeed backend (ZeRO-2 and ZeRO-3 from the shipped configs) on CPU, one process.

Skipped when deepspeed is not installed (it is the optional ``wsdm[deepspeed]`` extra). Runs in a
subprocess because DeepSpeed starts a process group that would outlive the test.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed not installed (pip install 'wsdm[deepspeed]')",
)

SCRIPT = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from transformers import AutoTokenizer
from train_data import rule_examples
from wsdm_serve.tiny import build_tiny_model
from wsdm_train.training.modeling import LetterHead, LoadSettings, LoraSettings, attach_lora, load_base_model
from wsdm_train.training.stages import two_way_loss
from wsdm_train.config import EvalCadence, StageSettings
from wsdm_train.training.trainer import StageRun, init_distributed, resolve_deepspeed_config, run_stage, seed_everything

out = Path(sys.argv[1]); tests = Path(sys.argv[2])
tok = AutoTokenizer.from_pretrained(tests / "assets" / "qwen2.5-tokenizer")
model_dir = build_tiny_model(out / "m", tests / "assets" / "qwen2.5-tokenizer", hidden_size=32, layers=2,
                             heads=4, kv_heads=2, intermediate_size=64)
train, dev = rule_examples(tok, 8, seed=1), rule_examples(tok, 4, seed=2)
ctx = init_distributed(True, "cpu")
report = {}
for stage in ("zero2", "zero3"):
    seed_everything(0)
    base = load_base_model(model_dir, LoadSettings(dtype="float32"), "cpu", training=True)
    head = LetterHead(attach_lora(base, LoraSettings(r=4, alpha=8, dropout=0.0)), (32, 33))
    settings = StageSettings(epochs=1, learning_rate=1e-3, effective_batch=4, per_device_batch=2, warmup_steps=1,
                             log_every=1, eval=EvalCadence(every_steps=1))
    result = run_stage(StageRun(stage, out / stage, settings, head, train, dev, two_way_loss, tok.pad_token_id, ctx,
                                deepspeed=resolve_deepspeed_config(stage), progress=False))
    report[stage] = {"steps": result.steps, "best": result.best_acc}
print(json.dumps(report))
"""


def test_zero2_and_zero3_train_and_save_adapters(tmp_path):
    tests = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(tests)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for stage in ("zero2", "zero3"):
        assert report[stage]["steps"] == 2
        for kind in ("best", "final"):
            assert (tmp_path / stage / kind / "adapter_model.safetensors").exists()
        assert (tmp_path / stage / "last" / "engine").is_dir()
        log = [json.loads(line) for line in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
        losses = [e["loss"] for e in log if e["event"] == "train"]
        assert len(losses) == 2 and all(0 < v < 5 for v in losses)
