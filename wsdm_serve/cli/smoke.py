"""`check-model --smoke`: one fixed row scored through the judge on the chosen engine.

Apart from the file checks because it loads the model (seconds to minutes) and runs the judge,
which itself calls those checks before it scores.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..errors import WsdmError
from ..judge import run_predict
from ..models.report import ModelReport
from ..settings import JudgeSettings

SMOKE_ROW = (
    "What is the boiling point of water at sea level in degrees Celsius?",
    "Water boils at 100 degrees Celsius at sea level.",
    "Water boils at 50 degrees Celsius at sea level.",
)


def smoke_test(report: ModelReport, settings: JudgeSettings) -> None:
    """Score one fixed row, both orders, on the chosen engine: the model loads and gives probabilities.

    Load failures become a problem line rather than an exception, so the report still prints.
    """
    settings = replace(settings, model=report.path, tta="all", progress=False)
    started = time.time()
    try:
        result = run_predict([SMOKE_ROW], settings, started)
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
        f"{result.engine}, {time.time() - started:.1f} s: P(A) = {forward[0]:.4f} forward, "
        f"{swapped[0]:.4f} with the responses swapped",
    )
