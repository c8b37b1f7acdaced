"""The one interface every engine implements.

An engine knows nothing about tables or prompts: it gets token-id sequences and returns, for each,
the raw next-token logits of the two answer letters at the sequence's last position. Everything
else (prompting, TTA, outputs) lives in the pipeline, so a new engine is one small module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence

import numpy as np

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(rows_done, tokens_done)`` after each scored batch."""


class ScoringEngine(ABC):
    """Scores prompts; use as a context manager so GPU memory is released."""

    name: str = "engine"

    @abstractmethod
    def score(
        self, sequences: Sequence[Sequence[int]], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        """Return float32 logits of shape ``[len(sequences), 2]`` (letter A, letter B), in input order."""

    def score_stream(
        self, chunks: Iterable[Sequence[Sequence[int]]], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        """Score sequences handed over chunk by chunk (the caller may still be building later ones);
        the result is in the order of the chunks and the sequences in them.

        An engine that can start on the first chunk overrides this. By default the chunks are
        gathered and scored together, which the transformers engine needs: it sorts the whole
        table by length to keep padding small.
        """
        return self.score([sequence for chunk in chunks for sequence in chunk], progress)

    def describe(self) -> str:
        """One line for the job summary; engines with a layout worth knowing say more."""
        return self.name

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; engines that hold none keep this no-op."""

    def __enter__(self) -> ScoringEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def length_sorted_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group row indices, shortest first, so each padded batch holds at most ``batch_tokens`` tokens.

    Sorting keeps padding small; a row longer than the budget still gets a batch of its own.
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order.tolist():
        width = lengths[index]  # ascending, so the newest row is the widest of its batch
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
