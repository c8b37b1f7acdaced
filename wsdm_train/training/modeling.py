"""The judge head over any causal LM, model loading for training, and the losses.

The head runs only the decoder, gathers the hidden state of each row's last real token (rows are
right-padded) and applies the model's own output layer to those rows alone, so the full-vocabulary
logits of every position (what the reference computed and threw away) never exist. The output layer
is called as a module, not sliced by hand, so DeepSpeed ZeRO-3 can gather its partitioned weight.

Losses are pure functions of logits so they can be checked against hand-computed values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from wsdm_serve.errors import WsdmError

from ..config import DISTILL_MODES, LoadSettings, LoraSettings

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


class LossParts(NamedTuple):
    """The total loss and its terms (terms are averaged over teachers, for logging only)."""

    total: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor | None = None
    cos: torch.Tensor | None = None


def pretrain_loss(vocab_logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the full vocabulary at the last position.

    ``vocab_logits`` is ``[n, vocab]``, ``target_ids`` the token id of the right letter per row.
    Both orders of a pair sit in the same micro-batch, so this is their mean.
    """
    return F.cross_entropy(vocab_logits.float(), target_ids.long())


def two_way_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the two letter logits ``[n, 2]``; label 0 = A wins, 1 = B wins."""
    return F.cross_entropy(logits.float(), labels.long())


def _soft_terms(student_logits, target_probs, temperature: float):
    """KL(target || student) with batchmean, and mean (1 - cosine) of the two distributions."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, target_probs, reduction="batchmean")
    cos = (1.0 - F.cosine_similarity(target_probs, log_p_student.exp(), dim=-1)).mean()
    return kl, cos


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: Sequence[torch.Tensor] | torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    mode: str = "reference",
) -> LossParts:
    """The distillation loss of the reference, or its single-averaged-target variant.

    ``reference``: (CE + sum over teachers j of [KL_j + (1 - cos_j)]) / (1 + 2 J), where CE is the
    2-way cross-entropy of the raw student logits, KL_j = KL(softmax(g_j / T) || softmax(z / T))
    averaged over rows, and cos_j the cosine similarity of those two distributions. No T^2 factor.
    ``mean_target``: the teachers' softmax(g_j / T) are averaged into one target p, and the loss is
    (CE + KL(p || student) + (1 - cos)) / 3.
    ``teacher_logits`` is a list of ``[n, 2]`` tensors or one ``[n, J, 2]`` tensor.
    """
    if mode not in DISTILL_MODES:
        raise WsdmError(f"distill mode {mode!r}: expected one of {', '.join(DISTILL_MODES)}")
    if temperature <= 0:
        raise WsdmError(f"distill temperature must be > 0, got {temperature}")
    if isinstance(teacher_logits, torch.Tensor):
        teachers = list(teacher_logits.unbind(dim=1)) if teacher_logits.dim() == 3 else [teacher_logits]
    else:
        teachers = list(teacher_logits)
    if not teachers:
        raise WsdmError("distillation needs at least one teacher")
    student = student_logits.float()
    ce = two_way_ce(student, labels)
    probs = [torch.softmax(t.to(student.device).float() / temperature, dim=-1) for t in teachers]
    if mode == "mean_target":
        kl, cos = _soft_terms(student, torch.stack(probs).mean(dim=0), temperature)
        return LossParts((ce + kl + cos) / 3.0, ce.detach(), kl.detach(), cos.detach())
    total = ce
    kls, coss = [], []
    for target in probs:
        kl, cos = _soft_terms(student, target, temperature)
        total = total + kl + cos
        kls.append(kl.detach())
        coss.append(cos.detach())
    total = total / (1 + 2 * len(probs))
    return LossParts(total, ce.detach(), torch.stack(kls).mean(), torch.stack(coss).mean())


# --------------------------------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------------------------------


class LetterHead(torch.nn.Module):
    """Wraps a (PEFT) causal LM; ``forward`` returns the A/B logits at each row's last real token.

    With ``full_vocab=True`` it also returns that position's logits over the whole vocabulary (the
    post-pretraining loss needs them). Everything is float32 on the way out.
    """

    def __init__(self, model, letter_ids: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("letter_ids", torch.tensor(letter_ids, dtype=torch.long), persistent=False)

    @property
    def causal_lm(self):
        """The transformers model under the PEFT wrapper (LoRA layers live inside it)."""
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def forward(self, input_ids, attention_mask, full_vocab: bool = False):
        lm = self.causal_lm
        outputs = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
        last = attention_mask.long().sum(dim=1) - 1
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        vocab_logits = lm.get_output_embeddings()(hidden[rows, last]).float()
        config = lm.config
        scale = getattr(config, "logit_scale", None)
        if scale is not None:
            vocab_logits = vocab_logits * scale
        softcap = getattr(config, "final_logit_softcapping", None)
        if softcap:
            vocab_logits = (vocab_logits / softcap).tanh() * softcap
        letters = vocab_logits.index_select(-1, self.letter_ids.to(vocab_logits.device))
        return (letters, vocab_logits) if full_vocab else (letters, None)


# --------------------------------------------------------------------------------------------------
# Loading for training
# --------------------------------------------------------------------------------------------------


def resolve_train_dtype(dtype: str, device: str):
    if dtype != "auto":
        return getattr(torch, dtype)
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def _require_bitsandbytes(device: str) -> None:
    if not device.startswith("cuda"):
        raise WsdmError(
            "4-bit loading (bitsandbytes nf4) needs a CUDA GPU; set load_in_4bit: false for this model "
            "to train it in 16/32-bit on this machine"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise WsdmError(
            "4-bit loading needs the bitsandbytes package: pip install 'bitsandbytes>=0.45'"
        ) from exc


def load_base_model(model_dir: str | Path, settings: LoadSettings, device: str, *, training: bool):
    """A transformers causal LM, 4-bit nf4 (double quant, bf16 compute) if asked, ready for LoRA."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise WsdmError(f"{model_dir}: not a model folder (no config.json)")
    dtype = resolve_train_dtype(settings.dtype, device)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": settings.trust_remote_code}
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if settings.load_in_4bit:
        _require_bitsandbytes(device)
        from transformers import BitsAndBytesConfig

        kwargs["dtype"] = torch.bfloat16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except Exception as exc:  # noqa: BLE001 - one line for any loader failure
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WsdmError(f"{model_dir}: cannot load the model ({reason})") from exc
    model.config.use_cache = False
    if not settings.load_in_4bit:
        model.to(device)
    if training:
        gc_kwargs = {"use_reentrant": False}
        if settings.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=settings.gradient_checkpointing,
                gradient_checkpointing_kwargs=gc_kwargs,
            )
        elif settings.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
            # With frozen embeddings no input needs a gradient; PEFT's documented fix for
            # checkpointed blocks whose inputs would otherwise not require grad.
            model.enable_input_require_grads()
    return model


def gradient_checkpointing_active(model) -> bool:
    """True when the decoder layers will recompute activations in training mode."""
    return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


def attach_lora(model, lora: LoraSettings, init_adapter: str | Path | None = None, trainable: bool = True):
    """Wrap ``model`` with a fresh LoRA, then load ``init_adapter`` into it strictly.

    Strict means every LoRA tensor of the adapter file must match one of the model, by name and
    shape, and every LoRA tensor of the model must be in the file: a wrong path, a different rank or
    other target modules stop the run instead of silently training from scratch.
    """
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora.peft_config())
    if init_adapter is not None:
        load_adapter_strict(peft_model, init_adapter, lora)
    if not trainable:
        for parameter in peft_model.parameters():
            parameter.requires_grad_(False)
    return peft_model


def load_adapter_strict(peft_model, adapter_dir: str | Path, lora: LoraSettings | None = None) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.exists():
        raise WsdmError(
            f"{adapter_dir}: no {ADAPTER_WEIGHTS}; not a saved adapter (run the earlier stage first)"
        )
    if lora is not None:
        _check_adapter_config(adapter_dir, lora)
    state = load_file(str(weights))
    try:
        result = set_peft_model_state_dict(peft_model, state)
    except RuntimeError as exc:  # shape mismatch
        first = str(exc).strip().splitlines()
        raise WsdmError(f"{weights}: adapter does not fit the model ({first[-1] if first else exc})") from exc
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [key for key in (getattr(result, "missing_keys", []) or []) if "lora_" in key]
    if unexpected or missing:
        detail = []
        if unexpected:
            detail.append(f"{len(unexpected)} tensor(s) not in the model, e.g. {unexpected[0]}")
        if missing:
            detail.append(f"{len(missing)} LoRA tensor(s) of the model missing, e.g. {missing[0]}")
        raise WsdmError(f"{weights}: adapter does not match the model: {'; '.join(detail)}")


def _check_adapter_config(adapter_dir: Path, lora: LoraSettings) -> None:
    path = adapter_dir / ADAPTER_CONFIG
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise WsdmError(f"{adapter_dir}: no {ADAPTER_CONFIG}") from None
    except json.JSONDecodeError as exc:
        raise WsdmError(f"{path}: not valid JSON ({exc.msg})") from exc
    problems = []
    if saved.get("r") != lora.r:
        problems.append(f"r {saved.get('r')} != {lora.r}")
    if saved.get("lora_alpha") != lora.alpha:
        problems.append(f"lora_alpha {saved.get('lora_alpha')} != {lora.alpha}")
    targets = saved.get("target_modules")
    if targets is not None and set(targets) != set(lora.target_modules):
        problems.append(f"target_modules {sorted(targets)} != {sorted(lora.target_modules)}")
    if problems:
        raise WsdmError(f"{path}: adapter was trained with other LoRA settings ({'; '.join(problems)})")


def count_trainable(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def log_loss(probs_b, labels, eps: float = 1e-15) -> float:
    """Binary log loss of P(B wins) against labels (1 = B), clipped like scikit-learn."""
    import numpy as np

    p = np.clip(np.asarray(probs_b, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
