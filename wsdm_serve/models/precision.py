"""``--precision checkpoint|fp8``: what an engine runs, decided from config.json before any loading.

``checkpoint`` (the default) runs exactly what the folder holds, so the released GPTQ judge keeps
the reference's decisions. ``fp8`` runs the linear layers on FP8 tensor cores with the recipe of
:data:`~wsdm_serve.models.fp8.DEFAULT_RECIPE`: a bf16/fp16 checkpoint is quantized by vLLM at load,
an FP8 checkpoint is what it is, and an integer checkpoint (GPTQ, compressed-tensors int) must be
converted first, because re-quantizing its integers at load would round every weight twice without
saying so. Only the vllm engine runs FP8, and only on GPUs with FP8 tensor cores (compute capability
8.9: Ada, Hopper and newer); everything else stops with one line that says what to do.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import WsdmError
from .fp8 import DEFAULT_RECIPE, Fp8Recipe, online_arguments

PRECISIONS = ("checkpoint", "fp8")
FP8_MIN_CAPABILITY = (8, 9)
FP8_CHECKPOINT_METHODS = ("fp8", "fbgemm_fp8", "modelopt")


def check_precision_name(precision: str) -> None:
    if precision not in PRECISIONS:
        raise WsdmError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")


def checkpoint_kind(config: dict) -> str:
    """``full`` (bf16/fp16/fp32), ``fp8`` (FP8 weights) or ``integer`` (GPTQ, AWQ, int schemes, ...)."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return "full"
    method = str(quant.get("quant_method", "")).lower()
    if method in FP8_CHECKPOINT_METHODS:
        return "fp8"
    if method == "compressed-tensors":
        for group in (quant.get("config_groups") or {}).values():
            weights = (group or {}).get("weights") or {}
            if weights.get("type") == "float" and weights.get("num_bits") == 8:
                return "fp8"
    return "integer"


def fp8_hf_error(why: str | None = None) -> WsdmError:
    where = f" ({why})" if why else ""
    return WsdmError(
        f"--precision fp8 runs on the vllm engine only (FP8 tensor cores of Ada/Hopper GPUs){where}; "
        "the hf engine runs the checkpoint's own precision: drop --precision fp8 or use --engine vllm"
    )


def check_model_precision(model_dir: str | Path, config: dict, precision: str) -> None:
    """Stop before any work when ``precision`` cannot apply to this checkpoint."""
    check_precision_name(precision)
    if precision == "fp8" and checkpoint_kind(config) == "integer":
        quant = config.get("quantization_config") or {}
        method = quant.get("quant_method", "quantized")
        bits = quant.get("bits")
        what = f"{method} {bits}-bit" if bits else str(method)
        model_dir = Path(model_dir)
        target = model_dir.with_name(f"{model_dir.name}-fp8")
        raise WsdmError(
            f"{model_dir}: is a {what} integer checkpoint; --precision fp8 needs its weights in full precision "
            f"or FP8: run `wsdm-serve convert {model_dir} --to fp8 --out {target}` and predict with --model {target}"
        )


def vllm_arguments(config: dict, precision: str, recipe: Fp8Recipe = DEFAULT_RECIPE) -> dict:
    """Extra ``vllm.LLM`` arguments for ``precision`` on this checkpoint (none for ``checkpoint``).

    Call :func:`check_model_precision` first; this only chooses.
    """
    if precision != "fp8":
        return {}
    layers = _layers(config)
    if checkpoint_kind(config) == "fp8":
        return {"kv_cache_dtype": "fp8"} if recipe.kv_cache_fp8 else {}
    return online_arguments(recipe, layers)


def _layers(config: dict) -> int:
    nested = config.get("text_config")
    source = nested if isinstance(nested, dict) else config
    layers = source.get("num_hidden_layers")
    return layers if isinstance(layers, int) and layers > 0 else 0
