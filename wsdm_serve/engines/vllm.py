"""The offline vLLM engine: GPTQ, FP8 or bf16/fp16 checkpoints on GPUs (tensor parallel within a GPU
group, data parallel across groups), or on CPUs with vLLM's CPU build (tensor parallel over bound
cores, data parallel across groups of cores): the same code, planned by :mod:`.vllm_plan`.

Prompts are queued with ``LLM.enqueue`` as they arrive and collected by stepping the engine, the
loop ``LLM.generate`` runs inside: the engine core (its own process) starts on the first chunk while
the caller tokenizes the next, and it never drains between chunks. (The pooling/classify route
measured the same speed but needs a converted score head, which ignored GPTQ configs in some vLLM
versions; see docs/vllm.md.)

Nothing here imports vLLM or torch at module level: the CLI's ``--help`` stays instant and machines
without vLLM get one line telling them how to install it.

How a prompt is scored (one token, the two letters' processed log-probabilities) and how the
engine is planned and configured is shared with the server's engine: :mod:`.vllm_setup`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import WsdmError
from ..models.folder import ModelFolder
from .base import ProgressCallback, ScoringEngine
from .orphans import ChildGuard, descendants
from .pool import EnginePool, WorkerSpec, temporary_environment
from .settings import EngineSettings
from .vllm_plan import launch_of, plan_engine
from .vllm_setup import VLLMLaunch, check_prompt_lengths, letter_logprobs, scoring_setup

if TYPE_CHECKING:
    from ..models.fp8 import Fp8Recipe

log = logging.getLogger(__name__)


class VLLMScorer:
    """One in-process ``vllm.LLM`` over one GPU group or one group of cores (tensor parallel inside
    it); the process's environment already says which (see :class:`~.vllm_plan.VLLMPlan`)."""

    def __init__(self, launch: VLLMLaunch) -> None:
        kwargs, self.sampling = scoring_setup(launch)
        from vllm import LLM
        from vllm.inputs import TokensPrompt

        self.letter_ids = launch.letter_ids
        self.max_model_len = launch.max_model_len
        self._prompt = TokensPrompt
        before = descendants()
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:  # noqa: BLE001 - vLLM start-up failures (memory, kernels) become one line
            log.debug("vLLM start-up failed", exc_info=True)
            raise launch.start_failure(exc) from exc
        # vLLM's engine core does not watch this process: if it is killed, the guard ends them.
        self._guard = ChildGuard.around(before)

    def prompts(self, sequences: Sequence[Sequence[int]]) -> list:
        return [self._prompt(prompt_token_ids=list(seq)) for seq in sequences]

    def checked_lengths(self, sequences: Sequence[Sequence[int]], first_number: int) -> list[int]:
        """Lengths of a chunk whose first prompt is number ``first_number`` (0-based) of the job."""
        return check_prompt_lengths(sequences, self.max_model_len, first_number)

    def score(
        self, sequences: Sequence[Sequence[int]], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        return self.score_stream([sequences], progress)

    def score_stream(
        self, chunks: Iterable[Sequence[Sequence[int]]], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        """Queue each chunk (shortest prompts first, the reference's order) as soon as it arrives,
        then collect every result; on any error, including Ctrl-C, what is still queued is aborted
        so the engine is clean for the next call."""
        positions: list[int] = []  # input position of each queued prompt, in queueing order
        queued: list[str] = []
        try:
            for chunk in chunks:
                first = len(positions)
                lengths = self.checked_lengths(chunk, first)
                order = sorted(range(len(chunk)), key=lengths.__getitem__)
                prompts = self.prompts([chunk[i] for i in order])
                queued += self.llm.enqueue(prompts, self.sampling, use_tqdm=False)
                positions += [first + i for i in order]
            outputs = self._collect(progress)
        except BaseException:
            with contextlib.suppress(Exception):
                self.llm.llm_engine.abort_request(queued, internal=True)
            raise
        if len(outputs) != len(positions):
            raise WsdmError(f"vLLM returned {len(outputs)} results for {len(positions)} prompts")
        # Request ids count up in queueing order (LLM.generate sorts its outputs the same way).
        outputs.sort(key=lambda output: int(output.request_id))
        result = np.zeros((len(positions), 2), dtype=np.float32)
        result[positions] = letter_logprobs(outputs, self.letter_ids, positions)
        return result

    def _collect(self, progress: ProgressCallback | None) -> list:
        engine = self.llm.llm_engine
        outputs: list = []
        while engine.has_unfinished_requests():
            finished = [output for output in engine.step() if output.finished]
            outputs += finished
            if progress is not None and finished:
                progress(len(finished), sum(len(output.prompt_token_ids) for output in finished))
        return outputs

    def reset_prefix_cache(self) -> None:
        """For benchmarks: the next pass starts cold, like the first pass of a job."""
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is None:
            return
        with contextlib.suppress(Exception):
            shutdown = getattr(llm, "shutdown", None)
            if shutdown is None:
                shutdown = llm.llm_engine.engine_core.shutdown
            shutdown()
        del llm
        gc.collect()
        self._guard.close()


class VLLMEngine(ScoringEngine):
    """Plans the layout (GPUs or CPUs), then scores in this process (one engine that this process
    can start) or with one worker process per engine (data parallel, or a subset of the visible GPUs)."""

    name = "vllm"

    def __init__(
        self,
        model: ModelFolder | str | Path,
        letter_ids: tuple[int, int],
        longest_prompt: int,
        settings: EngineSettings | None = None,
        *,
        extra_args: dict | None = None,
        fp8_recipe: Fp8Recipe | None = None,
    ) -> None:
        """``settings.device`` picks GPUs or CPUs (``auto``: the installed build's); ``extra_args`` (benchmarks,
        experiments) are ``vllm.LLM`` arguments that win over the precision's and ours;
        ``fp8_recipe`` replaces the default FP8 recipe under ``--precision fp8``."""
        settings = settings or EngineSettings(name="vllm")
        model = ModelFolder.of(model)
        self.plan = plan_engine(model, longest_prompt, settings, fp8_recipe)
        extra = {**self.plan.precision_args, **(extra_args or {})}
        launch = launch_of(self.plan, model, letter_ids, settings, extra)
        self.scorer: VLLMScorer | None = None
        self.pool: EnginePool | None = None
        if self.plan.in_process:
            with temporary_environment(self.plan.environments[0]):
                self.scorer = VLLMScorer(launch)
        else:
            specs = [
                WorkerSpec(
                    factory="wsdm_serve.engines.vllm:VLLMScorer",
                    kwargs={"launch": launch},
                    environment=environment,
                    label=f"vllm engine on {label}",
                )
                for environment, label in zip(self.plan.environments, self.plan.labels, strict=True)
            ]
            self.pool = EnginePool(specs, name="vllm")

    def describe(self) -> str:
        return f"vllm: {self.plan.describe()}"

    def score(
        self, sequences: Sequence[Sequence[int]], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        if self.scorer is not None:
            return self.scorer.score(sequences, progress)
        assert self.pool is not None
        return self.pool.score(sequences, progress)

    def score_stream(
        self, chunks: Iterable[Sequence[Sequence[int]]], progress: ProgressCallback | None = None
    ) -> np.ndarray:
        if self.scorer is not None:
            return self.scorer.score_stream(chunks, progress)
        return super().score_stream(chunks, progress)  # worker processes get the whole table

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None
