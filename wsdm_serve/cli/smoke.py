"""`check-model --smoke`: one fixed row scored through predict's own path on the chosen engine.

Apart from the file checks because it loads the model (seconds to minutes) and runs the pipeline,
which itself calls those checks before it scores.
"""

from __future__ import annotations

import time

import numpy as np

from ..data import ArenaRows
from ..errors import WsdmError
from ..models.report import ModelReport
from ..predict import PredictConfig, run_predict

SMOKE_ROW = (
    "What is the boiling point of water at sea level in degrees Celsius?",
    "Water boils at 100 degrees Celsius at sea level.",
    "Water boils at 50 degrees Celsius at sea level.",
)


def smoke_test(report: ModelReport, engine, trust_remote_code: bool = False) -> None:
    """Score one fixed row, both orders, on the chosen engine: the model loads and gives probabilities.

    ``engine`` is an :class:`~wsdm_serve.engines.select.EngineOptions`. Load failures become a
    problem line rather than an exception, so the report still prints.
    """
    rows = ArenaRows(
        ids=["smoke"],
        prompts=[SMOKE_ROW[0]],
        responses_a=[SMOKE_ROW[1]],
        responses_b=[SMOKE_ROW[2]],
        null_text_cells=0,
    )
    config = PredictConfig(
        model=report.path, tta="all", engine=engine, trust_remote_code=trust_remote_code, progress=False
    )
    started = time.time()
    try:
        result = run_predict(rows, config, started)
    except WsdmError as exc:
        report.problem(f"smoke test: {exc}")
        return
    forward = result.forward[0]
    swapped = result.swapped[0] if len(result.swapped) else np.array([np.nan, np.nan])
    if not (np.isfinite(forward).all() and np.isfinite(swapped).all()):
        report.problem(
            f"smoke test on the {result.engine} engine gave non-finite probabilities {forward}, {swapped}"
        )
        return
    report.fact(
        "smoke test",
        f"{result.engine} engine, {time.time() - started:.1f} s: P(A) = {forward[0]:.4f} forward, "
        f"{swapped[0]:.4f} with the responses swapped",
    )
