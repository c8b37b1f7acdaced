"""The last two stages: merging the fold adapters into the base, and GPTQ-quantizing the result."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args

from pydantic import field_validator

from .types import Count, FieldError, Float, Int, section

MergeMode = Literal["reference", "delta"]
DType = Literal["auto", "bfloat16", "float16", "float32"]
QuantFormat = Literal["compressed-tensors", "gptq"]
MERGE_MODES: tuple[str, ...] = get_args(MergeMode)
MERGE_DTYPES: tuple[str, ...] = get_args(DType)
QUANT_FORMATS: tuple[str, ...] = get_args(QuantFormat)
QUANT_DTYPES: tuple[str, ...] = get_args(DType)
# Where a quantize setting lives and not what it does: left out of the record of a quantization.
QUANTIZE_PATH_FIELDS: tuple[str, ...] = ("model", "calibration", "out")


@section
class MergeConfig:
    """`wsdm-train merge`; the defaults are the reference recipe.

    The base model and tokenizer are the student's.
    """

    mode: MergeMode = "reference"
    """reference: average every LoRA tensor, A and B separately, as the published recipe did; delta:
    the exact mean of the folds' weight deltas (one adapter of rank folds x r)."""
    dtype: DType = "auto"
    """dtype of the merged weights; auto keeps the base checkpoint's."""
    max_shard_size: str = "5GB"
    """Largest safetensors shard."""
    adapter: Literal["best", "final"] = "best"
    """Each fold's best or final checkpoint."""
    out: str | None = None
    """Merged model folder: sharded safetensors, config, tokenizer (when unset: paths.model_dir/merged)."""
    adapter_out: str | None = None
    """Where the combined adapter is saved (when unset: OUT_adapter beside OUT)."""


@section
class QuantizeConfig:
    """`wsdm-train quantize`; the defaults are the reference's GPTQ run."""

    bits: Literal[4, 8] = 8
    """Weight bits (vLLM's weight-only kernels take 4 or 8)."""
    group_size: Int = 128
    """Inputs sharing a scale; -1: per channel."""
    symmetric: bool = True
    act_order: bool = False
    """Quantize columns in activation order; the reference did not."""
    dampening: Float = 0.1
    """GPTQ damping fraction of the Hessian diagonal (the reference's library default)."""
    block_size: Count = 128
    calibration_samples: Count = 1024
    """Prompts drawn."""
    calibration_seed: Int = 2025
    """random_state of the draw."""
    max_calibration_tokens: Count | None = None
    """Keep only the first N tokens of each prompt (when unset: whole prompts, as the reference)."""
    format: QuantFormat = "compressed-tensors"
    """compressed-tensors: vLLM's native format, also read by the transformers engine; gptq: GPTQ v1
    like the released model (vLLM only; runs on GPUs without Marlin such as the T4)."""
    dtype: DType = "auto"
    """dtype the model is calibrated in; auto keeps the checkpoint's (the reference loaded fp16,
    which can overflow for Qwen2.5)."""
    ignore: tuple[str, ...] = ("lm_head",)
    max_shard_size: str = "5GB"
    """Largest safetensors shard."""
    model: str | None = None
    """Merged full-precision model folder (when unset: the merge output)."""
    calibration: str | None = None
    """Table with a 'text' column to calibrate on (when unset: fold 0's student training prompts,
    PROCESSED_DIR/student/fold0/train.parquet)."""
    out: str | None = None
    """Quantized model folder (when unset: MODEL_DIR/final_model)."""

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, value: int) -> int:
        if value != -1 and (value <= 0 or value % 32):
            raise ValueError(f"use -1 (per channel) or a multiple of 32, got {value}")
        return value

    @field_validator("dampening")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"expected a fraction between 0 and 1, got {value}")
        return value

    def __post_init__(self) -> None:
        if self.format == "gptq" and self.act_order:
            raise FieldError("act_order", "the gptq format is written without activation order")

    @property
    def spec(self):
        from wsdm_serve.models.quantization import QuantSpec

        return QuantSpec(self.bits, self.group_size, self.symmetric, self.act_order)

    def settings(self) -> dict[str, Any]:
        """What the quantization depends on (the paths are recorded separately, as inputs)."""
        values = dataclasses.asdict(self)
        for name in QUANTIZE_PATH_FIELDS:
            values.pop(name)
        values["ignore"] = list(self.ignore)
        return values
