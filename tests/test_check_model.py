"""`wsdm-serve check-model` and the checks `predict` runs first, on a real tiny model and on
copies of it broken in the ways real downloads and hand-edited folders break."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ARENA_SAMPLE, run_cli

from wsdm_serve.errors import WsdmError
from wsdm_serve.models.checks import check_files, check_model, preflight
from wsdm_serve.models.weights import estimate_parameters, read_safetensors_header


def invoke(*args):
    """The CLI in this process (one subprocess test covers the installed entry point)."""
    from wsdm_serve.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def files_only(path: Path):
    """Config, quantization and weight checks without the (slow to load) tokenizer."""
    return check_files(path)[0]


def facts(report) -> dict[str, str]:
    return dict(report.facts)


def only_problem(report, text: str) -> str:
    matching = [p for p in report.problems if text in p]
    assert matching, f"no problem mentions {text!r}: {report.problems}"
    assert all("\n" not in p for p in report.problems)
    return matching[0]


def test_good_model_reports_facts_and_no_problems(tiny_model_dir):
    report = check_model(tiny_model_dir)
    assert report.ok, report.problems
    found = facts(report)
    assert found["architecture"] == "Qwen2ForCausalLM (model_type qwen2)"
    assert found["quantization"] == "none"
    assert found["answer tokens"] == "A = 32, B = 33"
    assert found["size"] == "2 layers, hidden 64, vocab 151,936"
    # 2 x (151936 x 64) embedding + head, plus the two decoder layers and the final norm.
    header = read_safetensors_header(tiny_model_dir / "model.safetensors")
    expected = sum(int(np.prod(entry["shape"])) for entry in header.values())
    assert expected > 2 * 151936 * 64
    assert found["parameters"].startswith(f"~{expected / 1e6:.1f}M")


def test_check_model_cli_with_smoke_test(tiny_model_dir):
    result = run_cli(
        "wsdm-serve", "check-model", tiny_model_dir, "--smoke", "--engine", "hf", "--device", "cpu"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: no problems found" in result.stdout
    smoke = next(line for line in result.stdout.splitlines() if "smoke test" in line)
    assert re.search(r"smoke test +hf, [0-9.]+ s: P\(A\) = [0-9.]+ forward", smoke), smoke


def test_missing_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    report = check_model(model_copy)
    only_problem(report, "no weights")
    result = invoke("check-model", model_copy, "--smoke")
    assert result.exit_code == 2
    assert "no weights" in result.stdout and "smoke test" in result.stdout and "skipped" in result.stdout


def test_truncated_weights_are_detected_from_the_header(model_copy):
    weights = model_copy / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(size - 1000)
    problem = only_problem(files_only(model_copy), "truncated")
    assert f"{size - 1000:,} bytes on disk" in problem and f"describes {size:,}" in problem


def test_garbage_weights_file(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"<html>Access denied</html>")
    only_problem(files_only(model_copy), "header length is implausible")


@pytest.fixture
def sharded_copy(tiny_model_dir, tmp_path) -> Path:
    """The tiny model saved in several safetensors shards with an index."""
    import torch
    from transformers import AutoModelForCausalLM

    dest = Path(shutil.copytree(tiny_model_dir, tmp_path / "sharded"))
    (dest / "model.safetensors").unlink()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.save_pretrained(dest, max_shard_size="30MB")
    assert (dest / "model.safetensors.index.json").exists()
    return dest


def test_sharded_weights_missing_shard_and_wrong_index(sharded_copy):
    assert files_only(sharded_copy).ok
    index_path = sharded_copy / "model.safetensors.index.json"
    weight_map = json.loads(index_path.read_text())["weight_map"]
    shards = sorted(set(weight_map.values()))
    assert len(shards) >= 2
    # The index claims a tensor lives in a shard that does not hold it.
    moved = next(name for name, shard in weight_map.items() if shard == shards[0])
    edit_json(index_path, lambda d: d["weight_map"].__setitem__(moved, shards[1]))
    problem = only_problem(files_only(sharded_copy), "does not hold")
    assert shards[1] in problem and moved in problem
    # A shard that never arrived.
    (sharded_copy / shards[-1]).unlink()
    problem = only_problem(files_only(sharded_copy), "missing")
    assert "1 missing" in problem and shards[-1] in problem


def test_invalid_config_json(model_copy):
    (model_copy / "config.json").write_text('{"model_type": "qwen2", ')
    problem = only_problem(files_only(model_copy), "not valid JSON")
    assert "config.json" in problem and "line 1" in problem


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (
            lambda c: c.update(num_hidden_layers=3, layer_types=["full_attention"] * 3),
            "the weights hold 2 layers",
        ),
        (lambda c: c.update(vocab_size=1000), "vocab_size 1000"),
        (lambda c: c.update(architectures=["Qwen2ForSequenceClassification"]), "not a causal LM"),
        (lambda c: c.update(model_type="no-such-model"), "transformers cannot read it"),
        (lambda c: c.update(hidden_size="64"), "hidden_size must be a positive integer"),
    ],
    ids=["layers", "vocab", "architecture", "model-type", "hidden-size"],
)
def test_config_inconsistent_with_weights_or_unusable(model_copy, change, text):
    edit_json(model_copy / "config.json", change)
    report = files_only(model_copy)
    only_problem(report, text)


def test_untied_model_without_output_head(tmp_path, tiny_model_dir):
    from safetensors.numpy import load_file, save_file

    dest = Path(shutil.copytree(tiny_model_dir, tmp_path / "headless"))
    tensors = load_file(dest / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    only_problem(files_only(dest), "no lm_head.weight")


def test_tokenizer_without_chat_template(model_copy):
    (model_copy / "chat_template.jinja").unlink()
    edit_json(model_copy / "tokenizer_config.json", lambda c: c.pop("chat_template", None))
    only_problem(check_model(model_copy), "no chat template")
    with pytest.raises(WsdmError, match="no chat template"):
        preflight(model_copy)


def test_predict_stops_before_loading_a_broken_model(model_copy, tmp_path):
    (model_copy / "chat_template.jinja").unlink()
    out = tmp_path / "sub.csv"
    result = run_cli(
        "wsdm-serve", "predict", ARENA_SAMPLE, "--model", model_copy, "--out", out, "--engine", "hf"
    )
    assert result.returncode == 2
    assert "no chat template" in result.stderr and "check-model" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no progress bars, no traceback
    assert not out.exists()


def test_unloadable_tokenizer(model_copy):
    (model_copy / "tokenizer.json").write_text("{broken")
    only_problem(check_model(model_copy), "cannot load the tokenizer")


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    only_problem(check_model(tmp_path / "absent"), "model folder not found")
    (tmp_path / "file").write_text("x")
    only_problem(check_model(tmp_path / "file"), "is a file")
    with pytest.raises(WsdmError, match="model folder not found"):
        preflight(tmp_path / "absent")


GPTQ = {
    "quant_method": "gptq",
    "bits": 8,
    "group_size": 128,
    "desc_act": False,
    "sym": True,
    "checkpoint_format": "gptq",
}


@pytest.mark.parametrize(
    ("quant", "fact", "problem"),
    [
        (GPTQ, "gptq 8-bit, group size 128, format gptq (v1 zero points)", "no .qweight tensors"),
        (
            {**GPTQ, "checkpoint_format": "gptq_v2", "bits": 4},
            "gptq 4-bit, group size 128, format gptq_v2 (v2 zero points)",
            "no .qweight tensors",
        ),
        ({**GPTQ, "bits": 5}, "gptq 5-bit", "bits must be one of 2, 3, 4, 8"),
        (
            {
                "quant_method": "compressed-tensors",
                "format": "pack-quantized",
                "config_groups": {
                    "group_0": {
                        "targets": ["Linear"],
                        "weights": {
                            "num_bits": 8,
                            "type": "int",
                            "group_size": 128,
                            "strategy": "group",
                            "symmetric": True,
                        },
                    }
                },
            },
            "compressed-tensors pack-quantized (group_0: int8 weights, group size 128, symmetric)",
            "no .weight_packed tensors",
        ),
        ({"bits": 8}, None, "no quant_method"),
    ],
    ids=["gptq-v1", "gptq-v2", "gptq-bad-bits", "compressed-tensors", "no-method"],
)
def test_quantization_config_is_described_and_checked_against_the_weights(model_copy, quant, fact, problem):
    edit_json(model_copy / "config.json", lambda c: c.update(quantization_config=quant))
    report = files_only(model_copy)
    if fact:
        assert facts(report)["quantization"].startswith(fact)
    only_problem(report, problem)


def test_parameter_estimate_unpacks_quantized_tensors():
    header = {
        # 8-bit GPTQ: 4 values per int32 along the input dimension.
        "model.layers.0.mlp.down_proj.qweight": {"dtype": "I32", "shape": [32, 64]},
        "model.layers.0.mlp.down_proj.qzeros": {"dtype": "I32", "shape": [1, 16]},
        "model.layers.0.mlp.down_proj.scales": {"dtype": "F16", "shape": [1, 64]},
        "model.layers.0.mlp.down_proj.g_idx": {"dtype": "I32", "shape": [128]},
        "model.norm.weight": {"dtype": "F16", "shape": [64]},
    }
    assert estimate_parameters(header, {"quant_method": "gptq", "bits": 8}) == 128 * 64 + 64
