"""``--precision checkpoint|fp8``: what each engine runs, the GPU plan, one-line refusals, and
``-q`` hiding the libraries' own loading bars.

vLLM needs a CUDA GPU; the one test that runs FP8 in it skips here and runs where vLLM imports
and an FP8-capable GPU is visible.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ARENA_SAMPLE, PANDALM_TRAIN, TOKENIZER_DIR, run_cli, run_cli_loud
from tests.test_gpu_plan import A100_40X3, GPTQ8, H100, L4X4, QWEN25_14B, QWEN25_14B_GPTQ8, T4X2
from wsdm_serve.engines.gpu_plan import GIB, plan_gpus
from wsdm_serve.engines.select import resolve_engine
from wsdm_serve.engines.settings import EngineSettings
from wsdm_serve.errors import WsdmError
from wsdm_serve.models.fp8 import Fp8Recipe, keep_recipe, matches, online_arguments
from wsdm_serve.models.precision import check_model_precision, checkpoint_kind, vllm_arguments
from wsdm_serve.models.shape import estimate_weight_bytes
from wsdm_serve.settings import JudgeSettings, settings_from_options

FP8_CHECKPOINT = {
    **QWEN25_14B,
    "quantization_config": {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"type": "float", "num_bits": 8, "strategy": "channel", "symmetric": True},
                "input_activations": {"type": "float", "num_bits": 8, "strategy": "token", "dynamic": True},
            }
        },
        "ignore": ["lm_head"],
    },
}


# ----------------------------------------------------------------------------- GPU plan
def test_fp8_counts_linear_weights_at_one_byte():
    bf16 = estimate_weight_bytes(QWEN25_14B, "bfloat16")
    fp8 = estimate_weight_bytes(QWEN25_14B, "bfloat16", fp8=True)
    gptq8 = estimate_weight_bytes(QWEN25_14B_GPTQ8, "bfloat16")
    checkpoint = estimate_weight_bytes(FP8_CHECKPOINT, "bfloat16")
    # 13.2 B linear parameters at one byte + the bf16 embeddings and head (3.1 GB).
    assert 15.0 < fp8 / GIB < 15.5 and fp8 == checkpoint
    assert fp8 < gptq8 < bf16  # GPTQ carries a scale and a zero point per group of 128
    plan = plan_gpus(QWEN25_14B, H100, longest_prompt=10_200, settings=EngineSettings(precision="fp8"))
    assert "with FP8 weights" in plan.describe() and "~15.2 GiB of weights" in plan.describe()


@pytest.mark.parametrize("gpus", [A100_40X3, T4X2])
def test_fp8_on_gpus_without_fp8_tensor_cores_is_one_line(gpus):
    with pytest.raises(WsdmError, match=r"has no FP8 tensor cores \(needs compute capability 8.9\+"):
        plan_gpus(QWEN25_14B, gpus, longest_prompt=1000, settings=EngineSettings(precision="fp8"))


def test_fp8_runs_on_ada_gpus():
    plan = plan_gpus(QWEN25_14B, L4X4, longest_prompt=1000, settings=EngineSettings(precision="fp8"))
    assert plan.fp8 and plan.dtype == "bfloat16"


# ----------------------------------------------------------------------------- what runs
def test_checkpoint_kinds():
    assert checkpoint_kind(QWEN25_14B) == "full"
    assert checkpoint_kind(QWEN25_14B_GPTQ8) == "integer"
    assert checkpoint_kind(FP8_CHECKPOINT) == "fp8"


def test_vllm_arguments_per_precision_and_checkpoint():
    assert vllm_arguments(QWEN25_14B, "checkpoint") == {}
    assert vllm_arguments(QWEN25_14B_GPTQ8, "checkpoint") == {}  # never name gptq: vLLM picks Machete
    assert vllm_arguments(QWEN25_14B, "fp8") == {"quantization": "fp8_per_channel"}
    assert vllm_arguments(FP8_CHECKPOINT, "fp8") == {}  # the checkpoint already is FP8
    assert vllm_arguments(FP8_CHECKPOINT, "fp8", Fp8Recipe(kv_cache_fp8=True)) == {"kv_cache_dtype": "fp8"}
    kept = online_arguments(Fp8Recipe.parse("per-tensor+first-last+down-proj+kv-fp8"), 48)
    assert kept == {
        "quantization": "online",
        "quantization_config": {
            "linear": "fp8_per_tensor",
            "ignore": [r"re:(.*\.)?layers\.(0|47)\.", r"re:.*\.down_proj$"],
        },
        "kv_cache_dtype": "fp8",
    }


def test_recipe_patterns_pick_the_right_layers():
    recipe = keep_recipe("first-last,down-proj")
    patterns = recipe.ignore(48)
    assert matches("lm_head", patterns)
    for kept in (
        "model.layers.0.self_attn.q_proj",
        "model.layers.47.mlp.gate_proj",
        "model.layers.5.mlp.down_proj",
    ):
        assert matches(kept, patterns), kept
    for quantized in (
        "model.layers.4.self_attn.o_proj",
        "model.layers.40.mlp.up_proj",
        "model.layers.10.mlp.gate_proj",
    ):
        assert not matches(quantized, patterns), quantized
    assert keep_recipe("none") == Fp8Recipe() and recipe.name == "per-channel+first-last+down-proj"
    with pytest.raises(WsdmError, match="unknown part 'fast'"):
        Fp8Recipe.parse("per-channel+fast")


def test_fp8_on_an_integer_checkpoint_names_the_convert_command(tmp_path):
    with pytest.raises(WsdmError) as caught:
        check_model_precision(tmp_path / "final_model", QWEN25_14B_GPTQ8, "fp8")
    message = str(caught.value)
    assert (
        f"wsdm-serve convert {tmp_path / 'final_model'} --to fp8 --out {tmp_path / 'final_model-fp8'}"
        in message
    )
    assert "\n" not in message
    check_model_precision(tmp_path, QWEN25_14B_GPTQ8, "checkpoint")
    check_model_precision(tmp_path, FP8_CHECKPOINT, "fp8")


def test_fp8_with_the_hf_engine_or_on_cpus_is_refused_before_any_work():
    with pytest.raises(WsdmError, match="vllm engine only"):
        resolve_engine(EngineSettings(name="hf", precision="fp8"))
    for options in (
        EngineSettings(device="cpu", precision="fp8"),
        EngineSettings(name="hf", device="cpu", precision="fp8"),
    ):
        with pytest.raises(WsdmError, match="fp8 needs FP8 tensor cores|vllm engine only"):
            resolve_engine(options)
    with pytest.raises(WsdmError, match="neither engine runs it on CPUs"):
        resolve_engine(EngineSettings(device="cpu", precision="fp8"))
    with pytest.raises(WsdmError, match="--precision int4: choose one of checkpoint, fp8"):
        resolve_engine(EngineSettings(precision="int4"))


def test_the_judges_precision_is_the_engine_settings_precision(tmp_path):
    """Precision lives in one place, the engine's settings; the judge's settings only read it."""
    config = settings_from_options(tmp_path, precision="fp8")
    assert config.engine.precision == "fp8" and config.precision == "fp8"
    assert JudgeSettings(model=tmp_path, engine=EngineSettings(precision="fp8")).precision == "fp8"
    assert JudgeSettings(model=tmp_path).precision == "checkpoint"
    with pytest.raises(ValueError, match="precision='int4': must be one of checkpoint, fp8"):
        settings_from_options(tmp_path, precision="int4")


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def gptq_labelled(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model's folder with a GPTQ quantization_config: the checks read only config.json."""
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("gptq") / "final_model"))
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = GPTQ8
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_cli_fp8_refusals_are_one_line_with_exit_2(tiny_model_dir, gptq_labelled, tmp_path):
    out = tmp_path / "sub.csv"
    cases = [
        (["--model", tiny_model_dir, "--engine", "hf", "--precision", "fp8"], "vllm engine only"),
        (
            ["--model", tiny_model_dir, "--device", "cpu", "--precision", "fp8"],
            "neither engine runs it on CPUs",
        ),
        (["--model", gptq_labelled, "--precision", "fp8"], f"wsdm-serve convert {gptq_labelled} --to fp8"),
    ]
    for extra, message in cases:
        result = run_cli("wsdm-serve", "predict", ARENA_SAMPLE, "--out", out, *extra)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert not out.exists()
    smoke = run_cli(
        "wsdm-serve", "check-model", tiny_model_dir, "--smoke", "--engine", "hf", "--precision", "fp8"
    )
    assert (
        smoke.returncode == 2 and "smoke test: --precision fp8 runs on the vllm engine only" in smoke.stdout
    )
    evaluate = run_cli(
        "wsdm-serve",
        "evaluate",
        PANDALM_TRAIN,
        "--model",
        gptq_labelled,
        "--precision",
        "fp8",
        "--out-dir",
        tmp_path,
    )
    assert evaluate.returncode == 2 and "--to fp8" in evaluate.stderr


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("vllm") is not None,
    reason="checks the message where vLLM is missing",
)
def test_fp8_with_the_automatic_engine_and_no_vllm_stops_before_scoring(tiny_model_dir, tmp_path):
    result = run_cli("wsdm-serve", "predict", ARENA_SAMPLE, "--model", tiny_model_dir, "--precision", "fp8")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --precision fp8 runs on the vllm engine only (FP8 tensor cores of Ada/Hopper GPUs) (no usable "
        "vLLM and CUDA GPU here); the hf engine runs the checkpoint's own precision: drop --precision fp8 or "
        "use --engine vllm"
    )


def test_hf_engine_on_a_gptq_checkpoint_names_convert(gptq_labelled):
    from wsdm_serve.engines.hf import HFEngine

    with pytest.raises(WsdmError) as caught:
        HFEngine(gptq_labelled, (32, 33), EngineSettings(name="hf", device="cpu"))
    assert f"wsdm-serve convert {gptq_labelled} --to bf16" in str(caught.value)


def test_quiet_hides_the_libraries_loading_bars(tiny_model_dir, tmp_path):
    """transformers' "Loading weights" and compressed-tensors' own bars (an FP8 checkpoint loads
    through both) are hidden by -q; without -q they show."""
    from wsdm_serve.models.convert import convert_checkpoint

    rows = tmp_path / "rows.parquet"
    pd.read_parquet(ARENA_SAMPLE).head(2).to_parquet(rows)
    fp8 = convert_checkpoint(tiny_model_dir, tmp_path / "fp8", to="fp8", progress=False).out
    # transformers' loader and compressed-tensors' decompression both draw bars for this folder
    args = (
        "predict",
        rows,
        "--model",
        fp8,
        "--engine",
        "hf",
        "--tta",
        "none",
        "--out",
        tmp_path / "s.csv",
    )
    quiet = run_cli("wsdm-serve", "-q", *args)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip().splitlines() == [quiet.stderr.strip()] and "predict: 2 rows" in quiet.stderr
    loud = run_cli_loud("wsdm-serve", *args)
    assert "Loading weights" in loud.stderr
    assert "Decompressing model" in loud.stderr


# ----------------------------------------------------------------------------- on a GPU
def _fp8_gpu() -> str | None:
    import importlib.util

    from wsdm_serve.engines.gpu_plan import detect_gpus

    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (this check runs on a GPU machine with vLLM)"
    found = detect_gpus()
    if not found or not all(gpu.has_fp8 for gpu in found):
        return "no GPU with FP8 tensor cores is visible"
    return None


def test_vllm_runs_the_fp8_checkpoint_and_online_fp8_alike(tmp_path):
    """The converted checkpoint (CompressedTensorsW8A8Fp8) and vLLM's online quantization of the
    same bf16 model with the same recipe give the same decisions, close to bf16."""
    reason = _fp8_gpu()
    if reason:
        pytest.skip(reason)
    import numpy as np

    from wsdm_serve.data import load_arena_rows
    from wsdm_serve.judge import run_predict
    from wsdm_serve.models.convert import convert_checkpoint
    from wsdm_serve.tiny import build_tiny_model

    model = build_tiny_model(
        tmp_path / "tiny",
        TOKENIZER_DIR,
        hidden_size=256,
        heads=4,
        kv_heads=2,
        intermediate_size=512,
        dtype="bfloat16",
    )
    fp8 = convert_checkpoint(model, tmp_path / "fp8", to="fp8", progress=False).out
    rows = load_arena_rows(ARENA_SAMPLE)

    def probs(folder: Path, precision: str) -> np.ndarray:
        options = EngineSettings(name="vllm", gpu_memory_utilization=0.3, precision=precision)
        config = JudgeSettings(model=folder, tta="none", engine=options, progress=False)
        return run_predict(rows, config).forward[:, 0]

    bf16, online, checkpoint = probs(model, "checkpoint"), probs(model, "fp8"), probs(fp8, "checkpoint")
    assert np.abs(online - checkpoint).max() < 0.01
    assert np.abs(checkpoint - bf16).max() < 0.05


# ----------------------------------------------------------------------------- the GPU tools
def load_tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agreement_numbers():
    import numpy as np

    agreement = load_tool("fp8_agreement")
    p_ref = np.array([0.9, 0.52, 0.49, 0.1, 0.7])
    p = np.array([0.88, 0.47, 0.49, 0.2, 0.71])
    labels = np.array([0, 1, 1, 1, 0])  # 0: A won
    result = agreement.compare(p_ref, p, labels, near_tie=0.05)
    assert result["decision_agreement"] == 0.8 and result["flips"] == 1
    assert result["max_abs_dp"] == pytest.approx(0.1) and result["mean_abs_dp"] == pytest.approx(0.036)
    assert (result["near_tie_rows"], result["near_tie_agreement"], result["other_rows_agreement"]) == (
        2,
        0.5,
        1.0,
    )
    assert result["accuracy"] == 1.0 and result["accuracy_delta"] == pytest.approx(0.2)
    assert not result["meets_target"] and "labelled_agreement" not in result


def test_agreement_counts_unlabelled_rows_for_agreement_only():
    import numpy as np

    agreement = load_tool("fp8_agreement")
    p_ref = np.array([0.9, 0.2, 0.8, 0.3])
    p = np.array([0.9, 0.2, 0.4, 0.3])  # the third row (unlabelled) flips
    result = agreement.compare(p_ref, p, np.array([0, 1]), near_tie=0.05)
    assert result["rows"] == 4 and result["flips"] == 1 and result["decision_agreement"] == 0.75
    assert (result["labelled_agreement"], result["unlabelled_agreement"]) == (1.0, 0.5)
    assert result["accuracy"] == 1.0 and result["accuracy_delta"] == 0.0


def test_agreement_tool_runs_its_recipes_on_a_cpu(tiny_model_dir, tmp_path):
    """The tool's machinery with the transformers engine: rows prompted once, the bf16 reference, a
    converted FP8 recipe, the recipes that need vLLM or --gptq reported as skipped, JSON written."""
    import sys

    out = tmp_path / "agreement.json"
    script = Path(__file__).parents[1] / "tools" / "fp8_agreement.py"
    recipes = "bf16,online:fp8,ckpt:per-channel+down-proj,gptq8"
    command = [sys.executable, str(script), "--model", str(tiny_model_dir), "--data", str(PANDALM_TRAIN)]
    command += ["--rows", "6", "--unlabelled", str(ARENA_SAMPLE), "--engine", "hf"]
    command += ["--recipes", recipes, "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert (report["rows"], report["labelled_rows"]) == (6 + 32, 6)
    assert list(report["recipes"]) == recipes.split(",")
    assert report["recipes"]["bf16"]["decision_agreement"] == 1.0
    assert report["recipes"]["online:fp8"] == {"skipped": "needs the vllm engine"}
    assert report["recipes"]["gptq8"] == {"skipped": "needs --gptq"}
    fp8 = report["recipes"]["ckpt:per-channel+down-proj"]
    # The fixture model is deliberately chaotic (weights of std 0.5): FP8 moves it, which is the point.
    assert 0 < fp8["mean_abs_dp"] <= fp8["p99_abs_dp"] <= fp8["max_abs_dp"] <= 1


def test_bench_writes_the_fp8_checkpoint_config_and_parses_sweeps(tmp_path):
    bench = load_tool("bench")
    folder = bench.write_model_dir(
        tmp_path / "fp8ckpt", bench.TINY, bench.quantization_config(Fp8Recipe(), 2)
    )
    config = json.loads((folder / "config.json").read_text())
    assert checkpoint_kind(config) == "fp8"
    assert bench.parse_measure(
        "vllm-fp8ckpt@max_num_batched_tokens=32768+kv_cache_dtype=fp8/predict", "raw"
    ) == (
        "vllm-fp8ckpt",
        {"max_num_batched_tokens": 32768, "kv_cache_dtype": "fp8"},
        ["predict"],
    )
    for spec in bench.FP8_COMPARISON:
        bench.parse_measure(spec, "raw,score,predict")
    with pytest.raises(SystemExit, match="choose from"):
        bench.parse_measure("vllm-int4", "raw")
    assert bench.parse_measure("vllm-fp8ckpt:per-channel+down-proj@enforce_eager=false", "raw") == (
        "vllm-fp8ckpt:per-channel+down-proj",
        {"enforce_eager": False},
        ["raw"],
    )
    with pytest.raises(SystemExit, match="only vllm-fp8 and vllm-fp8ckpt take a :RECIPE"):
        bench.parse_measure("vllm-bf16:per-channel", "raw")
    with pytest.raises(SystemExit, match="unknown part 'down'"):
        bench.parse_measure("vllm-fp8ckpt:per-channel+down", "raw")
