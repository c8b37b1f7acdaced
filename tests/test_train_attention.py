"""Batches shaped like the ones whose gradients went NaN on an H200, with finite numbers asserted.

What the NaN depended on (pytorch/pytorch#196678): an explicit attention mask (every right-padded
batch gets one), a padded width ``L % 128 == 64``, and an attention head whose scores are all very
negative (logsumexp below -88.7), which Qwen2.5's "massive activation" heads produce. Then the
cuDNN attention backward returns NaN query gradients while the forward pass is fine. The model here
has such a head by construction, the batch is right-padded to 704 tokens, and the teacher (2-way
CE) and student (full-vocabulary CE) losses run forward and backward through the training head
with LoRA, in bfloat16: every loss and every gradient must be finite. On a CPU this pins the shapes
and the training code path; on a CUDA GPU the same test runs the attention kernels training uses,
and shows the cuDNN backend's NaN where this torch still has it.
"""

from __future__ import annotations

import math

import pytest
import torch

from wsdm_serve.tiny import build_tiny_model
from wsdm_train.config import LoraSettings
from wsdm_train.training.modeling import LetterHead, attach_lora
from wsdm_train.training.stages import letter_lm_loss, two_way_loss

WIDTH = 704  # 704 % 128 == 64
LENGTHS = (WIDTH, 611, 480, 393, 702, 517)
HEAD_DIM = 16
LOW_FREQUENCY = HEAD_DIM // 2 - 1  # the rotary pair that barely rotates over 704 positions
NEGATIVE_SCORE = 120.0  # every score of the head is about -120, so its logsumexp is < -88.7


@pytest.fixture(scope="module")
def massive_head_model(tmp_path_factory, tokenizer):
    """A tiny Qwen2 whose first attention head in layer 0 scores every key at about -120."""
    from safetensors.torch import load_file, save_file

    folder = build_tiny_model(
        tmp_path_factory.mktemp("massive") / "model",
        tokenizer.name_or_path,
        hidden_size=64,
        layers=2,
        heads=4,
        kv_heads=2,
        intermediate_size=128,
        seed=3,
    )
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    q_bias = "model.layers.0.self_attn.q_proj.bias"
    k_bias = "model.layers.0.self_attn.k_proj.bias"
    state[q_bias][LOW_FREQUENCY] = 1.0  # head 0
    state[k_bias][LOW_FREQUENCY] = -NEGATIVE_SCORE * math.sqrt(HEAD_DIM)  # kv head 0, shared by head 0
    save_file(state, str(weights), metadata={"format": "pt"})
    return folder


def padded_batch(tokenizer, device: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.full((len(LENGTHS), WIDTH), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(LENGTHS), WIDTH), dtype=torch.long)
    for row, length in enumerate(LENGTHS):
        input_ids[row, :length] = torch.randint(0, 150000, (length,), generator=generator)
        mask[row, :length] = 1
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def head_on(folder, tokenizer, device: str) -> LetterHead:
    from transformers import AutoModelForCausalLM

    from wsdm_serve.prompt import letter_token_ids

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.to(device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    lora = LoraSettings(r=8, alpha=16, dropout=0.0)
    peft_model = attach_lora(model, lora)
    # A LoRA that already moved away from its zero start, as after a few optimizer steps.
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02, generator=torch.Generator(device=device).manual_seed(1))
    return LetterHead(peft_model, letter_token_ids(tokenizer)).to(device).train()


def lowest_logsumexp(folder, tokenizer, device: str) -> float:
    """The smallest logsumexp of layer 0 head 0's scores over the real rows of the batch."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    batch = padded_batch(tokenizer, device)
    captured = {}
    attention = model.model.layers[0].self_attn
    attention.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o))
    attention.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o))
    with torch.no_grad():
        model(input_ids=batch["input_ids"][:1], attention_mask=batch["attention_mask"][:1])
    q = captured["q"][0, :, :HEAD_DIM]
    k = captured["k"][0, :, :HEAD_DIM]
    scores = (q @ k.T) / math.sqrt(HEAD_DIM)
    causal = torch.ones_like(scores, dtype=torch.bool).tril()
    return float(torch.logsumexp(scores.masked_fill(~causal, float("-inf")), dim=-1).min())


def gradients_finite(head: LetterHead, batch: dict, loss_fn) -> tuple[bool, bool]:
    head.zero_grad(set_to_none=True)
    loss = loss_fn(head, batch).total
    loss.backward()
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    return bool(torch.isfinite(loss)), all(bool(torch.isfinite(g).all()) for g in grads)


def test_the_constructed_head_has_the_failing_shape(massive_head_model, tokenizer):
    assert WIDTH % 128 == 64
    assert lowest_logsumexp(massive_head_model, tokenizer, "cpu") < -88.7


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_losses_and_gradients_are_finite_on_cpu(massive_head_model, tokenizer, role):
    head = head_on(massive_head_model, tokenizer, "cpu")
    loss_fn = two_way_loss if role == "teacher" else letter_lm_loss(head.letter_ids.tolist())
    assert gradients_finite(head, padded_batch(tokenizer, "cpu"), loss_fn) == (True, True)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (the kernels that training uses there)"
)
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_training_attention_on_cuda_is_finite_and_cudnn_is_not(massive_head_model, tokenizer, role):
    from wsdm_train.training.guards import configure_attention

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        configure_attention(allow_cudnn=False)  # what training does
        head = head_on(massive_head_model, tokenizer, "cuda")
        loss_fn = two_way_loss if role == "teacher" else letter_lm_loss(head.letter_ids.tolist())
        batch = padded_batch(tokenizer, "cuda")
        assert gradients_finite(head, batch, loss_fn) == (True, True)
        configure_attention(allow_cudnn=True)
        loss_finite, grads_finite = gradients_finite(head, batch, loss_fn)
        assert loss_finite, "the forward pass is fine with either backend"
        if grads_finite:
            pytest.skip(f"cuDNN attention gave finite gradients here (torch {torch.__version__})")
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
