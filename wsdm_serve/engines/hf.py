"""The transformers engine: CPU or one CUDA GPU, for any causal-LM folder.

Runs only the decoder over right-padded, length-sorted batches, then applies the output head to the
last real position of each row and keeps the two letter logits: the full-vocabulary logits of every
position (the bulk of a naive forward's memory) are never formed. Right padding with causal
attention means real tokens never see padding, so the default positions are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import WsdmError
from ..models.folder import ModelFolder
from ..models.quantization import hf_loading_overrides
from ..quiet import library_bars_hidden
from .base import ProgressCallback, ScoringEngine, length_sorted_batches
from .settings import EngineSettings

DEFAULT_BATCH_TOKENS = {"cuda": 32768, "cpu": 8192}


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WsdmError(f"--device {device}: no CUDA GPU is visible")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise WsdmError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str, device: str):
    """bf16 on GPUs that have it, fp16 on older GPUs (T4), fp32 on CPU where bf16 is emulated slowly."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class HFEngine(ScoringEngine):
    name = "hf"

    def __init__(
        self,
        model: ModelFolder | str | Path,
        letter_ids: tuple[int, int],
        settings: EngineSettings | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM

        settings = settings or EngineSettings(name="hf")
        folder = ModelFolder.of(model)
        self.model_dir = folder.path
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.batch_tokens = (
            settings.batch_tokens or DEFAULT_BATCH_TOKENS["cuda" if self.device.startswith("cuda") else "cpu"]
        )
        quantization = folder.quantization
        overrides = hf_loading_overrides(quantization)
        try:
            with library_bars_hidden():  # compressed-tensors' decompression bars, under -q
                # device_map puts the weights straight onto the GPU instead of staging 28 GB in host memory
                model = AutoModelForCausalLM.from_pretrained(
                    self.model_dir,
                    dtype=self.dtype,
                    trust_remote_code=settings.trust_remote_code,
                    device_map={"": self.device} if self.device.startswith("cuda") else None,
                    **overrides,
                )
        except Exception as exc:  # noqa: BLE001 - turn loader failures into one actionable line
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if quantization:
                method = quantization.get("quant_method", "quantized")
                bits = quantization.get("bits", "?")
                target = self.model_dir.with_name(f"{self.model_dir.name}-bf16")
                raise WsdmError(
                    f"{self.model_dir}: {method} {bits}-bit checkpoint cannot be loaded by the transformers "
                    f"engine on {self.device} ({reason}); convert it for this engine with `wsdm-serve convert "
                    f"{self.model_dir} --to bf16 --out {target}`, or use --engine vllm on a GPU"
                ) from exc
            raise WsdmError(f"{self.model_dir}: cannot load the model ({reason})") from exc
        self._attach(model.to(self.device), letter_ids)

    @classmethod
    def from_model(cls, model, letter_ids: tuple[int, int], *, batch_tokens: int | None = None) -> HFEngine:
        """Wrap a model already in memory (built with ``from_config`` on a GPU for benchmarks, where
        writing and reading 30 GB of random weights would measure the disk, not the engine)."""
        engine = cls.__new__(cls)
        engine.model_dir = None
        engine.device = str(next(model.parameters()).device)
        engine.dtype = next(model.parameters()).dtype
        engine.batch_tokens = (
            batch_tokens or DEFAULT_BATCH_TOKENS["cuda" if engine.device.startswith("cuda") else "cpu"]
        )
        engine._attach(model, letter_ids)
        return engine

    def _attach(self, model, letter_ids: tuple[int, int]) -> None:
        import torch

        self.model = model.eval()
        self.decoder = model.get_decoder()
        head = model.get_output_embeddings()
        ids = torch.tensor(letter_ids, device=self.device)
        if isinstance(head, torch.nn.Linear):
            # Two rows of the output matrix are all we need: [2, hidden] instead of [vocab, hidden].
            self._letter_weight = head.weight.index_select(0, ids).detach()
            self._letter_bias = None if head.bias is None else head.bias.index_select(0, ids).detach()
            self._head = None
        else:
            self._head = head
        self._letter_ids = ids
        config = model.config
        self._softcap = getattr(config, "final_logit_softcapping", None)
        self._logit_scale = getattr(config, "logit_scale", None)
        self._pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        if isinstance(self._pad_id, list):
            self._pad_id = self._pad_id[0]

    def _letter_logits(self, last_hidden):
        if self._head is None:
            logits = last_hidden @ self._letter_weight.T
            if self._letter_bias is not None:
                logits = logits + self._letter_bias
        else:
            logits = self._head(last_hidden.unsqueeze(1)).squeeze(1).index_select(-1, self._letter_ids)
        logits = logits.float()
        if self._logit_scale is not None:
            logits = logits * self._logit_scale
        if self._softcap:
            logits = (logits / self._softcap).tanh() * self._softcap
        return logits

    def score(
        self, sequences: Sequence[Sequence[int]], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        import torch

        lengths = [len(seq) for seq in sequences]
        if any(length == 0 for length in lengths):
            raise WsdmError("cannot score an empty token sequence")
        result = np.zeros((len(sequences), 2), dtype=np.float32)
        with torch.inference_mode():
            for batch in length_sorted_batches(lengths, self.batch_tokens):
                width = max(lengths[i] for i in batch)
                input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, index in enumerate(batch):
                    input_ids[row, : lengths[index]] = torch.as_tensor(sequences[index], dtype=torch.long)
                    attention_mask[row, : lengths[index]] = 1
                input_ids = input_ids.to(self.device)
                attention_mask = attention_mask.to(self.device)
                hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
                last = torch.as_tensor([lengths[i] - 1 for i in batch], device=self.device)
                last_hidden = hidden[torch.arange(len(batch), device=self.device), last]
                logits = self._letter_logits(last_hidden).cpu().numpy()
                result[batch] = logits
                if progress is not None:
                    progress(len(batch), sum(lengths[i] for i in batch))
        return result

    def close(self) -> None:
        import gc

        import torch

        for attribute in ("model", "decoder", "_head", "_letter_weight", "_letter_bias"):
            if hasattr(self, attribute):
                setattr(self, attribute, None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
