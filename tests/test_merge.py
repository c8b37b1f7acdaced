"""`wsdm-train merge` on tiny random Qwen2 bases with random (non-zero) LoRA fold adapters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import TOKENIZER_DIR, run_cli, run_cli_loud

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from wsdm_serve.errors import WsdmError  # noqa: E402
from wsdm_serve.outputs import atomic_directory  # noqa: E402
from wsdm_train.export.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_adapter  # noqa: E402
from wsdm_train.export.merge import MergeConfig, apply_adapter, load_base_model, merge_folds  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
N_FOLDS = 4


def make_adapter(base_dir: Path, dest: Path, seed: int, *, r: int = 4, alpha: int = 8, **lora) -> Path:
    """A PEFT adapter whose A and B are both random, so every fold's delta is non-zero and different."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=lora.pop("targets", TARGETS), **lora)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    from wsdm_serve.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("base") / "base", TOKENIZER_DIR, seed=1, init_std=0.1)


@pytest.fixture(scope="module")
def fold_adapters(base_dir, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("folds")
    return [make_adapter(base_dir, root / f"fold{k}" / "best", seed=100 + k) for k in range(N_FOLDS)]


def state(model) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def load_state(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM

    return state(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))


def fold_factors(adapters: list[Path], module: str) -> tuple[list, list]:
    prefix = f"base_model.model.{module}"
    folds = [read_adapter(p).tensors for p in adapters]
    a = [f[f"{prefix}.lora_A.weight"].double() for f in folds]
    b = [f[f"{prefix}.lora_B.weight"].double() for f in folds]
    return a, b


MODULE = "model.layers.1.mlp.down_proj"


@pytest.fixture(scope="module")
def reference_merge(base_dir, fold_adapters, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "merged"
    merge_folds(base_dir, fold_adapters, out, config=MergeConfig(mode="reference", max_shard_size="40MB"))
    return out


@pytest.fixture(scope="module")
def delta_merge(base_dir, fold_adapters, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("delta") / "merged"
    merge_folds(base_dir, fold_adapters, out, config=MergeConfig(mode="delta"))
    return out


def test_reference_adapter_is_the_tensorwise_average_with_fold0_config(reference_merge, fold_adapters):
    combined = read_adapter(reference_merge.with_name("merged_adapter"))
    folds = [read_adapter(p) for p in fold_adapters]
    assert combined.config == folds[0].config
    assert set(combined.tensors) == set(folds[0].tensors)
    for name, tensor in combined.tensors.items():
        expected = torch.stack([f.tensors[name].double() for f in folds]).mean(0)
        torch.testing.assert_close(tensor.double(), expected, rtol=0, atol=1e-7)
        assert tensor.dtype == folds[0].tensors[name].dtype


def test_reference_merge_is_base_plus_scaled_product_of_averaged_factors(
    reference_merge, base_dir, fold_adapters
):
    merged, base = load_state(reference_merge), load_state(base_dir)
    a, b = fold_factors(fold_adapters, MODULE)
    scaling = 8 / 4
    expected = base[f"{MODULE}.weight"].double() + scaling * (sum(b) / N_FOLDS) @ (sum(a) / N_FOLDS)
    torch.testing.assert_close(merged[f"{MODULE}.weight"].double(), expected, rtol=0, atol=2e-6)
    # Modules without LoRA are untouched.
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_reference_merge_is_a_complete_sharded_model_folder(reference_merge):
    from transformers import AutoTokenizer

    files = {p.name for p in reference_merge.iterdir()}
    assert "model.safetensors.index.json" in files, files  # 40MB shards: the tiny model needs several
    assert sum(name.endswith(".safetensors") for name in files) >= 2
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "merge_info.json"} <= files
    assert not [p for p in reference_merge.parent.iterdir() if p.name.startswith(".")]  # no temp folders
    tokenizer = AutoTokenizer.from_pretrained(reference_merge)
    assert (
        tokenizer("Choice: A")["input_ids"]
        == AutoTokenizer.from_pretrained(TOKENIZER_DIR)("Choice: A")["input_ids"]
    )
    info = json.loads((reference_merge / "merge_info.json").read_text())
    assert info["mode"] == "reference" and len(info["adapters"]) == N_FOLDS


@pytest.mark.parametrize("rslora", [False, True])
def test_delta_merge_equals_mean_of_separately_merged_fold_models(
    rslora, base_dir, fold_adapters, delta_merge, tmp_path
):
    if rslora:
        adapters = [
            make_adapter(base_dir, tmp_path / f"rs{k}", seed=200 + k, r=3, alpha=5, use_rslora=True)
            for k in range(3)
        ]
        out = tmp_path / "merged"
        merge_folds(base_dir, adapters, out, config=MergeConfig(mode="delta"))
    else:
        adapters, out = fold_adapters, delta_merge
    fold_models = [state(apply_adapter(load_base_model(base_dir, "float32"), p)) for p in adapters]
    merged, base = load_state(out), load_state(base_dir)
    assert set(merged) == set(fold_models[0])
    for name, tensor in merged.items():
        mean = torch.stack([m[name].double() for m in fold_models]).mean(0)
        torch.testing.assert_close(tensor.double(), mean, rtol=0, atol=2e-6)
    # The comparison is not vacuous: the adapters moved every targeted weight by far more than atol.
    assert (merged[f"{MODULE}.weight"] - base[f"{MODULE}.weight"]).abs().max() > 0.01
    combined = read_adapter(out.with_name("merged_adapter"))
    assert combined.config["r"] == len(adapters) * (3 if rslora else 4)
    assert combined.config["lora_alpha"] == len(adapters) * (5 if rslora else 8)


def test_reference_and_delta_differ_exactly_by_the_fold_covariance_term(
    reference_merge, delta_merge, fold_adapters
):
    a, b = fold_factors(fold_adapters, MODULE)
    a_mean, b_mean = sum(a) / N_FOLDS, sum(b) / N_FOLDS
    covariance = 2.0 * sum((bk - b_mean) @ (ak - a_mean) for ak, bk in zip(a, b, strict=True)) / N_FOLDS
    difference = (
        load_state(delta_merge)[f"{MODULE}.weight"].double()
        - load_state(reference_merge)[f"{MODULE}.weight"].double()
    )
    assert covariance.abs().max() > 0.05  # random folds: the term the reference drops is not small
    torch.testing.assert_close(difference, covariance, rtol=0, atol=4e-6)


def test_rerun_skips_a_finished_merge_and_force_redoes_it(base_dir, fold_adapters, reference_merge):
    result = merge_folds(base_dir, fold_adapters, reference_merge, config=MergeConfig(mode="reference"))
    assert result.skipped
    with pytest.raises(WsdmError, match="already exists and is not a merge of these adapters"):
        merge_folds(base_dir, fold_adapters[:2], reference_merge, config=MergeConfig(mode="reference"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"r": 2}, "r is 2 but"),
        ({"alpha": 16}, "lora_alpha is 16 but"),
        ({"targets": ["q_proj", "v_proj"]}, "target_modules is"),
    ],
)
def test_incompatible_folds_fail_with_one_line(base_dir, fold_adapters, tmp_path, change, message):
    odd = make_adapter(base_dir, tmp_path / "odd", seed=7, **change)
    with pytest.raises(WsdmError, match=message) as error:
        merge_folds(base_dir, [fold_adapters[0], odd], tmp_path / "out")
    assert "\n" not in str(error.value) and str(odd) in str(error.value)
    assert not (tmp_path / "out").exists()


def test_outputs_may_not_overwrite_inputs(base_dir, fold_adapters, tmp_path):
    with pytest.raises(WsdmError, match="is an input of the merge"):
        merge_folds(base_dir, fold_adapters[:2], tmp_path / "m", adapter_out=fold_adapters[1], force=True)
    with pytest.raises(WsdmError, match="is an input of the merge"):
        merge_folds(base_dir, fold_adapters[:2], base_dir, force=True)
    assert (fold_adapters[1] / ADAPTER_WEIGHTS).exists() and (base_dir / "config.json").exists()


def test_different_base_model_name_is_refused(fold_adapters, base_dir, tmp_path):
    odd = Path(shutil.copytree(fold_adapters[1], tmp_path / "odd"))
    config = json.loads((odd / ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = "some/other-model"
    (odd / ADAPTER_CONFIG).write_text(json.dumps(config))
    with pytest.raises(WsdmError, match="base_model_name_or_path is 'some/other-model'"):
        merge_folds(base_dir, [fold_adapters[0], odd], tmp_path / "out")


def test_adapter_for_other_modules_is_refused_not_silently_skipped(base_dir, fold_adapters, tmp_path):
    from safetensors.torch import load_file, save_file

    odd = Path(shutil.copytree(fold_adapters[0], tmp_path / "odd"))
    tensors = {k.replace("layers.1.", "layers.7."): v for k, v in load_file(odd / ADAPTER_WEIGHTS).items()}
    save_file(tensors, odd / ADAPTER_WEIGHTS)
    with pytest.raises(WsdmError, match="matches no module of the base model|does not fit the base"):
        merge_folds(base_dir, [odd], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_merge_delta_and_bad_input_exit_codes(base_dir, fold_adapters, tmp_path):
    out = tmp_path / "m"
    args = ["merge", "--base", base_dir, "--out", out, "--mode", "delta"]
    for adapter in fold_adapters[:2]:
        args += ["--adapter", adapter]
    result = run_cli("wsdm-train", *args)
    assert result.returncode == 0, result.stderr
    assert "2 fold adapter(s) merged (delta mode)" in result.stderr
    assert (out / "config.json").exists() and (tmp_path / "m_adapter" / ADAPTER_WEIGHTS).exists()
    quiet = run_cli("wsdm-train", "-q", *[a if a != out else tmp_path / "q" for a in args])
    assert quiet.returncode == 0 and "%|" not in quiet.stderr, quiet.stderr  # no library bars with -q,
    loud = run_cli_loud("wsdm-train", *[tmp_path / "loud" if a == out else a for a in args])  # but without
    assert loud.returncode == 0 and "Writing model shards" in loud.stderr, loud.stderr
    again = run_cli("wsdm-train", *args)
    assert again.returncode == 0 and "already merged" in again.stderr

    missing = run_cli(
        "wsdm-train", "merge", "--base", base_dir, "--out", tmp_path / "x", "--adapter", tmp_path
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no adapter_config.json" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_default_adapters_come_from_the_distill_layout(base_dir, fold_adapters, tmp_path):
    model_dir = tmp_path / "model_save"
    for k, adapter in enumerate(fold_adapters[:2]):
        shutil.copytree(adapter, model_dir / "student" / f"fold{k}" / "best")
    result = run_cli(
        "wsdm-train",
        "merge",
        "--base",
        base_dir,
        "--model-dir",
        model_dir,
        "--folds",
        "3",
        "--out",
        tmp_path / "o",
    )
    assert result.returncode == 2
    assert "fold2" in result.stderr and "adapter folder not found" in result.stderr


def test_atomic_directory_leaves_nothing_on_failure_and_replaces_whole(tmp_path):
    dest = tmp_path / "folder"
    with pytest.raises(RuntimeError), atomic_directory(dest) as tmp:
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(dest) as tmp:
        (tmp / "a").write_text("1")
    with atomic_directory(dest) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in dest.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
