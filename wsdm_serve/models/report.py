"""The report of a model-folder check: facts to print and problems, one line each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WsdmError


@dataclass
class ModelReport:
    """What was checked: facts to print, problems (one line each) that make the folder unusable."""

    path: Path
    facts: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fact(self, key: str, value: object) -> None:
        self.facts.append((key, str(value)))

    def problem(self, message: str) -> None:
        self.problems.append(" ".join(str(message).split()))

    def summary_error(self) -> WsdmError:
        """One line for a caller that must stop: the first problem and how many more there are."""
        first = self.problems[0]
        more = len(self.problems) - 1
        hint = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        return WsdmError(f"{first}{hint}; run `wsdm-serve check-model {self.path}` for the full report")

    def format(self) -> str:
        width = max((len(key) for key, _ in self.facts), default=0)
        lines = [f"model: {self.path}"]
        lines += [f"  {key.ljust(width)}  {value}" for key, value in self.facts]
        if self.problems:
            lines.append(f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}:")
            lines += [f"  - {problem}" for problem in self.problems]
        else:
            lines.append("ok: no problems found")
        return "\n".join(lines)
