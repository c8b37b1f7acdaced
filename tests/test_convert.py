"""`wsdm-serve convert`: exact dequantization of the checkpoints `wsdm-train quantize` writes (and of
GPTQ v2 / act-order / asymmetric files built here), FP8 checkpoints, and bad sources.

The base model is a tiny random Qwen2 in bf16 whose linear layers split into whole groups of 128
inputs. bf16 scales are exactly representable in fp16, so the GPTQ export of a compressed-tensors
checkpoint holds the same integers *and* the same scales: both must dequantize to identical weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ARENA_SAMPLE, TOKENIZER_DIR, run_cli
from wsdm_serve.errors import WsdmError

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from wsdm_serve.models.convert import convert_checkpoint  # noqa: E402


def load_folder(folder: Path) -> dict:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def leftovers(parent: Path) -> list[str]:
    """Hidden staging folders a failed conversion might have left next to its output."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    from wsdm_serve.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("cbase") / "model",
        TOKENIZER_DIR,
        seed=5,
        hidden_size=128,
        intermediate_size=256,
        heads=4,
        kv_heads=2,
        layers=3,
        init_std=0.05,
        dtype="bfloat16",
    )


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    frame = pd.read_parquet(ARENA_SAMPLE).head(8)
    path = tmp_path_factory.mktemp("ccal") / "train.parquet"
    pd.DataFrame({"text": (frame["prompt"] + "\n" + frame["response_a"]).tolist()}).to_parquet(path)
    return path


def quantized(base_dir: Path, calibration: Path, root: Path, bits: int) -> tuple[Path, Path]:
    """`wsdm-train quantize` (compressed-tensors) and its GPTQ v1 export of the same integers."""
    pytest.importorskip(
        "llmcompressor", reason="llm-compressor is not installed (pip install 'wsdm[quantize]')"
    )
    from wsdm_train.export.quantize import QuantizeConfig, export_gptq_v1, quantize_model

    config = QuantizeConfig(calibration_samples=8, bits=bits)
    ct = root / f"ct{bits}"
    quantize_model(base_dir, ct, calibration=calibration, config=config)
    gptq = root / f"gptq{bits}"
    gptq.mkdir()
    export_gptq_v1(ct, gptq, config)
    return ct, gptq


@pytest.fixture(scope="module")
def int8(base_dir, calibration, tmp_path_factory) -> tuple[Path, Path]:
    return quantized(base_dir, calibration, tmp_path_factory.mktemp("q8"), 8)


@pytest.fixture(scope="module")
def int4(base_dir, calibration, tmp_path_factory) -> tuple[Path, Path]:
    return quantized(base_dir, calibration, tmp_path_factory.mktemp("q4"), 4)


def library_decompressed(ct_dir: Path) -> dict:
    """Every quantized layer's weight as compressed-tensors itself decompresses it (bf16 math)."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    quant = json.loads((ct_dir / "config.json").read_text())["quantization_config"]
    scheme = QuantizationScheme.model_validate(quant["config_groups"]["group_0"])
    tensors = load_folder(ct_dir)
    modules = sorted(name[: -len(".weight_packed")] for name in tensors if name.endswith(".weight_packed"))
    return {
        f"{module}.weight": PackedQuantizationCompressor.decompress(
            {part: tensors[f"{module}.{part}"] for part in ("weight_packed", "weight_scale", "weight_shape")},
            scheme,
        )["weight"]
        for module in modules
    }


@pytest.mark.parametrize("bits", [8, 4])
def test_compressed_tensors_and_gptq_v1_dequantize_to_the_integers_times_scales(bits, int8, int4, tmp_path):
    ct, gptq = int8 if bits == 8 else int4
    from_ct = convert_checkpoint(ct, tmp_path / "from-ct", to="bf16", progress=False)
    from_gptq = convert_checkpoint(gptq, tmp_path / "from-gptq", to="bf16", progress=False)
    assert from_ct.dequantized == from_gptq.dequantized == 3 * 7
    expected = library_decompressed(ct)
    a, b = load_folder(tmp_path / "from-ct"), load_folder(tmp_path / "from-gptq")
    assert a.keys() == b.keys()
    for name, weight in expected.items():
        assert a[name].dtype == torch.bfloat16
        assert torch.equal(a[name], weight.to(torch.bfloat16)), name
    for name in a:
        assert torch.equal(a[name], b[name]), name  # same integers, same scales: identical weights
    config = json.loads((tmp_path / "from-gptq" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert not (tmp_path / "from-gptq" / "quantize_info.json").exists()
    assert (tmp_path / "from-gptq" / "tokenizer.json").exists()


def rewrite_gptq_zeros(gptq: Path, dest: Path, delta: int, fmt: str) -> Path:
    """A copy of a GPTQ folder whose stored zero points are shifted by ``delta`` (v1 -> v2 is +1)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    from wsdm_serve.models.dequantize import unpack_int32

    shutil.copytree(gptq, dest)
    config = json.loads((dest / "config.json").read_text())
    bits = config["quantization_config"]["bits"]
    config["quantization_config"]["checkpoint_format"] = fmt
    (dest / "config.json").write_text(json.dumps(config))
    for path in dest.glob("*.safetensors"):
        tensors = load_file(str(path))
        for name in [n for n in tensors if n.endswith(".qzeros")]:
            stored = unpack_int32(tensors[name], bits, 1) + delta
            tensors[name] = pack_to_int32((stored - (1 << (bits - 1))).to(torch.int8), bits, packed_dim=1)
        save_file(tensors, str(path), metadata={"format": "pt"})
    return dest


def test_gptq_v2_zero_points_give_the_same_weights_as_v1(int8, tmp_path):
    _, gptq = int8
    v2 = rewrite_gptq_zeros(gptq, tmp_path / "v2", +1, "gptq_v2")
    convert_checkpoint(gptq, tmp_path / "a", to="bf16", progress=False)
    convert_checkpoint(v2, tmp_path / "b", to="bf16", progress=False)
    a, b = load_folder(tmp_path / "a"), load_folder(tmp_path / "b")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_v2_zero_points_under_a_v1_label_are_refused(int8, tmp_path):
    _, gptq = int8
    mislabelled = rewrite_gptq_zeros(gptq, tmp_path / "bad", +1, "gptq")
    with pytest.raises(WsdmError, match="v2 zero points"):
        convert_checkpoint(mislabelled, tmp_path / "out", to="bf16", progress=False)
    assert not (tmp_path / "out").exists()


def write_act_order_gptq(base_dir: Path, dest: Path, bits: int, seed: int) -> dict:
    """A GPTQ v1 folder with act-order (permuted g_idx) and asymmetric zeros; returns the exact
    expected float64 weights, computed here from the integers put in."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    shutil.copytree(base_dir, dest)
    (dest / "model.safetensors").unlink()
    tensors = load_folder(base_dir)
    generator = torch.Generator().manual_seed(seed)
    group, offset = 64, 1 << (bits - 1)
    out, expected = {}, {}
    for name, tensor in tensors.items():
        if not (".layers." in name and name.endswith(".weight") and tensor.dim() == 2):
            out[name] = tensor
            continue
        module, (rows, cols) = name[: -len(".weight")], tensor.shape
        groups = cols // group
        q = torch.randint(0, 1 << bits, (cols, rows), generator=generator)
        zeros = torch.randint(1, 1 << bits, (groups, rows), generator=generator)  # the real zero
        scales = (torch.rand((groups, rows), generator=generator) * 0.01 + 1e-3).to(torch.float16)
        g_idx = (torch.randperm(cols, generator=generator) // group).to(torch.int32)
        out[f"{module}.qweight"] = pack_to_int32((q - offset).to(torch.int8), bits, packed_dim=0).contiguous()
        out[f"{module}.qzeros"] = pack_to_int32(
            (zeros - 1 - offset).to(torch.int8), bits, packed_dim=1
        ).contiguous()
        out[f"{module}.scales"] = scales
        out[f"{module}.g_idx"] = g_idx
        index = g_idx.long()
        expected[name] = ((q - zeros[index]).double() * scales.double()[index]).t()
    save_file(out, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((dest / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group,
        "desc_act": True,
        "sym": False,
        "checkpoint_format": "gptq",
    }
    (dest / "config.json").write_text(json.dumps(config))
    return expected


@pytest.mark.parametrize("bits", [4, 8])
def test_act_order_asymmetric_gptq_dequantizes_exactly(base_dir, tmp_path, bits):
    expected = write_act_order_gptq(base_dir, tmp_path / "gptq", bits, seed=bits)
    convert_checkpoint(tmp_path / "gptq", tmp_path / "fp16", to="fp16", progress=False)
    written = load_folder(tmp_path / "fp16")
    for name, weight in expected.items():
        assert written[name].dtype == torch.float16
        assert torch.equal(written[name], weight.to(torch.float16)), name
    # The untouched tensors are cast, nothing else.
    source = load_folder(base_dir)
    assert torch.equal(written["lm_head.weight"], source["lm_head.weight"].to(torch.float16))


def judge_probs(model_dir: Path, dtype: str = "auto"):
    from wsdm_serve.data import arena_rows_from_frame
    from wsdm_serve.engines.settings import EngineSettings
    from wsdm_serve.judge import run_predict
    from wsdm_serve.settings import JudgeSettings

    rows = arena_rows_from_frame(pd.read_parquet(ARENA_SAMPLE).head(8), ARENA_SAMPLE)
    config = JudgeSettings(
        model=model_dir,
        tta="none",
        engine=EngineSettings(name="hf", device="cpu", dtype=dtype),
        progress=False,
    )
    return run_predict(rows, config).forward[:, 0]


def test_hf_engine_scores_the_dequantized_model_as_transformers_scores_the_compressed_one(int8, tmp_path):
    import numpy as np

    ct, gptq = int8
    convert_checkpoint(gptq, tmp_path / "bf16", to="bf16", progress=False)
    # In bf16 both hold the same weights: transformers decompresses with the bf16 scales.
    dequantized, decompressed = judge_probs(tmp_path / "bf16", "bfloat16"), judge_probs(ct, "bfloat16")
    assert np.array_equal(dequantized, decompressed)


# --------------------------------------------------------------------------- FP8


def test_fp8_checkpoint_tensors_scales_and_untouched_modules(base_dir, tmp_path):
    result = convert_checkpoint(base_dir, tmp_path / "fp8", to="fp8", progress=False)
    assert result.fp8_layers == 3 * 7
    source, written = load_folder(base_dir), load_folder(tmp_path / "fp8")
    for name, tensor in source.items():
        if ".layers." in name and name.endswith(".weight") and tensor.dim() == 2:
            values, scale = written[name], written[name[: -len(".weight")] + ".weight_scale"]
            assert values.dtype == torch.float8_e4m3fn and values.shape == tensor.shape
            assert scale.dtype == torch.float32 and scale.shape == (tensor.shape[0], 1)
            w = tensor.float()
            assert torch.equal(scale, w.abs().amax(dim=1, keepdim=True) / 448)
            assert torch.equal(values.float().abs().amax(dim=1), torch.full((tensor.shape[0],), 448.0))
            restored = values.float() * scale
            # E4M3 keeps 3 mantissa bits: round to nearest is within 2^-4 of each normal value.
            normal = w.abs() >= scale * 2**-6
            assert ((restored - w).abs()[normal] <= w.abs()[normal] * 2**-4).all()
        else:  # head, embeddings, norms, biases: bit-identical
            assert written[name].dtype == tensor.dtype and torch.equal(written[name], tensor), name
    quant = json.loads((tmp_path / "fp8" / "config.json").read_text())["quantization_config"]
    group = quant["config_groups"]["group_0"]
    # The fields vLLM's compressed-tensors loader reads to pick CompressedTensorsW8A8Fp8.
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "float-quantized"
    assert quant["quantization_status"] == "compressed" and quant["ignore"] == ["lm_head"]
    assert group["targets"] == ["Linear"]
    weights, inputs = group["weights"], group["input_activations"]
    assert (weights["type"], weights["num_bits"], weights["strategy"]) == ("float", 8, "channel")
    assert weights["symmetric"] and not weights["dynamic"]
    assert (inputs["type"], inputs["num_bits"], inputs["strategy"], inputs["dynamic"]) == (
        "float",
        8,
        "token",
        True,
    )


def test_fp8_recipe_keeps_first_last_and_down_proj_in_bf16(base_dir, tmp_path):
    from wsdm_serve.models.fp8 import Fp8Recipe

    recipe = Fp8Recipe.parse("per-tensor+first-last+down-proj")
    result = convert_checkpoint(base_dir, tmp_path / "fp8", to="fp8", recipe=recipe, progress=False)
    assert result.fp8_layers == 6  # block 1's q, k, v, o, gate, up
    source, written = load_folder(base_dir), load_folder(tmp_path / "fp8")
    for name, tensor in source.items():
        quantized_here = ".layers.1." in name and name.endswith("_proj.weight") and "down_proj" not in name
        assert (written[name].dtype == torch.float8_e4m3fn) == quantized_here, name
        if quantized_here:
            assert written[name[: -len(".weight")] + ".weight_scale"].shape == (1,)
        else:
            assert torch.equal(written[name], tensor), name


def test_llm_compressor_writes_the_same_fp8_format(base_dir, tmp_path):
    """Our checkpoint against llm-compressor's FP8_DYNAMIC on the same model: same scheme, same
    tensor names and shapes (llm-compressor keeps its scales in the model's dtype, ours are float32)."""
    pytest.importorskip(
        "llmcompressor", reason="llm-compressor is not installed (pip install 'wsdm[quantize]')"
    )
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    oneshot(
        model=model, recipe=[QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])]
    )
    model.save_pretrained(tmp_path / "ref", save_compressed=True)
    convert_checkpoint(base_dir, tmp_path / "ours", to="fp8", progress=False)
    ref, ours = load_folder(tmp_path / "ref"), load_folder(tmp_path / "ours")
    assert ref.keys() == ours.keys()
    for name in ref:
        assert ref[name].shape == ours[name].shape, name
        if not name.endswith(".weight_scale"):
            assert ref[name].dtype == ours[name].dtype, name

    def scheme(folder: Path) -> dict:
        quant = json.loads((folder / "config.json").read_text())["quantization_config"]
        group = quant["config_groups"]["group_0"]
        for args in (group["weights"], group["input_activations"]):
            args.pop("observer", None)
        return {
            "group": group,
            **{k: quant[k] for k in ("format", "ignore", "quant_method", "quantization_status")},
        }

    assert scheme(tmp_path / "ref") == scheme(tmp_path / "ours")


def test_fp8_from_a_gptq_checkpoint_goes_through_the_exact_weights(int8, tmp_path):
    _, gptq = int8
    convert_checkpoint(gptq, tmp_path / "fp8", to="fp8", progress=False)
    convert_checkpoint(tmp_path / "fp8", tmp_path / "back", to="bf16", progress=False)
    fp8, back = load_folder(tmp_path / "fp8"), load_folder(tmp_path / "back")
    for name, values in fp8.items():
        if values.dtype == torch.float8_e4m3fn:
            scale = fp8[name[: -len(".weight")] + ".weight_scale"]
            assert torch.equal(back[name], (values.float() * scale).to(torch.bfloat16)), name
    assert json.loads((tmp_path / "fp8" / "config.json").read_text())["dtype"] == "bfloat16"


def test_fp8_checkpoint_runs_in_the_hf_engine_decompressed(base_dir, tmp_path):
    import numpy as np

    convert_checkpoint(base_dir, tmp_path / "fp8", to="fp8", progress=False)
    fp8, bf16 = judge_probs(tmp_path / "fp8"), judge_probs(base_dir)
    assert np.isfinite(fp8).all()
    assert np.abs(fp8 - bf16).max() < 0.1  # FP8 weights move P(A) by a rounding's worth on this model


def test_many_shards_are_indexed_and_load(base_dir, tmp_path):
    import numpy as np

    convert_checkpoint(base_dir, tmp_path / "sharded", to="fp8", max_shard_bytes=10 * 2**20, progress=False)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and shards == sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    convert_checkpoint(base_dir, tmp_path / "single", to="fp8", progress=False)
    assert np.array_equal(judge_probs(tmp_path / "sharded"), judge_probs(tmp_path / "single"))


# --------------------------------------------------------------------------- bad sources


def truncated(base_dir: Path, dest: Path) -> Path:
    shutil.copytree(base_dir, dest)
    path = dest / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    return dest


def unknown_quantization(base_dir: Path, dest: Path) -> Path:
    shutil.copytree(base_dir, dest)
    config = json.loads((dest / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def not_a_model(base_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    (dest / "notes.txt").write_text("hello")
    return dest


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (not_a_model, "no config.json; not a model folder"),
        (unknown_quantization, "quant_method 'awq' is not one convert can read"),
        (truncated, "truncated"),
    ],
)
def test_bad_sources_are_one_line_and_leave_nothing(base_dir, tmp_path, make, message):
    source = make(base_dir, tmp_path / "src")
    out_root = tmp_path / "outs"
    out_root.mkdir()
    before = sorted(p.name for p in source.iterdir())
    result = run_cli("wsdm-serve", "-q", "convert", source, "--to", "fp8", "--out", out_root / "model")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (out_root / "model").exists() and leftovers(out_root) == []
    assert sorted(p.name for p in source.iterdir()) == before


def test_output_inside_the_source_or_existing_is_refused(base_dir, tmp_path):
    inside = run_cli("wsdm-serve", "convert", base_dir, "--to", "bf16", "--out", base_dir / "converted")
    assert inside.returncode == 2 and "inside the source folder" in inside.stderr
    assert not (base_dir / "converted").exists() and leftovers(base_dir) == []
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("old")
    refused = run_cli("wsdm-serve", "convert", base_dir, "--to", "bf16", "--out", existing)
    assert refused.returncode == 2 and "pass --force" in refused.stderr


def test_force_replaces_only_after_the_new_folder_passed(base_dir, tmp_path):
    existing = tmp_path / "out"
    existing.mkdir()
    (existing / "keep.txt").write_text("old")
    bad = truncated(base_dir, tmp_path / "bad")
    failed = run_cli("wsdm-serve", "convert", bad, "--to", "bf16", "--out", existing, "--force")
    assert failed.returncode == 2 and (existing / "keep.txt").read_text() == "old"
    done = run_cli("wsdm-serve", "-q", "convert", base_dir, "--to", "fp8", "--out", existing, "--force")
    assert done.returncode == 0, done.stderr
    assert "note:" not in done.stderr  # -q: the agreement note is for a person reading along
    assert done.stdout.strip().splitlines()[-1] == str(existing)
    assert not (existing / "keep.txt").exists() and leftovers(tmp_path) == []
    checked = run_cli("wsdm-serve", "check-model", existing)
    assert checked.returncode == 0, checked.stdout
    assert "compressed-tensors float-quantized" in checked.stdout


def test_fp8_conversion_says_what_fp8_was_measured_to_cost(base_dir, tmp_path):
    from wsdm_serve.models.fp8 import MEASURED_AGREEMENT

    done = run_cli("wsdm-serve", "convert", base_dir, "--to", "fp8", "--out", tmp_path / "fp8")
    assert done.returncode == 0, done.stderr
    assert f"convert: note: {MEASURED_AGREEMENT}" in done.stderr
    plain = run_cli("wsdm-serve", "convert", base_dir, "--to", "bf16", "--out", tmp_path / "bf16")
    assert plain.returncode == 0 and "note:" not in plain.stderr


def test_fp8_options_need_to_fp8_and_already_fp8_is_refused(base_dir, tmp_path):
    wrong = run_cli(
        "wsdm-serve", "convert", base_dir, "--to", "bf16", "--out", tmp_path / "a", "--keep-bf16", "down-proj"
    )
    assert wrong.returncode == 2 and "apply to --to fp8 only" in wrong.stderr
    unknown = run_cli(
        "wsdm-serve", "convert", base_dir, "--to", "fp8", "--out", tmp_path / "b", "--keep-bf16", "lm"
    )
    assert unknown.returncode == 2 and "--keep-bf16 lm: unknown 'lm'" in unknown.stderr
    convert_checkpoint(base_dir, tmp_path / "fp8", to="fp8", progress=False)
    with pytest.raises(WsdmError, match="already an FP8 checkpoint"):
        convert_checkpoint(tmp_path / "fp8", tmp_path / "again", to="fp8", progress=False)


def test_fp16_overflow_is_refused(base_dir, tmp_path):
    source = Path(shutil.copytree(base_dir, tmp_path / "src"))
    tensors = load_file(str(source / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 1e6  # fine in bf16, inf in fp16
    save_file(tensors, str(source / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WsdmError, match=r"model.norm.weight: holds values beyond float16's range"):
        convert_checkpoint(source, tmp_path / "out", to="fp16", progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
