"""Engines for pool tests, built inside worker processes (so they must be importable there).

They are deliberately simple, so a test can tell what the pool did: which worker scored which row
with which CUDA_VISIBLE_DEVICES, and what happens when a worker fails or dies.
"""

from __future__ import annotations

import os

import numpy as np

from wsdm_serve.errors import WsdmError


class EchoEngine:
    """Logits = (sum of the tokens, the worker's CUDA_VISIBLE_DEVICES as a number)."""

    def __init__(self, chunk_rows: int = 2) -> None:
        self.chunk_rows = chunk_rows

    def score(self, sequences, progress=None):
        device = float(os.environ.get("CUDA_VISIBLE_DEVICES", "-1").split(",")[0])
        result = np.array([[float(sum(seq)), device] for seq in sequences], dtype=np.float32)
        for start in range(0, len(sequences), self.chunk_rows):
            chunk = sequences[start : start + self.chunk_rows]
            if progress is not None:
                progress(len(chunk), sum(len(seq) for seq in chunk))
        return result

    def close(self) -> None:
        pass


class FailingEngine:
    def __init__(self, when: str = "build") -> None:
        if when == "build":
            raise WsdmError("no GPU memory left for the KV cache")
        if when == "die":
            os._exit(7)
        self.when = when

    def score(self, sequences, progress=None):
        if self.when == "die-while-scoring":
            os._exit(9)
        raise RuntimeError("kernel launch failed")

    def close(self) -> None:
        pass
