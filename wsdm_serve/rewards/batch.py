"""The one path from groups of responses to rewards, shared by every door (the judge's
``score_groups``, ``POST /v1/rewards``, ``POST /get_reward``, :class:`~wsdm_serve.rewards.JudgeReward`):

    groups -> each group's pairs (compare.group_pairs) -> every pair of every group as one list of
    pairs, judged together in both orders -> each group's rewards (compare.group_rewards)

The judging itself is the caller's (an in-process judge, or the server's engine); this module only
plans the pairs and turns their probabilities back into rewards, so both do it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..compare import GROUP_METHODS, GroupMethod, GroupRewards, group_pairs, group_rewards, single_threaded
from ..groups import Group, GroupError, group_records


@dataclass(frozen=True)
class GroupBatch:
    """The groups of one call and the pairs they are judged on, group after group.

    ``pairs[k]`` is a pair record (``prompt``, ``response_a``, ``response_b``) whose ``response_a``
    is item ``schedules[g][k - starts[g], 0]`` of group ``g`` and ``response_b`` item ``[..., 1]``;
    items are the responses in order and, for ``vs-reference``, the reference last.
    """

    method: GroupMethod
    groups: list[dict]
    schedules: list[np.ndarray]
    starts: np.ndarray
    pairs: list[dict]

    @classmethod
    def plan(cls, groups: Iterable[Group], method: GroupMethod) -> GroupBatch:
        """Check the groups (:mod:`wsdm_serve.groups`) and list the pairs of each; a group that the
        method cannot score (``vs-reference`` without a reference) raises :class:`GroupError`."""
        if method not in GROUP_METHODS:
            raise GroupError(f"method={method!r}: must be one of {', '.join(GROUP_METHODS)}", field="method")
        records = group_records(groups)
        if not records:
            raise GroupError("groups: no groups to score", field="groups")
        schedules, pairs, starts = [], [], [0]
        for index, record in enumerate(records):
            items = list(record["responses"])
            if method == "vs-reference":
                if record["reference"] is None:
                    raise GroupError(
                        f"groups[{index}].reference: missing; method vs-reference compares each response "
                        "with the group's reference response",
                        index,
                        "reference",
                    )
                items.append(record["reference"])
            schedule = group_pairs(method, len(record["responses"]))
            schedules.append(schedule)
            pairs += [
                {"prompt": record["prompt"], "response_a": items[first], "response_b": items[second]}
                for first, second in schedule
            ]
            starts.append(len(pairs))
        return cls(method, records, schedules, np.asarray(starts, dtype=np.int64), pairs)

    def __len__(self) -> int:
        return len(self.groups)

    def group_of(self, pair: int) -> int:
        """The index of the group that ``pairs[pair]`` belongs to."""
        return int(np.searchsorted(self.starts, pair, side="right") - 1)

    def source(self, pair: int, slot: int) -> tuple[int, str]:
        """(group index, where its text came from) of slot ``slot`` (0: response_a, 1: response_b)
        of ``pairs[pair]``, such as ``(3, "groups[3].responses[5]")``: error messages name it."""
        group = self.group_of(pair)
        item = int(self.schedules[group][pair - self.starts[group], slot])
        if item == len(self.groups[group]["responses"]):
            return group, f"groups[{group}].reference"
        return group, f"groups[{group}].responses[{item}]"

    def rewards(self, p_first: np.ndarray) -> list[GroupRewards]:
        """Each group's rewards from ``p_first[k]`` = P(``pairs[k]``'s response_a beats its
        response_b), both orders averaged (what ``/v1/judge`` returns as ``p_a`` with swap all)."""
        p_first = np.asarray(p_first, dtype=np.float64).reshape(-1)
        if len(p_first) != len(self.pairs):
            raise ValueError(f"{len(p_first)} probabilities for {len(self.pairs)} pairs")
        with single_threaded():  # many tiny fits: BLAS threads cost more than they give
            return [
                group_rewards(
                    self.method,
                    len(record["responses"]),
                    p_first[self.starts[index] : self.starts[index + 1]],
                    self.schedules[index],
                )
                for index, record in enumerate(self.groups)
            ]


def rewards_json(record: dict, rewards: GroupRewards) -> dict:
    """One group's rewards as the JSON API returns them (NaN, where a pair was not judged, as null)."""

    def floats(values: np.ndarray) -> list:
        return [None if np.isnan(value) else float(value) for value in values]

    return {
        "id": record.get("id"),
        "rewards": floats(rewards.rewards),
        "mean_win": floats(rewards.mean_win),
        "strengths": None if rewards.strengths is None else floats(rewards.strengths),
        "matrix": [floats(row) for row in rewards.matrix],
    }
