"""Group rewards in this process: the pairs each group is judged on, the judge's ``score_groups``
against ``predict`` on the same pairs in both orders, ``JudgeReward`` (TRL's reward-function
protocol) cutting flat lists back into groups, and the texts read from chat messages and from an
OpenRLHF request (the real Qwen2.5 chat template).

One judge for the module: the tiny model on the transformers engine.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.server_helpers import TRUNCATION
from wsdm_serve import Judge
from wsdm_serve.compare import group_pairs, group_rewards
from wsdm_serve.groups import GroupError
from wsdm_serve.rewards import GroupBatch, JudgeReward
from wsdm_serve.rewards.messages import completion_text, prompt_text
from wsdm_serve.rewards.openrlhf import response_of, strip_end_markers, user_prompt


def reward_groups(count: int, size: int, reference: bool = True) -> list[dict]:
    """``count`` groups of ``size`` distinct short responses (scores differ with the texts)."""
    groups = []
    for g in range(count):
        group = {
            "id": f"g{g}",
            "prompt": f"Question {g}: which number is larger, {g} or {g + 7}?",
            "responses": [
                f"{g + 7} is larger." + " Indeed." * k if k % 2 else f'["{g}", "larger"] ' * (k + 1)
                for k in range(size)
            ],
        }
        if reference:
            group["reference"] = f"The larger number is {g + 7}, since {g + 7} - {g} = 7 > 0."
        groups.append(group)
    return groups


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    with Judge.from_pretrained(
        tiny_model_dir, engine="hf", token_budget=TRUNCATION.token_budget, progress=False
    ) as judge:
        judge.start()
        yield judge


# ----------------------------------------------------------------------------- planning
def test_a_batch_lists_every_groups_pairs_in_order_and_names_their_texts():
    groups = reward_groups(3, 4)
    groups[1]["responses"] = groups[1]["responses"][:2]
    for method in ("vs-reference", "round-robin", "circular"):
        batch = GroupBatch.plan(groups, method)
        expected = []
        for group in groups:
            items = group["responses"] + ([group["reference"]] if method == "vs-reference" else [])
            for first, second in group_pairs(method, len(group["responses"])):
                expected.append((group["prompt"], items[first], items[second]))
        assert [(p["prompt"], p["response_a"], p["response_b"]) for p in batch.pairs] == expected
        assert batch.starts[-1] == len(batch.pairs) and len(batch) == 3
    batch = GroupBatch.plan(groups, "vs-reference")
    assert batch.source(4, 0) == (1, "groups[1].responses[0]")
    assert batch.source(5, 1) == (1, "groups[1].reference")
    batch = GroupBatch.plan(groups, "round-robin")
    assert batch.source(7, 1) == (2, "groups[2].responses[1]")  # 6 pairs, then 1, then (0, 1)
    tuples = GroupBatch.plan([(g["prompt"], g["responses"], g["reference"]) for g in groups], "vs-reference")
    assert tuples.pairs == GroupBatch.plan(groups, "vs-reference").pairs


@pytest.mark.parametrize(
    ("groups", "method", "message", "group", "field"),
    [
        ([{"prompt": "p", "responses": ["a"]}], "vs-reference", r"^groups\[0\]\.reference: missing; method vs-reference", 0, "reference"),
        ([{"prompt": "p", "responses": []}], "round-robin", r"^groups\[0\]\.responses: empty", 0, "responses"),
        ([{"prompt": "p", "responses": "ab"}], "round-robin", r"^groups\[0\]\.responses: must be a list of strings, got str", 0, "responses"),
        ([("p", ["a"]), {"prompt": "p", "responses": ["a", 3]}], "circular", r"^groups\[1\]\.responses\[1\]: must be a string, got int", 1, "responses"),
        ([{"prompt": None, "responses": ["a"]}], "circular", r"^groups\[0\]\.prompt: must be a string", 0, "prompt"),
        ([{"responses": ["a"]}], "circular", r"^groups\[0\]: missing prompt$", 0, "prompt"),
        ([("p",)], "circular", r"^groups\[0\]: a tuple must be \(prompt, responses\) or", 0, None),
        ([("p", ["a"], 5)], "circular", r"^groups\[0\]\.reference: must be a string or absent", 0, "reference"),
        ([7], "circular", r"^groups\[0\]: expected a mapping", 0, None),
        ([], "circular", r"^groups: no groups to score$", None, "groups"),
        ({"prompt": "p", "responses": ["a"]}, "circular", r"^groups: expected a list of groups, not a single dict", None, None),
        ([("p", ["a"])], "pairwise", r"^method='pairwise': must be one of vs-reference, round-robin, circular$", None, "method"),
    ],
)  # fmt: skip
def test_bad_groups_are_one_error_naming_the_group_and_field(groups, method, message, group, field):
    with pytest.raises(GroupError, match=message) as raised:
        GroupBatch.plan(groups, method)
    assert isinstance(raised.value, ValueError)
    assert (raised.value.group, raised.value.field) == (group, field)


# ----------------------------------------------------------------------------- the judge
def test_vs_reference_rewards_are_predicts_p_a_in_both_orders(judge):
    groups = reward_groups(3, 4)
    scored = judge.score_groups(groups, method="vs-reference")
    pairs = [(g["prompt"], r, g["reference"]) for g in groups for r in g["responses"]]
    expected = judge.predict(pairs, tta="all")
    assert np.isnan(expected.p_a_swapped).sum() == 0  # every pair was judged in both orders
    rewards = np.concatenate([s.rewards for s in scored])
    np.testing.assert_allclose(rewards, expected.probs[:, 0], atol=1e-6, rtol=0)
    assert len(set(np.round(rewards, 9))) == len(rewards)  # the texts give different scores
    for group, result in zip(groups, scored, strict=True):
        n = len(group["responses"])
        assert result.method == "vs-reference" and result.strengths is None
        assert result.matrix.shape == (n + 1, n + 1)
        np.testing.assert_allclose(result.matrix[:n, n], result.rewards)
        np.testing.assert_allclose(result.matrix[n, :n], 1 - result.rewards)
        assert np.isnan(result.matrix[:n, :n]).all()


@pytest.mark.parametrize("method", ["round-robin", "circular"])
def test_group_methods_fit_bradley_terry_to_the_judged_pairs(judge, method):
    groups = reward_groups(2, 5, reference=False)
    scored = judge.score_groups(groups, method=method)
    for group, result in zip(groups, scored, strict=True):
        schedule = group_pairs(method, 5)
        pairs = [(group["prompt"], group["responses"][a], group["responses"][b]) for a, b in schedule]
        p_first = judge.predict(pairs, tta="all").probs[:, 0]
        expected = group_rewards(method, 5, p_first)
        np.testing.assert_allclose(result.rewards, expected.rewards, atol=1e-5, rtol=0)
        np.testing.assert_allclose(result.rewards, result.strengths)
        assert abs(result.rewards.mean()) < 1e-9
        judged = ~np.isnan(result.matrix)
        assert judged.sum() == 2 * len(schedule)
        np.testing.assert_allclose(result.matrix[judged] + result.matrix.T[judged], 1.0)
        np.testing.assert_allclose(result.mean_win, np.nanmean(result.matrix, axis=1))


def test_a_group_of_one_response_needs_no_judging(judge):
    (result,) = judge.score_groups([("p", ["only"])], method="round-robin")
    assert result.rewards.tolist() == [0.0] and result.mean_win.tolist() == [0.5]


# ----------------------------------------------------------------------------- JudgeReward
def test_judge_reward_regroups_trls_flat_lists_and_reads_the_reference_column(judge):
    groups = reward_groups(2, 3)
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": g["prompt"]}] for g in groups for _ in g["responses"]]  # fmt: skip
    completions = [[{"role": "assistant", "content": r}] for g in groups for r in g["responses"]]
    references = [g["reference"] for g in groups for _ in g["responses"]]
    expected = np.concatenate([s.rewards for s in judge.score_groups(groups, method="vs-reference")])
    reward = JudgeReward(judge, reference_column="answer", group_size=3)
    assert reward.method == "vs-reference" and reward.__name__ == "wsdm_judge"
    got = reward(prompts=prompts, completions=completions, answer=references, completion_ids=[[1]] * 6)
    assert isinstance(got[0], float)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)

    plain = JudgeReward(judge, name="pairwise")  # plain strings; groups are runs of one prompt
    flat_prompts = [g["prompt"] for g in groups for _ in g["responses"]]
    flat_completions = [r for g in groups for r in g["responses"]]
    by_group = judge.score_groups([(g["prompt"], g["responses"]) for g in groups], method="round-robin")
    np.testing.assert_allclose(
        plain(flat_prompts, flat_completions), np.concatenate([s.rewards for s in by_group]), atol=1e-5
    )


def test_judge_reward_refuses_what_it_cannot_group(judge):
    with pytest.raises(
        ValueError, match="reference_column 'answer' is not a column of the dataset .*: other"
    ):
        JudgeReward(judge, reference_column="answer")(
            ["p", "p"], ["a", "b"], other=[1, 2], trainer_state=None
        )
    with pytest.raises(
        ValueError, match=r"completions 0 and 2 are in one group of 3 but have different prompts"
    ):
        JudgeReward(judge, group_size=3)(["p", "p", "q"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="3 completions do not split into groups of group_size=2"):
        JudgeReward(judge, group_size=2)(["p"] * 3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 prompts for 3 completions"):
        JudgeReward(judge)(["p"] * 2, ["a", "b", "c"])
    with pytest.raises(ValueError, match="method vs-reference needs reference_column"):
        JudgeReward(judge, method="vs-reference")
    with pytest.raises(ValueError, match="method='best-of': must be one of"):
        JudgeReward(judge, method="best-of")
    with pytest.raises(TypeError, match="judge: expected a Judge, a JudgeClient or a URL, got int"):
        JudgeReward(3)
    with pytest.raises(TypeError, match="timeout: client options are taken only with a URL"):
        JudgeReward(judge, timeout=3)
    with pytest.raises(ValueError, match=r"completions\[1\]\[0\]: a message must be a mapping"):
        JudgeReward(judge)(["p", "p"], ["a", ["not a message"]])


# ----------------------------------------------------------------------------- texts
def test_chat_messages_become_the_prompt_and_the_response():
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": [{"type": "text", "text": "Second"}, {"type": "image"}, {"type": "text", "text": "question?"}]},
    ]  # fmt: skip
    assert prompt_text(conversation) == "First question?\nSecond\nquestion?"
    assert prompt_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "Yes."}]) == "Yes."
    assert completion_text({"role": "assistant", "content": "One message."}) == "One message."
    assert completion_text([{"role": "tool", "content": "42"}]) == "42"  # no assistant message: all of them
    with pytest.raises(ValueError, match=r"^completion: expected a string or a list of messages, got int"):
        completion_text(7)


def test_openrlhf_queries_give_the_user_prompt_and_the_response(tokenizer):
    """The prompt as OpenRLHF renders it (``--data.apply_chat_template``, the real Qwen2.5 template)
    and the query as it decodes it (prompt + response + end-of-turn token)."""
    chat = [{"role": "user", "content": "What is 2+2?\nAnswer briefly."}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert "You are Qwen" in prompt  # the template adds its default system prompt
    response_ids = tokenizer("It is 4.\n", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    query = tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)
    assert query.endswith("<|im_end|>")
    assert response_of(query, prompt) == "It is 4.\n"
    assert user_prompt(prompt) == "What is 2+2?\nAnswer briefly."
    two_turns = chat + [{"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    rendered = tokenizer.apply_chat_template(two_turns, tokenize=False, add_generation_prompt=True)
    assert user_prompt(rendered) == "What is 2+2?\nAnswer briefly.\nAnd 3+3?"

    llama3 = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert user_prompt(llama3) == "Hi there"
    assert user_prompt("<bos><start_of_turn>user\nHola<end_of_turn>\n<start_of_turn>model\n") == "Hola"
    assert (
        user_prompt("<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]") == "Q1\nQ2"
    )
    assert user_prompt("<|user|>\nHey<|end|>\n<|assistant|>\n") == "Hey"
    assert user_prompt("Question: 2+2?\nAnswer:") == "Question: 2+2?\nAnswer:"  # no template: all of it
    assert (
        strip_end_markers("Done.<|eot_id|>\n</s>") == "Done."
        and strip_end_markers("no marker  ") == "no marker  "
    )
    assert response_of("another prompt", prompt) is None
