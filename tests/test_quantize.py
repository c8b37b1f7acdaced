"""`wsdm-train quantize` on a tiny random Qwen2 (CPU), and the on-disk checkpoint verifier.

The tiny model has hidden size 128 and MLP width 256 so that every linear layer's inputs split
into whole groups of 128, as in the 14B model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ARENA_SAMPLE, PANDALM_TRAIN, TOKENIZER_DIR, run_cli, run_cli_loud
from wsdm_serve.engines.settings import EngineSettings
from wsdm_serve.errors import WsdmError
from wsdm_serve.models.quantization import QuantSpec, verify_quantized_checkpoint

torch = pytest.importorskip("torch")
pytest.importorskip("llmcompressor", reason="llm-compressor is not installed (pip install 'wsdm[quantize]')")

from wsdm_train.export.quantize import QuantizeConfig, calibration_prompts, quantize_model  # noqa: E402

N_CALIBRATION = 8
P_A_TOLERANCE = 0.02  # 8-bit weights: a judge's probability may move by a rounding's worth, not more


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    from wsdm_serve.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("qbase") / "model",
        TOKENIZER_DIR,
        seed=3,
        hidden_size=128,
        intermediate_size=256,
        heads=4,
        kv_heads=2,
        layers=2,
        init_std=0.05,  # larger random weights make a chaotic net that no 8-bit rounding survives
    )


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory) -> Path:
    """Real student training prompts (PandaLM rows at the 2048 budget) in the prepare layout."""
    from wsdm_serve.data import load_arena_rows
    from wsdm_serve.preprocess import build_prompts
    from wsdm_serve.tokenizer import load_tokenizer
    from wsdm_serve.truncation import TruncationConfig

    root = tmp_path_factory.mktemp("data")
    source = root / "rows.parquet"
    pd.read_parquet(PANDALM_TRAIN).head(40).to_parquet(source)
    prompts = build_prompts(
        load_arena_rows(source),
        load_tokenizer(TOKENIZER_DIR),
        TruncationConfig(token_budget=2048, response_word_cap=1400),
        with_swapped_ids=False,
        progress=False,
    )
    path = root / "processed" / "student" / "fold0" / "train.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"row_key": [f"train:{i}" for i in range(len(prompts))], "text": prompts.texts}).to_parquet(
        path
    )
    return path


@pytest.fixture(scope="module")
def quantized_dir(base_dir, calibration_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "final_model"
    quantize_model(
        base_dir, out, calibration=calibration_file, config=QuantizeConfig(calibration_samples=N_CALIBRATION)
    )
    return out


def test_checkpoint_is_compressed_tensors_8bit_g128_symmetric_without_act_order(quantized_dir):
    quant = json.loads((quantized_dir / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "pack-quantized"
    (group,) = quant["config_groups"].values()
    weights = group["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["strategy"]) == (8, 128, "group")
    assert weights["symmetric"] is True and weights["actorder"] is None and weights["type"] == "int"
    assert group["input_activations"] is None and quant["ignore"] == ["lm_head"]
    found = verify_quantized_checkpoint(quantized_dir, QuantSpec(8, 128, True, False))
    assert found.quantized_modules == 2 * 7
    assert (quantized_dir / "tokenizer.json").exists()


def test_calibration_draw_is_the_reference_sample(quantized_dir, calibration_file):
    info = json.loads((quantized_dir / "quantize_info.json").read_text())
    frame = pd.read_parquet(calibration_file)
    expected = frame.sample(n=N_CALIBRATION, random_state=2025)
    assert info["calibration_positions"] == [frame.index.get_loc(i) for i in expected.index]
    assert info["calibration_rows"] == N_CALIBRATION
    texts, _ = calibration_prompts(calibration_file, N_CALIBRATION, 2025)
    assert texts == expected["text"].tolist()
    # Whole prompts, as the reference tokenized them.
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(TOKENIZER_DIR)(texts, add_special_tokens=False)["input_ids"]
    assert info["calibration_tokens"] == sum(map(len, ids))


def test_more_samples_than_rows_uses_every_row(calibration_file):
    texts, positions = calibration_prompts(calibration_file, 10_000, 2025)
    assert sorted(positions) == list(range(len(pd.read_parquet(calibration_file))))
    assert len(texts) == len(positions)


def score(model_dir: Path) -> np.ndarray:
    from wsdm_serve.data import load_arena_rows
    from wsdm_serve.engines.settings import EngineSettings
    from wsdm_serve.judge import run_predict
    from wsdm_serve.settings import JudgeSettings

    config = JudgeSettings(
        model=model_dir,
        tta="none",
        progress=False,
        engine=EngineSettings(name="hf", device="cpu", dtype="float32"),
    )
    return run_predict(load_arena_rows(ARENA_SAMPLE), config).probs[:, 0]


def test_transformers_engine_loads_it_and_p_a_stays_close(quantized_dir, base_dir):
    from transformers import AutoModelForCausalLM

    from wsdm_serve.engines.hf import HFEngine

    engine = HFEngine(quantized_dir, (32, 33), EngineSettings(name="hf", device="cpu", dtype="float32"))
    linear = engine.model.model.layers[0].mlp.down_proj

    full = (
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        .model.layers[0]
        .mlp.down_proj.weight
    )
    # Dequantized weights: within about one quantization step of the originals, and not identical.
    step = full.abs().reshape(full.shape[0], -1, 128).amax(-1).repeat_interleave(128, dim=1) / 127
    error = (linear.weight - full).abs() / step
    assert 0 < error.max() < 3 and error.mean() < 0.5
    engine.close()

    quantized, unquantized = score(quantized_dir), score(base_dir)
    spread = unquantized.max() - unquantized.min()
    difference = np.abs(quantized - unquantized)
    print(f"max |dP(A)| {difference.max():.5f}, mean {difference.mean():.5f}, P(A) spread {spread:.3f}")
    assert spread > 0.1  # the tiny judge is not degenerate: its answers vary by row
    assert difference.max() < P_A_TOLERANCE
    assert difference.max() > 0  # the quantized model really is another model


@pytest.fixture(scope="module")
def gptq_dir(base_dir, calibration_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("g") / "gptq"
    config = QuantizeConfig(calibration_samples=N_CALIBRATION, format="gptq")
    result = quantize_model(base_dir, out, calibration=calibration_file, config=config)
    assert "gptq" in result.description and result.summary().startswith(str(out))
    return out


def test_gptq_v1_export_holds_the_same_integers_and_scales(gptq_dir, quantized_dir):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from wsdm_serve.models.quantization import read_tensor_headers

    out = gptq_dir
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "gptq" and quant["checkpoint_format"] == "gptq"
    assert (quant["bits"], quant["group_size"], quant["sym"], quant["desc_act"]) == (8, 128, True, False)

    # Dequantize GPTQ v1 by its definition: w = scale * (q - (stored_zero + 1)).
    from safetensors.torch import load_file

    headers = read_tensor_headers(out)
    tensors = {}
    for file in {entry[2] for entry in headers.values()}:
        tensors.update(load_file(file))
    module = "model.layers.1.mlp.down_proj"
    qweight = tensors[f"{module}.qweight"].numpy().view(np.uint32)
    q = np.concatenate([((qweight >> (8 * i)) & 0xFF)[:, None, :] for i in range(4)], axis=1).reshape(
        -1, qweight.shape[1]
    )
    zeros = tensors[f"{module}.qzeros"].numpy().view(np.uint32)
    z = np.stack([(zeros >> (8 * i)) & 0xFF for i in range(4)], axis=-1).reshape(zeros.shape[0], -1)
    scales = tensors[f"{module}.scales"].float().numpy()
    g_idx = tensors[f"{module}.g_idx"].numpy()
    dequantized = scales[g_idx] * (q.astype(np.float32) - (z[g_idx].astype(np.float32) + 1))

    reference = AutoModelForCausalLM.from_pretrained(
        quantized_dir, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True)
    )
    expected = dict(reference.named_parameters())[f"{module}.weight"].detach().numpy().T
    # Same run, same seed: identical integers; scales differ only by their fp16 storage.
    np.testing.assert_allclose(dequantized, expected, rtol=1e-3, atol=1e-6)


# --------------------------------------------------------------------------- verifier: broken checkpoints


def broken_copy(source: Path, dest: Path, edit=None, tensors=None) -> Path:
    shutil.copytree(source, dest)
    if edit is not None:
        config = json.loads((dest / "config.json").read_text())
        edit(config["quantization_config"])
        (dest / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        from safetensors.torch import load_file, save_file

        for path in dest.glob("*.safetensors"):
            state = load_file(path)
            tensors(state)
            save_file(state, path)
    return dest


def _group(quant):
    return next(iter(quant["config_groups"].values()))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda q: _group(q)["weights"].update(group_size=64), "group size is 64, expected 128"),
        (lambda q: _group(q)["weights"].update(actorder="group"), "activation order is True"),
        (lambda q: _group(q)["weights"].update(num_bits=4), "bits is 4"),
        (lambda q: q.update(format="float-quantized"), "format is 'float-quantized'"),
        (lambda q: _group(q).update(input_activations={"num_bits": 8}), "quantizes activations"),
        (lambda q: q.update(quant_method="awq"), "quant_method 'awq'"),
    ],
)
def test_verifier_rejects_other_settings(quantized_dir, tmp_path, edit, message):
    with pytest.raises(WsdmError, match=message) as error:
        verify_quantized_checkpoint(broken_copy(quantized_dir, tmp_path / "m", edit=edit))
    assert "\n" not in str(error.value)


def test_verifier_rejects_missing_scales_and_unquantized_layers(quantized_dir, base_dir, tmp_path):
    module = "model.layers.0.self_attn.q_proj"
    with pytest.raises(WsdmError, match=f"{module}.weight_scale is missing"):
        verify_quantized_checkpoint(
            broken_copy(
                quantized_dir, tmp_path / "a", tensors=lambda s: s.pop(f"{module}.weight_scale", None)
            )
        )

    def unquantize(state):
        if f"{module}.weight_packed" in state:
            for suffix in ("weight_packed", "weight_scale", "weight_shape"):
                state.pop(f"{module}.{suffix}")
            state[f"{module}.weight"] = torch.zeros(128, 128)

    with pytest.raises(WsdmError, match=f"not quantized, e.g. {module}.weight"):
        verify_quantized_checkpoint(broken_copy(quantized_dir, tmp_path / "b", tensors=unquantize))
    with pytest.raises(WsdmError, match="no quantization_config"):
        verify_quantized_checkpoint(base_dir)


def test_verifier_accepts_gptq_v1_and_catches_v2_zero_points(gptq_dir, tmp_path):
    found = verify_quantized_checkpoint(gptq_dir)
    assert (found.method, found.format, found.bits, found.group_size) == ("gptq", "gptq", 8, 128)

    with pytest.raises(WsdmError, match="checkpoint_format is 'gptq_v2'"):
        verify_quantized_checkpoint(
            broken_copy(gptq_dir, tmp_path / "a", edit=lambda q: q.update(checkpoint_format="gptq_v2"))
        )

    def v2_zeros(state):
        for name in [n for n in state if n.endswith(".qzeros")]:
            state[name] = torch.full_like(
                state[name], int(np.array(0x80808080, dtype=np.uint32).view(np.int32))
            )

    with pytest.raises(WsdmError, match="v2 zero points"):
        verify_quantized_checkpoint(broken_copy(gptq_dir, tmp_path / "b", tensors=v2_zeros))


# --------------------------------------------------------------------------- command line


def test_cli_quantize_runs_verifies_and_resumes(base_dir, calibration_file, tmp_path):
    out = tmp_path / "final_model"
    args = ["quantize", "--model", base_dir, "--calibration", calibration_file, "--out", out]
    result = run_cli_loud(
        "wsdm-train", *args, "--calibration-samples", "4", "--max-calibration-tokens", "256"
    )
    assert result.returncode == 0, result.stderr
    assert "compressed-tensors (pack-quantized), 8-bit, group 128, symmetric, no act-order" in result.stderr
    assert "calibrated on 4 prompts" in result.stderr
    assert result.stdout == ""  # the library's per-layer log stays off stdout
    info = json.loads((out / "quantize_info.json").read_text())
    assert info["calibration_tokens"] <= 4 * 256
    again = run_cli("wsdm-train", *args, "--calibration-samples", "4", "--max-calibration-tokens", "256")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    other = run_cli("wsdm-train", *args, "--calibration-samples", "5")
    assert other.returncode == 2 and "pass --force" in other.stderr
    assert "Calibrating" in result.stderr  # the libraries' bars, shown without -q ...
    quiet = run_cli("wsdm-train", "-q", *args, "--calibration-samples", "5", "--force")
    assert quiet.returncode == 0, quiet.stderr
    assert "it/s" not in quiet.stderr and "%|" not in quiet.stderr, quiet.stderr[:2000]  # ... hidden with it
    assert "calibrated on 5 prompts" in quiet.stderr


def test_quantize_refuses_to_write_over_its_input(base_dir, calibration_file):
    with pytest.raises(WsdmError, match="is an input of the quantization"):
        quantize_model(base_dir, base_dir, calibration=calibration_file, force=True)


def test_cli_quantize_bad_calibration_file_is_one_line(base_dir, tmp_path):
    bad = tmp_path / "train.parquet"
    pd.DataFrame({"prompt": ["x"]}).to_parquet(bad)
    result = run_cli(
        "wsdm-train", "quantize", "--model", base_dir, "--calibration", bad, "--out", tmp_path / "o"
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: {bad}: no 'text' column (found: prompt); expected the student training prompts of `wsdm-train prepare`"
    )
    assert not (tmp_path / "o").exists()
