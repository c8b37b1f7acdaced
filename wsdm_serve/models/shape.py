"""What a model folder's config.json says about its size: weight bytes, KV bytes per token.

Plain arithmetic on the config (quantized widths counted from ``quantization_config``), used by the
GPU plan to decide what fits; the config itself is read by :mod:`.folder`.
"""

from __future__ import annotations

from pathlib import Path

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def text_config(config: dict) -> dict:
    """The language-model part of a config (multimodal configs nest it under ``text_config``)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) else config


def quantization_bits(config: dict) -> tuple[int, int] | None:
    """(bits, group_size) of a checkpoint's quantized linear weights, or None when unquantized.

    group_size 0 means one scale per output channel. Unknown methods count as 16 bits, which can
    only over-estimate memory.
    """
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return None
    method = str(quant.get("quant_method", "")).lower()
    if method in ("gptq", "awq", "gptq_marlin", "awq_marlin"):
        bits = int(quant.get("bits", quant.get("w_bit", 16)))
        group = int(quant.get("group_size", quant.get("q_group_size", -1)) or -1)
        return bits, max(group, 0)
    if method == "compressed-tensors":
        for scheme in (quant.get("config_groups") or {}).values():
            weights = (scheme or {}).get("weights") or {}
            if "num_bits" in weights:
                group = weights.get("group_size") or 0
                return int(weights["num_bits"]), int(group)
        return 16, 0
    if method in ("fp8", "fbgemm_fp8", "modelopt"):
        return 8, 0
    if method == "bitsandbytes":
        return (4, 64) if quant.get("load_in_4bit") else (8, 0)
    return 16, 0


def layer_shapes(config: dict) -> dict[str, int] | None:
    """The dense-decoder dimensions the size formulas need; None for a config they do not describe."""
    cfg = text_config(config)
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    if any(not isinstance(cfg.get(key), int) for key in needed):
        return None
    if any(key in cfg for key in ("num_local_experts", "num_experts", "n_routed_experts")):
        return None  # mixture of experts: the dense formula below would be wrong
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return {
        "hidden": cfg["hidden_size"],
        "intermediate": cfg["intermediate_size"],
        "layers": cfg["num_hidden_layers"],
        "heads": heads,
        "kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": head_dim,
        "vocab": cfg["vocab_size"],
        "tied": bool(cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
    }


def estimate_weight_bytes(config: dict, dtype: str, fp8: bool = False) -> int | None:
    """Weight memory of a dense decoder from its config: linear layers at the checkpoint's quantized
    width (plus one 16-bit scale and one zero point per group), embeddings, head and norms in ``dtype``.
    ``fp8``: the linear layers of a full-precision checkpoint are quantized to FP8 at load (one byte each).

    None when the config does not describe a dense decoder this formula knows.
    """
    shapes = layer_shapes(config)
    if shapes is None:
        return None
    h, f, n = shapes["hidden"], shapes["intermediate"], shapes["layers"]
    q_width = shapes["heads"] * shapes["head_dim"]
    kv_width = shapes["kv_heads"] * shapes["head_dim"]
    linear_params = n * (h * q_width * 2 + h * kv_width * 2 + 3 * h * f)
    embed_params = shapes["vocab"] * h * (1 if shapes["tied"] else 2)
    norm_params = n * 2 * h + h
    plain = DTYPE_BYTES.get(dtype, 2)
    quant = quantization_bits(config)
    if fp8 and quant is None:
        quant = (8, 0)
    if quant is None or quant[0] >= 16:
        linear_bytes = linear_params * plain
    else:
        bits, group = quant
        per_group = 2 + bits / 8  # a 16-bit scale and a packed zero point per group
        overhead = per_group / group if group else 0.0
        linear_bytes = linear_params * (bits / 8 + overhead)
    return int(linear_bytes + (embed_params + norm_params) * plain)


def checkpoint_bytes(model_dir: str | Path) -> int | None:
    """Size of the weight files on disk: the fallback estimate for architectures the formula skips."""
    model_dir = Path(model_dir)
    files = list(model_dir.glob("*.safetensors")) or list(model_dir.glob("*.bin"))
    return sum(path.stat().st_size for path in files) or None


def kv_bytes_per_token(config: dict, dtype: str) -> int:
    """Key and value cache of one token over all layers (what one long prompt needs in KV cache)."""
    shapes = layer_shapes(config)
    if shapes is None:
        return 0
    return 2 * shapes["layers"] * shapes["kv_heads"] * shapes["head_dim"] * DTYPE_BYTES.get(dtype, 2)
