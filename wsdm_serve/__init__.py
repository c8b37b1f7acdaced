"""wsdm: a pairwise LLM judge that predicts which of two chatbot responses a user prefers.

``from wsdm_serve import Judge`` gives the in-process judge (``Judge.from_pretrained``); it is
imported on first use, so the command line's ``--help`` does not pay for pandas and the engines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Judge", "JudgeSettings", "__version__"]

if TYPE_CHECKING:
    from .judge import Judge
    from .settings import JudgeSettings


def __getattr__(name: str) -> Any:
    if name == "Judge":
        from .judge import Judge

        return Judge
    if name == "JudgeSettings":
        from .settings import JudgeSettings

        return JudgeSettings
    raise AttributeError(f"module 'wsdm_serve' has no attribute {name!r}")
