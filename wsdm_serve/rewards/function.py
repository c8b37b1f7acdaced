"""A reward function for RL trainers that call ``f(prompts, completions, **columns) -> list[float]``:
TRL's ``GRPOTrainer`` (and RLOO, online DPO), or a loop of one's own.

TRL hands over one flat list: the completions of one prompt arrive consecutively (``num_generations``
of them), prompts and completions are strings or lists of chat messages, and every other dataset
column arrives as a list of the same length. :class:`JudgeReward` cuts the list back into groups,
scores all of them in one call to the judge (in this process, or a `wsdm-serve serve` over HTTP)
and returns one reward per completion, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..compare import GROUP_METHODS, GroupMethod, GroupRewards
from .messages import completion_text, prompt_text


class GroupScorer(Protocol):
    """What scores groups: :class:`~wsdm_serve.judge.Judge` and :class:`~wsdm_serve.client.JudgeClient`."""

    def score_groups(self, groups: Sequence[dict], *, method: GroupMethod) -> list[GroupRewards]: ...


class JudgeReward:
    """Rewards from the pairwise judge, for ``GRPOTrainer(reward_funcs=[JudgeReward(...)])``.

    ``judge``: an in-process :class:`~wsdm_serve.judge.Judge` (its engine is started here, sized
    once for any prompt the truncation lets through: later calls bring ever new prompts), a
    :class:`~wsdm_serve.client.JudgeClient`, or the URL of a `wsdm-serve serve` (a client is made
    with ``client_options``: ``api_key``, ``timeout``, ``retries``, ``batch_size``...).

    ``method``: ``vs-reference`` (reward = P(completion beats the reference), the reference read
    from the dataset column ``reference_column``), ``round-robin`` (Bradley-Terry strength within
    the group, from all pairs) or ``circular`` (the same from N neighbour pairs); by default
    ``vs-reference`` when a reference column is named, else ``round-robin``.

    ``group_size``: the trainer's ``num_generations``. Given, the list is cut into runs of exactly
    that many completions, each of which must share one prompt (a mismatch is an error that says
    so); not given, a group is a run of consecutive completions with the same prompt (and
    reference). With several processes each must see whole groups for the group methods (see
    docs/rewards.md). ``name`` is how TRL logs it (``rewards/<name>/mean``).
    """

    def __init__(
        self,
        judge: GroupScorer | str,
        *,
        method: GroupMethod | None = None,
        reference_column: str | None = None,
        group_size: int | None = None,
        name: str = "wsdm_judge",
        **client_options: Any,
    ) -> None:
        self._owned = None
        if isinstance(judge, str):
            from ..client import JudgeClient

            judge = self._owned = JudgeClient(judge, **client_options)
        elif client_options:
            raise TypeError(f"{', '.join(client_options)}: client options are taken only with a URL")
        if not callable(getattr(judge, "score_groups", None)):
            raise TypeError(f"judge: expected a Judge, a JudgeClient or a URL, got {type(judge).__name__}")
        method = method or ("vs-reference" if reference_column is not None else "round-robin")
        if method not in GROUP_METHODS:
            raise ValueError(f"method={method!r}: must be one of {', '.join(GROUP_METHODS)}")
        if method == "vs-reference" and reference_column is None:
            raise ValueError(
                "method vs-reference needs reference_column: the dataset column with the reference"
            )
        if group_size is not None and (
            isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
        ):
            raise ValueError(
                f"group_size={group_size!r}: must be a positive integer (the trainer's num_generations)"
            )
        start = getattr(judge, "start", None)
        if callable(start):  # an in-process judge
            start()
        self.judge = judge
        self.method: GroupMethod = method
        self.reference_column = reference_column
        self.group_size = group_size
        self.__name__ = name

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        """One reward per completion, in order (TRL's reward-function protocol)."""
        groups, members = self.groups(prompts, completions, columns)
        results = self.judge.score_groups(groups, method=self.method)
        rewards = [0.0] * len(completions)
        for positions, result in zip(members, results, strict=True):
            for position, reward in zip(positions, result.rewards, strict=True):
                rewards[position] = float(reward)
        return rewards

    def groups(
        self, prompts: Sequence[Any], completions: Sequence[Any], columns: dict[str, Any]
    ) -> tuple[list[dict], list[list[int]]]:
        """The groups the flat lists hold, and for each the positions of its completions."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        references = self._references(columns, len(completions))
        runs = self._runs(prompts, references)
        groups = []
        for positions in runs:
            first = positions[0]
            group = {
                "prompt": prompt_text(prompts[first], f"prompts[{first}]"),
                "responses": [completion_text(completions[i], f"completions[{i}]") for i in positions],
            }
            if references is not None:
                group["reference"] = completion_text(references[first], f"{self.reference_column}[{first}]")
            groups.append(group)
        return groups, runs

    def _references(self, columns: dict[str, Any], count: int) -> list | None:
        if self.reference_column is None:
            return None
        if self.reference_column not in columns:
            named = sorted(key for key in columns if key not in ("trainer_state", "log_extra", "log_metric"))
            raise ValueError(
                f"reference_column {self.reference_column!r} is not a column of the dataset "
                f"(the columns passed: {', '.join(named) or 'none'})"
            )
        references = list(columns[self.reference_column])
        if len(references) != count:
            raise ValueError(f"{self.reference_column}: {len(references)} values for {count} completions")
        return references

    def _runs(self, prompts: Sequence[Any], references: list | None) -> list[list[int]]:
        def key(i: int):
            return (prompts[i], None if references is None else references[i])

        count = len(prompts)
        if self.group_size is None:
            runs: list[list[int]] = []
            for i in range(count):
                if runs and key(i) == key(runs[-1][0]):
                    runs[-1].append(i)
                else:
                    runs.append([i])
            return runs
        size = self.group_size
        if count % size:
            raise ValueError(f"{count} completions do not split into groups of group_size={size}")
        runs = [list(range(start, start + size)) for start in range(0, count, size)]
        for run in runs:
            for i in run[1:]:
                if key(i) != key(run[0]):
                    raise ValueError(
                        f"completions {run[0]} and {i} are in one group of {size} but have different prompts "
                        "or references: group_size must be the trainer's num_generations"
                    )
        return runs

    def close(self) -> None:
        """Close the HTTP client this reward made from a URL (a judge or client passed in stays open)."""
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> JudgeReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
