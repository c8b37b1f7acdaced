"""`wsdm-train all`: every stage in order, with a record that skips, resumes or redoes each one.

:mod:`.plan` decides what a run has to do and checks it can (before anything runs), :mod:`.stages`
says for each stage what its hash covers, where its outputs are and how it runs, and :mod:`.run`
walks the stages with the manifest ``pipeline.json``.
"""

from .plan import STAGES, PipelineOptions, Plan, make_plan, preflight
from .run import PipelineResult, StageReport, run_pipeline

__all__ = [
    "STAGES",
    "PipelineOptions",
    "PipelineResult",
    "Plan",
    "StageReport",
    "make_plan",
    "preflight",
    "run_pipeline",
]
