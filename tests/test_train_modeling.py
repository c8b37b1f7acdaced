"""The letter head, gradient checkpointing and strict adapter loading on a real tiny Qwen2."""

from __future__ import annotations

import json

import pytest
import torch

from wsdm_serve.errors import WsdmError
from wsdm_train.training.modeling import (
    LetterHead,
    LoadSettings,
    LoraSettings,
    attach_lora,
    gradient_checkpointing_active,
    load_base_model,
)
from wsdm_train.training.modeling import (
    load_base_model as _load,
)

CPU32 = LoadSettings(dtype="float32", gradient_checkpointing=False)
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def test_head_reads_each_rows_last_real_token(tiny_model_dir):
    model = load_base_model(tiny_model_dir, CPU32, "cpu", training=False).eval()
    head = LetterHead(model, (32, 33))
    rows = [
        [151644, 8948, 198, 2610, 525, 264],
        [151644, 872, 198, 32],
        [151644, 77091, 198, 32, 25, 220, 33],
    ]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        letters, vocab = head(ids, mask, full_vocab=True)
        for i, row in enumerate(rows):
            alone = model(torch.tensor([row])).logits[0, -1]
            torch.testing.assert_close(vocab[i], alone.float(), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(letters[i], alone[[32, 33]].float(), rtol=1e-4, atol=1e-4)


def _count_mlp_calls(model, steps=1) -> int:
    calls = {"n": 0}
    layer = model.get_base_model().model.layers[0].mlp
    handle = layer.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    head = LetterHead(model, (32, 33)).train()
    ids = torch.randint(0, 1000, (2, 12))
    for _ in range(steps):
        letters, _ = head(ids, torch.ones_like(ids))
        letters.sum().backward()
    handle.remove()
    return calls["n"]


def test_gradient_checkpointing_is_really_on(tiny_model_dir):
    with_gc = attach_lora(
        load_base_model(
            tiny_model_dir, LoadSettings(dtype="float32", gradient_checkpointing=True), "cpu", training=True
        ),
        LORA,
    )
    without = attach_lora(load_base_model(tiny_model_dir, CPU32, "cpu", training=True), LORA)
    assert gradient_checkpointing_active(with_gc)
    assert not gradient_checkpointing_active(without)
    # Checkpointed blocks run their forward again during backward: twice per step instead of once
    # (a pre-hook: the recomputation may stop early, before a module finishes).
    assert _count_mlp_calls(without) == 1
    assert _count_mlp_calls(with_gc) == 2
    trainable = [n for n, p in with_gc.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(p.grad is not None for n, p in with_gc.named_parameters() if "lora_B" in n)


def test_strict_adapter_loading(tiny_model_dir, tmp_path):
    source = attach_lora(_load(tiny_model_dir, CPU32, "cpu", training=True), LORA)
    with torch.no_grad():
        for name, param in source.named_parameters():
            if "lora_B" in name:
                param.normal_()
    source.save_pretrained(tmp_path / "adapter")
    expected = {n: p.detach().clone() for n, p in source.named_parameters() if "lora_" in n}

    loaded = attach_lora(_load(tiny_model_dir, CPU32, "cpu", training=True), LORA, tmp_path / "adapter")
    got = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value)

    with pytest.raises(WsdmError, match="no adapter_model.safetensors"):
        attach_lora(_load(tiny_model_dir, CPU32, "cpu", training=True), LORA, tmp_path / "missing")
    with pytest.raises(WsdmError, match="other LoRA settings.*r 4 != 8"):
        attach_lora(
            _load(tiny_model_dir, CPU32, "cpu", training=True),
            LoraSettings(r=8, alpha=8),
            tmp_path / "adapter",
        )

    # Same declared settings but a tensor renamed: the reference's strict=False would have ignored it.
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    first = sorted(weights)[0]
    weights[first.replace("layers.0", "layers.7")] = weights.pop(first)
    save_file(weights, tmp_path / "adapter" / "adapter_model.safetensors")
    with pytest.raises(WsdmError, match="does not match the model"):
        attach_lora(_load(tiny_model_dir, CPU32, "cpu", training=True), LORA, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_four_bit_on_cpu_is_one_clear_error(tiny_model_dir):
    with pytest.raises(WsdmError, match="needs a CUDA GPU"):
        load_base_model(tiny_model_dir, LoadSettings(load_in_4bit=True), "cpu", training=True)
