"""Rewards for RL from the pairwise judge: one number per response of a group of responses to one
prompt (GRPO, RLOO, online DPO).

- :mod:`.batch`     groups -> their pairs -> one judging call -> rewards per group (every door)
- :mod:`.function`  :class:`JudgeReward`, the ``f(prompts, completions, **columns)`` reward function
                    of TRL's trainers, over an in-process judge or a `wsdm-serve serve`
- :mod:`.messages`  prompt and response texts from chat messages
- :mod:`.openrlhf`  prompt and response texts from an OpenRLHF remote-reward request

The pairing and Bradley-Terry are :mod:`wsdm_serve.compare`'s; the HTTP routes are in
:mod:`wsdm_serve.server`. Nothing here imports torch, the engines or TRL.
"""

from .batch import GroupBatch, rewards_json
from .function import JudgeReward

__all__ = ["GroupBatch", "JudgeReward", "rewards_json"]
