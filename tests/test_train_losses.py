"""The losses against values computed by hand (plain math, not the torch code under test)."""

from __future__ import annotations

import math

import pytest
import torch

from wsdm_serve.errors import WsdmError
from wsdm_train.training.modeling import distill_loss, pretrain_loss, two_way_ce


def softmax(row, t=1.0):
    exps = [math.exp(v / t) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))


def one_minus_cos(p, q):
    dot = sum(a * b for a, b in zip(p, q, strict=True))
    return 1 - dot / (math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(b * b for b in q)))


STUDENT = [[2.0, 0.0], [0.0, 1.0], [-1.0, 0.5]]
LABELS = [0, 1, 0]
TEACHERS = [
    [[1.0, 0.0], [0.0, 0.0], [0.3, -0.2]],
    [[0.0, 2.0], [3.0, 0.0], [-1.0, 1.0]],
    [[0.5, 0.5], [-2.0, 2.0], [4.0, 0.0]],
]


def hand_ce(student, labels):
    return sum(-math.log(softmax(z)[y]) for z, y in zip(student, labels, strict=True)) / len(labels)


def hand_reference(student, teachers, labels, t):
    n = len(labels)
    total = hand_ce(student, labels)
    for teacher in teachers:
        total += sum(kl(softmax(g, t), softmax(z, t)) for g, z in zip(teacher, student, strict=True)) / n
        total += (
            sum(one_minus_cos(softmax(g, t), softmax(z, t)) for g, z in zip(teacher, student, strict=True))
            / n
        )
    return total / (1 + 2 * len(teachers))


def test_two_way_ce_matches_hand_value():
    value = two_way_ce(torch.tensor(STUDENT), torch.tensor(LABELS))
    assert value.item() == pytest.approx(hand_ce(STUDENT, LABELS), rel=1e-6)
    # Row 1 alone: -log(e^2 / (e^2 + 1)) = log(1 + e^-2).
    single = two_way_ce(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    assert single.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_pretrain_loss_is_full_vocabulary_ce_on_the_letter():
    vocab = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5], [3.0, 0.0, 0.0, 1.0, 1.0]])
    targets = torch.tensor([3, 0])  # e.g. the ids of "A" and "B" in a 5-token vocabulary
    expected = 0.0
    for row, target in zip(vocab.tolist(), targets.tolist(), strict=True):
        expected += math.log(sum(math.exp(v) for v in row)) - row[target]
    assert pretrain_loss(vocab, targets).item() == pytest.approx(expected / 2, rel=1e-6)


def test_reference_distillation_with_three_teachers():
    parts = distill_loss(torch.tensor(STUDENT), [torch.tensor(t) for t in TEACHERS], torch.tensor(LABELS))
    assert parts.total.item() == pytest.approx(hand_reference(STUDENT, TEACHERS, LABELS, 1.0), rel=1e-5)
    assert parts.ce.item() == pytest.approx(hand_ce(STUDENT, LABELS), rel=1e-6)


def test_reference_distillation_uniform_case_is_ln2_over_seven():
    # Student and teachers all indifferent: KL = 0, cosine = 1, so the loss is CE / 7 = ln 2 / 7.
    zeros = torch.zeros(1, 2)
    parts = distill_loss(zeros, [zeros, zeros, zeros], torch.tensor([0]))
    assert parts.total.item() == pytest.approx(math.log(2) / 7, rel=1e-6)


def test_temperature_applies_to_soft_terms_only():
    t = 2.0
    stacked = torch.tensor(TEACHERS).permute(1, 0, 2)  # [n, J, 2] form
    parts = distill_loss(torch.tensor(STUDENT), stacked, torch.tensor(LABELS), temperature=t)
    assert parts.total.item() == pytest.approx(hand_reference(STUDENT, TEACHERS, LABELS, t), rel=1e-5)


def test_mean_target_variant_uses_one_averaged_distribution():
    n = len(LABELS)
    targets = []
    for i in range(n):
        probs = [softmax(teacher[i]) for teacher in TEACHERS]
        targets.append([sum(p[c] for p in probs) / len(probs) for c in range(2)])
    expected = (
        hand_ce(STUDENT, LABELS)
        + sum(kl(p, softmax(z)) for p, z in zip(targets, STUDENT, strict=True)) / n
        + sum(one_minus_cos(p, softmax(z)) for p, z in zip(targets, STUDENT, strict=True)) / n
    ) / 3
    parts = distill_loss(
        torch.tensor(STUDENT), [torch.tensor(t) for t in TEACHERS], torch.tensor(LABELS), mode="mean_target"
    )
    assert parts.total.item() == pytest.approx(expected, rel=1e-5)


def test_gradient_reaches_the_student_only():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHERS[0], requires_grad=True)
    distill_loss(student, [teacher], torch.tensor(LABELS)).total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    # Teacher logits are targets; they get a gradient only if a caller forgot to detach, which
    # the stages never do (they come from a Parquet file), so only check the student side.


def test_bad_mode_and_temperature_are_user_errors():
    z = torch.zeros(1, 2)
    with pytest.raises(WsdmError, match="mode"):
        distill_loss(z, [z], torch.tensor([0]), mode="average")
    with pytest.raises(WsdmError, match="temperature"):
        distill_loss(z, [z], torch.tensor([0]), temperature=0)
