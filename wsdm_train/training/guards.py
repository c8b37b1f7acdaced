"""Training never goes on through a non-finite number, and avoids the attention kernel that makes them.

A NaN loss or gradient poisons the weights at the next optimizer step, and every later number
(dev accuracy chosen from NaN logits, teacher logits written to disk) is then silently wrong. So the
loop checks the loss of every micro-batch before its backward pass and the gradient norm of every
optimizer step before the update, and stops the stage with one line naming the stage, the step and
the rows; the checkpoints on disk are the last good ones, since nothing is saved after the check.

The non-finite gradients that stopped real-weights training on Hopper came from PyTorch's cuDNN
attention backend: with an explicit attention mask (every right-padded batch), a padded width
``L % 128 == 64`` and an attention head whose scores are all very negative (Qwen2.5 has such
"massive activation" heads), its backward kernel returns NaN in the query gradient while the
forward pass is fine (pytorch/pytorch#196678, from torch 2.11 on H100/H200). Training therefore
runs with that backend switched off: SDPA then takes the memory-efficient kernel, which handles
the same masks correctly. ``sdpa_cudnn: true`` in a model's settings turns it back on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from wsdm_serve.errors import WsdmError

ROWS_SHOWN = 16


class NonFiniteError(WsdmError):
    """A loss, gradient norm or logit that is NaN or infinite: the stage stops, nothing is saved."""


def name_rows(keys: Sequence[str], limit: int = ROWS_SHOWN) -> str:
    """``a, b, c`` or ``a, b, ... (+5 more)``: every row of a batch, within one readable line."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... (+{len(keys) - limit} more)"


def is_finite(value: float | torch.Tensor | None) -> bool:
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return math.isfinite(value)


def check_logits(
    logits: np.ndarray, keys: Sequence[str], what: str, consequence: str = "nothing was written"
) -> None:
    """Refuse logits with a NaN or infinity, naming the first such row (1-based) and its key."""
    bad = np.flatnonzero(~np.isfinite(logits).all(axis=-1))
    if len(bad):
        first = int(bad[0])
        raise NonFiniteError(
            f"{what}: row {first + 1} ({keys[first]}): logit is not a finite number "
            f"({len(bad)} of {len(keys)} rows); {consequence}"
        )


def configure_attention(allow_cudnn: bool) -> None:
    """Switch PyTorch's cuDNN attention backend on or off for this process.

    A process-wide switch rather than a context around the forward pass, because gradient
    checkpointing recomputes the forward inside the backward pass, outside any such context. The
    flag only matters on CUDA; setting it elsewhere is harmless (and lets a CPU test see it).
    """
    torch.backends.cuda.enable_cudnn_sdp(allow_cudnn)


def cudnn_attention_enabled() -> bool:
    return bool(torch.backends.cuda.cudnn_sdp_enabled())
