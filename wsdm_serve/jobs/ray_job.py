"""One job over a Ray cluster, on Ray Data: ``wsdm-serve predict SOURCE --ray``.

::

    driver: list shards -> inspect them (CPU tasks: columns, ids, hashes) -> units
    Ray Data: units -> map(prompt_unit)             CPU tasks: read the unit's rows, check, prompt
                    -> map_batches(UnitScorer)      a pool of engine actors, one per GPU group
    driver: each finished unit is saved (work folder or memory); phase 2 (TTA) the same way

A unit (``units.Unit``) is one Ray Data row and one actor call, so each unit is scored exactly as
``predict --work-dir`` scores it in one process, whichever actor runs it and however often Ray
retries it. An actor that dies (a crash, a lost node) is restarted by Ray and its unit retried;
results are keyed by unit, so none is lost or counted twice. The model folder must be at the same
path on every node; prompts travel as packed int32 arrays, never as Python lists.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import WsdmError
from ..models.folder import ModelFolder
from ..settings import JudgeSettings
from . import faults
from .sources import Shard, check_across_shards, inspect_shard, list_shards, read_unit_frame
from .units import Task, Unit, UnitScores, prompt_task, score_prompted

log = logging.getLogger(__name__)

RAY_MISSING = "Ray is not installed: pip install 'wsdm[ray]'"
ACTOR_RESTARTS = 4
"""How often a dead scoring actor is restarted (and its unit retried) before the job fails: a
crash that repeats on every attempt is a bug to report, not to retry forever."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise WsdmError(f"{RAY_MISSING} ({exc})") from exc
    return ray


def init_ray(address: str | None, quiet: bool) -> None:
    """Connect to ``address`` (``auto``: the cluster this node belongs to), or start a local cluster
    on this machine only: loopback, no dashboard."""
    ray = import_ray()
    if not ray.is_initialized():
        _connect(ray, address, quiet)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one bar per phase comes from the driver
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _connect(ray, address: str | None, quiet: bool) -> None:
    kwargs = {"include_dashboard": False, "log_to_driver": not quiet, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            from ..engines.gpu_plan import detect_gpus

            # GPUs counted as the vllm engine counts them, so the cluster offers exactly those.
            ray.init(_node_ip_address="127.0.0.1", num_gpus=len(detect_gpus()), **kwargs)
    except Exception as exc:  # noqa: BLE001 - connection refused, version mismatch, ...
        where = address or "a local cluster"
        raise WsdmError(f"--ray-address {where}: cannot connect ({exc.__class__.__name__}: {exc})") from exc


# ------------------------------------------------------------------------------------ packing
def _pack(sequences) -> tuple[bytes, bytes]:
    from ..engines.pool import pack

    flat, offsets = pack(sequences)
    return flat.tobytes(), offsets.tobytes()


def _unpack(flat: bytes, offsets: bytes) -> list[list[int]]:
    from ..engines.pool import unpack

    return unpack(np.frombuffer(flat, dtype=np.int32), np.frombuffer(offsets, dtype=np.int64))


def _array(data: bytes, dtype, shape=(-1,)) -> np.ndarray:
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str, trust_remote_code: bool):
    """One tokenizer per worker process: Ray reuses workers, so later tasks skip the load."""
    from ..tokenizer import load_tokenizer

    return load_tokenizer(Path(model), trust_remote_code)


def prompt_unit(item: dict, *, settings: JudgeSettings) -> dict:
    """CPU task: read, check and prompt one unit's rows (``data`` and ``preprocess`` do the work)."""
    from ..data import arena_rows_from_frame
    from ..preprocess import PromptSet

    shard = Shard(item["uri"])
    frame = read_unit_frame(shard, int(item["start"]), int(item["stop"]))
    rows = arena_rows_from_frame(
        frame, f"{shard.name} (rows {item['start'] + 1}-{item['stop']})", settings.text_normalization
    )
    task = _task(item)
    tokenizer = _tokenizer(str(settings.model), settings.trust_remote_code)
    prompts: PromptSet = prompt_task(rows, task, tokenizer, settings.truncation)
    forward, offsets = _pack(prompts.token_ids)
    swapped, swapped_offsets = _pack(prompts.swapped_token_ids or [])
    return {
        **item,
        "ids": forward,
        "offsets": offsets,
        "swapped_ids": swapped,
        "swapped_offsets": swapped_offsets,
        "null_cells": rows.null_text_cells,
    }


def _task(item: dict) -> Task:
    unit = Unit(int(item["unit"]), 0, int(item["start"]), int(item["stop"]), 0)
    return Task(unit, bool(item["forward"]), _array(item["swapped"], np.int64))


class UnitScorer:
    """A Ray actor holding one engine (one GPU group; tensor parallel inside it), scoring unit after unit."""

    def __init__(self, settings: JudgeSettings, letters, longest: int) -> None:
        from ..engines.select import create_engine

        self.engine = create_engine(ModelFolder(settings.model), tuple(letters), longest, settings.engine)
        self.settings = settings
        self.batches = 0

    def __call__(self, batch: dict) -> dict:
        from ..preprocess import PromptSet

        self.batches += 1
        faults.at_actor_batch(self.batches)
        keys = ("unit", "forward", "n_tokens", "rows", "swapped", "swapped_tokens", "started", "finished")
        out: dict[str, list] = {k: [] for k in keys}
        for i in range(len(batch["unit"])):
            out["started"].append(time.time())
            item = {key: batch[key][i] for key in batch}
            forward = _unpack(item["ids"], item["offsets"])
            # An empty list packs to one offset (8 bytes): the task has no swapped prompts.
            has_swapped = len(item["swapped_offsets"]) > 8
            swapped = _unpack(item["swapped_ids"], item["swapped_offsets"]) if has_swapped else None
            texts = [""] * len(forward)
            prompts = PromptSet(texts, texts, forward, swapped)
            scores = score_prompted(_task(item), prompts, self.engine, self.settings)
            out["unit"].append(scores.unit)
            out["forward"].append(b"" if scores.forward is None else scores.forward.tobytes())
            out["n_tokens"].append(
                b"" if scores.n_tokens is None else scores.n_tokens.astype(np.int64).tobytes()
            )
            out["rows"].append(scores.swapped_rows.tobytes())
            out["swapped"].append(scores.swapped.astype(np.float64).tobytes())
            out["swapped_tokens"].append(scores.swapped_tokens.tobytes())
            out["finished"].append(time.time())
        numeric = {"unit": np.int64, "started": np.float64, "finished": np.float64}
        return {key: np.array(values, dtype=numeric.get(key, object)) for key, values in out.items()}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def _scores(row: dict) -> UnitScores:
    forward = None if not len(row["forward"]) else _array(row["forward"], np.float64, (-1, 2))
    return UnitScores(
        int(row["unit"]),
        forward,
        None if forward is None else _array(row["n_tokens"], np.int64),
        _array(row["rows"], np.int64),
        _array(row["swapped"], np.float64, (-1, 2)),
        _array(row["swapped_tokens"], np.int64),
    )


# ------------------------------------------------------------------------------------ layout
def cluster_layout(settings: JudgeSettings) -> tuple[JudgeSettings, int, dict]:
    """(the settings with the actors' engine decided, number of actors, Ray resources per actor).

    ``auto`` means vllm where the cluster has GPUs (the driver's own GPUs do not count). One actor
    per ``tensor_parallel`` GPUs over the whole cluster; on a CPU-only cluster, one hf actor per two
    CPUs (the rest prompt). Every other check of the options is the one :func:`resolve_engine` makes.
    """
    from ..engines.select import resolve_engine

    ray = import_ray()
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    engine = settings.engine
    if engine.gpus is not None:
        raise WsdmError("--gpus: on a Ray cluster each actor gets its GPUs from Ray; drop --gpus")
    if engine.engines is not None:
        raise WsdmError(
            "--engines: on a Ray cluster the engines are one actor per GPU group Ray has; drop --engines"
        )
    on_gpus = gpus and not engine.hf_only() and engine.device != "cpu"
    name = engine.name if engine.name != "auto" else ("vllm" if on_gpus else "hf")
    if name == "vllm":
        if engine.device == "cpu":
            raise WsdmError(
                "--device cpu: on a Ray cluster the vllm engine runs on GPUs; use --engine hf or drop --ray"
            )
        if not gpus:
            raise WsdmError("--engine vllm: the Ray cluster has no GPU")
        size = engine.tensor_parallel or 1
        if size > gpus:
            raise WsdmError(f"--tensor-parallel {size}: the Ray cluster has {gpus} GPU(s)")
        engine, actors, extra = (
            replace(engine, name="vllm", device="cuda", tensor_parallel=size),
            gpus // size,
            {"num_gpus": size, "num_cpus": 1},
        )
    elif gpus and engine.device != "cpu":
        engine, actors, extra = (
            replace(engine, name="hf", device="cuda"),
            gpus,
            {"num_gpus": 1, "num_cpus": 1},
        )
    else:
        engine, actors, extra = replace(engine, name="hf", device="cpu"), max(1, cpus // 2), {"num_cpus": 1}
    engine = resolve_engine(engine, ModelFolder(settings.model))
    return settings.with_engine(engine), actors, extra


def ray_executor(shards: list[Shard], settings: JudgeSettings, letters, longest: int):
    """An ``Executor`` (see ``units``) that runs each batch of tasks as one Ray Data pipeline;
    ``settings`` are the actors' (see :func:`cluster_layout`)."""
    ray = import_ray()
    settings, actors, resources = cluster_layout(settings)
    log.info("ray: %d %s actor(s), %s each", actors, settings.engine.name, resources)
    actor_settings = replace(settings, progress=False)

    def execute(tasks: list[Task]) -> Iterator[UnitScores]:
        items = [
            {
                "unit": task.unit.index,
                "uri": shards[task.unit.shard].uri,
                "start": task.unit.start,
                "stop": task.unit.stop,
                "forward": task.forward,
                "swapped": np.asarray(task.swapped, dtype=np.int64).tobytes(),
            }
            for task in tasks
        ]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        dataset = dataset.map(prompt_unit, fn_kwargs={"settings": actor_settings}, num_cpus=1)
        dataset = dataset.map_batches(
            UnitScorer,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(actors, len(items))),
            fn_constructor_kwargs={"settings": actor_settings, "letters": tuple(letters), "longest": longest},
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS,
            **resources,
            **faults.forwarded(),
        )
        try:
            for row in dataset.iter_rows():
                execute.spans.append((float(row["started"]), float(row["finished"])))
                yield _scores(row)
        except WsdmError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed task: its own message, one line
            raise WsdmError(f"ray job failed: {_cause(exc)}") from exc

    execute.settings = settings  # type: ignore[attr-defined]
    execute.spans = []  # type: ignore[attr-defined]  # (start, end) of each unit in its actor
    return execute


def _cause(exc: BaseException) -> str:
    """The innermost message of a Ray error chain (a WsdmError raised in a task, as its line)."""
    seen = exc
    while True:
        inner = getattr(seen, "cause", None) or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
    text = str(seen).strip().splitlines()
    return text[-1] if text else type(seen).__name__


def inspect_shards(shards: list[Shard]) -> list[dict]:
    """Check every shard in parallel CPU tasks; the first problem is the job's one-line error."""
    ray = import_ray()
    remote = ray.remote(num_cpus=1)(inspect_shard)
    reports = ray.get([remote.remote(shard) for shard in shards])
    for report in reports:
        if report["error"]:
            raise WsdmError(report["error"])
    check_across_shards(shards, [report["ids"] for report in reports])
    return reports


@dataclass
class RayJob:
    """A distributed job's shards, their ids (in order), its result, and the (start, end) time of
    every unit in its actor (a benchmark's scoring span). Unpacks as (shards, ids, result)."""

    shards: list[Shard]
    ids: list[list]
    result: object
    spans: list[tuple[float, float]]

    def __iter__(self):
        return iter((self.shards, self.ids, self.result))


def run_ray_job(
    source: str,
    settings: JudgeSettings,
    *,
    address: str | None,
    work_dir: Path | None,
    restart: bool,
    chunk_rows: int,
    started_at: float,
    quiet: bool = False,
):
    """Score every shard of ``source`` on the cluster.

    The driver needs the model folder for its checks and the tokenizer (as ``predict`` does); the
    rows are read by the tasks, never by the driver, except their ids.
    """
    from ..models.checks import preflight
    from ..preprocess import longest_admissible_prompt
    from ..prompt import letter_token_ids
    from .local import job_manifest
    from .units import job_result, plan_units, run_phases
    from .workdir import WorkDir

    import_ray()
    tokenizer = preflight(settings.model, settings.trust_remote_code)
    letters = letter_token_ids(tokenizer)
    shards = list_shards(source)
    init_ray(address, quiet)
    reports = inspect_shards(shards)
    execute = ray_executor(
        shards, settings, letters, longest_admissible_prompt(tokenizer, settings.truncation)
    )
    inputs = {
        "shards": [
            [shard.name, report["rows"], report["identity"]]
            for shard, report in zip(shards, reports, strict=True)
        ]
    }
    manifest = job_manifest("predict", inputs, execute.settings, chunk_rows)
    units = plan_units([report["rows"] for report in reports], chunk_rows)
    ids = [report["ids"] for report in reports]
    with WorkDir(work_dir, manifest, restart=restart, started_at=started_at) as store:
        scores = run_phases(units, store, execute, settings)
        result = job_result(
            [i for shard_ids in ids for i in shard_ids],
            scores,
            store.spent_seconds(),
            f"ray, {execute.settings.engine.name}",
        )
    return RayJob(shards, ids, result, list(execute.spans))
