"""Model shapes without weights: tiny random Qwen2 models (tests, parity checks, the `tiny` training
preset) and the 14B judge shape (benchmarks).

They share the real Qwen2.5 tokenizer (so prompts, truncation and letter ids are the real ones) and
differ from the 14B judge only in size, which makes every code path runnable on a CPU in seconds.
"""

from __future__ import annotations

from pathlib import Path

QWEN25_VOCAB = 151936  # the Qwen2.5 embedding size for the small models; the tokenizer has 151,665 ids

QWEN25_14B_SHAPE = {
    "vocab_size": 152064,
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 48,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
"""The judge's shape (Qwen2.5-14B-Instruct's config.json): the honest size for speed and memory
measurements with random weights, shared by the benchmarks and the GPU checks."""


def build_tiny_model(
    dest: str | Path,
    tokenizer_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    init_std: float = 0.02,
    dtype: str = "float32",
) -> Path:
    """Save a random Qwen2ForCausalLM with the given tokenizer to ``dest`` and return the folder."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    dest = Path(dest)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        vocab_size=QWEN25_VOCAB,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        initializer_range=init_std,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest
