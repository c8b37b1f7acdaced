"""What `wsdm-serve rank`'s statistics are worth, measured on data drawn from known strengths (CPU).

(a) Recovery and interval coverage. Eight models with known Bradley-Terry strengths answer 200
    questions; every pair (``--pairs all``) or every model against the baseline (``--pairs
    baseline``) is judged once per question, the outcome drawn from the model: hard (a win with
    probability sigmoid(s_a - s_b)) or soft (a probability drawn from a Beta distribution with that
    mean, like a judge's P(A)). ``compare.leaderboard`` fits the scores and their 95% bootstrap
    intervals over questions. One run is shown in full (true order recovered? every true score
    inside its interval?); then the point estimate alone over 400 draws (its sd against the Fisher
    information's, its bias); then, over ``--repeats`` fresh draws per design, the share of (model,
    draw) whose interval holds the true score: the coverage, nominally 95%, beside an oracle's that
    knows the exact sd (the score +-1.96 sd) on the same draws.

(b) ``--pairs budget`` against all pairs. 10 and 30 models whose true Elo scores are drawn with a
    standard deviation of 150 points (about Arena-Hard-Auto v0.1's spread) and of 75 (a crowded
    board), 200 questions, a question effect per model and question (some questions suit some
    models: normal, sd 1 in log-odds), soft outcomes. The ranking all pairs on all questions give is
    the reference; for
    budgets of 1% to 33% of those judgements, the adaptive schedule (``compare.budget``) and uniform
    random judgements are each fitted and compared with it by Kendall's tau. Reported: the smallest
    budget at which at least 90% of ``--budget-repeats`` worlds reach tau >= 0.9 (target: at most
    one third of all pairs).

    PYTHONPATH=$PWD python tools/rank_check.py --json rank_check.json   # ~24 minutes on 2 busy cores
    PYTHONPATH=$PWD python tools/rank_check.py --quick                  # fewer draws, ~3 minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsdm_serve.compare import (  # noqa: E402
    BradleyTerryFit,
    BudgetPlanner,
    Comparisons,
    all_pairs,
    baseline_pairs,
    elo_scores,
    leaderboard,
    on_every_question,
    single_threaded,
)

LOG_ODDS_PER_ELO = np.log(10.0) / 400.0
BUDGET_SHARES = (0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.10, 0.125, 0.15, 0.20, 0.25, 1 / 3)
TAU_TARGET, SHARE_TARGET, WORLDS_REACHING = 0.9, 1 / 3, 0.9


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def draw_outcomes(
    p: np.ndarray, kind: str, rng: np.random.Generator, concentration: float = 2.0
) -> np.ndarray:
    """Hard: 1 with probability p. Soft: a Beta draw with mean p (a judge's probability)."""
    if kind == "hard":
        return (rng.random(p.shape) < p).astype(np.float64)
    return rng.beta(concentration * p, concentration * (1.0 - p))


# ------------------------------------------------------------------------------ (a) coverage
TRUE_ELO = np.array([1000.0, 1130.0, 1060.0, 1010.0, 960.0, 900.0, 1210.0, 820.0])


def coverage_world(design: str, kind: str, n_questions: int, rng: np.random.Generator) -> Comparisons:
    strengths = (TRUE_ELO - 1000.0) * LOG_ODDS_PER_ELO
    pairs = all_pairs(len(strengths)) if design == "all" else baseline_pairs(len(strengths), 0)
    q, a, b = on_every_question(pairs, n_questions).T
    outcome = draw_outcomes(sigmoid(strengths[a] - strengths[b]), kind, rng)
    return Comparisons(tuple(f"model-{i}" for i in range(len(strengths))), a, b, outcome, q)


def asymptotic_sd(design: str, kind: str, n_questions: int, concentration: float = 2.0) -> np.ndarray:
    """The large-sample sd of each score (Elo) from the Fisher information: an oracle's interval is
    +-1.96 of it. Soft Beta outcomes have variance p(1-p)/(1+concentration) around the same mean, so
    their sandwich covariance is the hard one divided by 1 + concentration."""
    strengths = (TRUE_ELO - 1000.0) * LOG_ODDS_PER_ELO
    k = len(strengths)
    pairs = all_pairs(k) if design == "all" else baseline_pairs(k, 0)
    information = np.zeros((k, k))
    for a, b in pairs:
        w = n_questions * sigmoid(strengths[a] - strengths[b]) * sigmoid(strengths[b] - strengths[a])
        information[a, a] += w
        information[b, b] += w
        information[a, b] -= w
        information[b, a] -= w
    covariance = np.linalg.inv(information[1:, 1:]) / (1.0 if kind == "hard" else 1.0 + concentration)
    return np.concatenate([[0.0], np.sqrt(np.diag(covariance))]) * 400.0 / np.log(10.0)


def coverage(design: str, kind: str, repeats: int, resamples: int, n_questions: int, seed: int) -> dict:
    """Coverage of the bootstrap intervals, beside an oracle's on the same draws (the score +-1.96
    true sd): how far the draws themselves fall from 95% shows in the oracle's number."""
    truth = elo_scores((TRUE_ELO - 1000.0) * LOG_ODDS_PER_ELO, anchor=0)
    sd = asymptotic_sd(design, kind, n_questions)
    inside, oracle, widths, orders = [], [], [], 0
    for r in range(repeats):
        rng = np.random.default_rng(seed + r)
        board = leaderboard(
            coverage_world(design, kind, n_questions, rng), baseline="model-0", resamples=resamples, seed=r
        )
        held = (board.ci_low <= truth) & (truth <= board.ci_high)
        inside.append(held[1:])  # the baseline is 1000 by definition
        oracle.append((np.abs(board.score - truth) <= 1.96 * sd)[1:])
        widths.append((board.ci_high - board.ci_low)[1:])
        orders += int(list(np.argsort(-board.score)) == list(np.argsort(-truth)))
    return {
        "design": design,
        "outcomes": kind,
        "repeats": repeats,
        "coverage": float(np.mean(inside)),
        "mean_ci_width": float(np.mean(widths)),
        "oracle_coverage": float(np.mean(oracle)),
        "oracle_mean_width": float(np.mean(2 * 1.96 * sd[1:])),
        "order_recovered": orders / repeats,
    }


def estimator_check(n_questions: int, draws: int = 400, seed: int = 1000) -> dict:
    """The point estimate alone over many draws (all pairs, hard outcomes): its sd against the Fisher
    information's, its bias, and the oracle interval's coverage. Cheap: no bootstrap."""
    truth = elo_scores((TRUE_ELO - 1000.0) * LOG_ODDS_PER_ELO, anchor=0)
    sd = asymptotic_sd("all", "hard", n_questions)
    scores = np.array(
        [
            elo_scores(
                BradleyTerryFit(
                    coverage_world("all", "hard", n_questions, np.random.default_rng(seed + r)), 0
                )
                .fit()
                .values,
                anchor=0,
            )
            for r in range(draws)
        ]
    )
    result = {
        "draws": draws,
        "sd": scores.std(axis=0)[1:].round(2).tolist(),
        "fisher_sd": sd[1:].round(2).tolist(),
        "largest_bias": float(np.abs(scores.mean(axis=0) - truth).max()),
        "oracle_coverage": float((np.abs(scores - truth) <= 1.96 * sd)[:, 1:].mean()),
    }
    print(
        f"(a) the estimate over {draws} draws (all pairs, hard): sd {min(result['sd']):.1f} to {max(result['sd']):.1f} "
        f"Elo against the Fisher information's {min(result['fisher_sd']):.1f} to {max(result['fisher_sd']):.1f}; "
        f"largest bias {result['largest_bias']:.2f} Elo; oracle coverage {result['oracle_coverage']:.1%}"
    )
    return result


def show_one_run(n_questions: int, resamples: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    world = coverage_world("all", "soft", n_questions, rng)
    board = leaderboard(world, baseline="model-0", resamples=resamples, seed=seed)
    truth = elo_scores((TRUE_ELO - 1000.0) * LOG_ODDS_PER_ELO, anchor=0)
    print(f"(a) one run: 8 models, {n_questions} questions, all pairs, soft outcomes, {resamples} resamples")
    print("    model     true    score   95% interval        inside")
    for i in board.order():
        held = board.ci_low[i] <= truth[i] <= board.ci_high[i]
        print(
            f"    {board.models[i]:<8} {truth[i]:7.1f} {board.score[i]:8.1f}   "
            f"{board.ci_low[i]:7.1f} .. {board.ci_high[i]:7.1f}   {'yes' if held else 'NO'}"
        )
    recovered = list(board.order()) == list(np.argsort(-truth))
    print(f"    true order recovered: {'yes' if recovered else 'no'}")
    return {
        "order_recovered": recovered,
        "all_inside": bool(np.all((board.ci_low <= truth) & (truth <= board.ci_high))),
        "models": {
            board.models[i]: {"true": float(truth[i]), "score": float(board.score[i]),
                              "ci": [float(board.ci_low[i]), float(board.ci_high[i])]}
            for i in range(len(truth))
        },
    }  # fmt: skip


# ------------------------------------------------------------------------------ (b) budget
def budget_world(n_models: int, n_questions: int, spread: float, rng: np.random.Generator):
    """Soft outcomes of every pair on every question: (pairs, outcome[question, pair])."""
    strengths = rng.normal(0.0, spread, n_models) * LOG_ODDS_PER_ELO
    pairs = all_pairs(n_models)
    effect = rng.normal(0.0, 1.0, (n_models, n_questions))  # how well a model does on a question
    logits = strengths[pairs[:, 0]] - strengths[pairs[:, 1]] + (effect[pairs[:, 0]] - effect[pairs[:, 1]]).T
    return pairs, draw_outcomes(sigmoid(logits), "soft", rng)


def ranking_of(n_models: int, rows: np.ndarray, outcome: np.ndarray, pair_index: np.ndarray) -> np.ndarray:
    q, a, b = rows.T
    names = tuple(map(str, range(n_models)))
    comparisons = Comparisons(names, a, b, outcome[q, pair_index[a, b]], q)
    return BradleyTerryFit(comparisons).fit().values


def budget_run(n_models, n_questions, share, pairs, outcome, pair_index, seed) -> np.ndarray:
    planner = BudgetPlanner(n_models, n_questions, max(1, round(share * len(pairs) * n_questions)), seed=seed)
    rows = np.zeros((0, 3), dtype=np.int64)
    judged = None
    while len(batch := planner.next_round(judged)):
        rows = np.vstack([rows, batch])
        q, a, b = rows.T
        judged = Comparisons(tuple(map(str, range(n_models))), a, b, outcome[q, pair_index[a, b]], q)
    return rows


def budget_check(n_models: int, n_questions: int, spread: float, repeats: int, seed: int) -> dict:
    from scipy.stats import kendalltau

    taus = {"budget": {s: [] for s in BUDGET_SHARES}, "random": {s: [] for s in BUDGET_SHARES}}
    total = n_models * (n_models - 1) // 2 * n_questions
    for r in range(repeats):
        rng = np.random.default_rng(seed + r)
        pairs, outcome = budget_world(n_models, n_questions, spread, rng)
        pair_index = np.zeros((n_models, n_models), dtype=np.int64)
        pair_index[pairs[:, 0], pairs[:, 1]] = np.arange(len(pairs))
        every = on_every_question(pairs, n_questions)
        reference = ranking_of(n_models, every, outcome, pair_index)
        for share in BUDGET_SHARES:
            n = max(1, round(share * total))
            adaptive = budget_run(n_models, n_questions, share, pairs, outcome, pair_index, seed + r)
            uniform = every[rng.choice(len(every), n, replace=False)]
            for name, rows in (("budget", adaptive), ("random", uniform)):
                taus[name][share].append(
                    float(kendalltau(ranking_of(n_models, rows, outcome, pair_index), reference)[0])
                )
    result = {"models": n_models, "questions": n_questions, "spread_elo": spread, "all_pairs_judgements": total,
              "repeats": repeats}  # fmt: skip
    for name, by_share in taus.items():
        reached = [
            s for s in BUDGET_SHARES if np.mean(np.array(by_share[s]) >= TAU_TARGET) >= WORLDS_REACHING
        ]
        result[name] = {
            "median_tau": {f"{s:.3f}": float(np.median(v)) for s, v in by_share.items()},
            "share_reaching": {
                f"{s:.3f}": float(np.mean(np.array(v) >= TAU_TARGET)) for s, v in by_share.items()
            },
            "needed_share": reached[0] if reached else None,
            "needed_judgements": round(reached[0] * total) if reached else None,
        }
    return result


def print_budget(result: dict) -> None:
    print(
        f"(b) {result['models']} models (Elo sd {result['spread_elo']:.0f}), {result['questions']} questions: all pairs = "
        f"{result['all_pairs_judgements']:,} judgements; {result['repeats']} worlds"
    )
    print("    share of all pairs   " + " ".join(f"{float(s):6.3f}" for s in result["budget"]["median_tau"]))
    for name in ("budget", "random"):
        medians = " ".join(f"{v:6.3f}" for v in result[name]["median_tau"].values())
        reaching = " ".join(f"{v:6.2f}" for v in result[name]["share_reaching"].values())
        print(f"    {name:<6} median tau     {medians}")
        print(f"    {name:<6} worlds >= 0.9  {reaching}")
    for name in ("budget", "random"):
        share = result[name]["needed_share"]
        if share is None:
            print(f"    {name}: tau >= 0.9 in 90% of worlds not reached within 1/3 of all pairs")
        else:
            mark = "target met" if share <= SHARE_TARGET else "target missed"
            print(
                f"    {name}: tau >= 0.9 in 90% of worlds with {result[name]['needed_judgements']:,} judgements "
                f"= {share:.1%} of all pairs ({mark}: <= 33.3%)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=100, help="(a) draws per design for the coverage")
    parser.add_argument("--resamples", type=int, default=200, help="(a) bootstrap resamples per board")
    parser.add_argument("--budget-repeats", type=int, default=10, help="(b) worlds per number of models")
    parser.add_argument(
        "--spreads", default="150,75", help="(b) sds of the true Elo scores, one world family each"
    )
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="a,b", help="a: recovery and coverage; b: budget")
    parser.add_argument("--quick", action="store_true", help="20 draws, 100 resamples, 4 worlds")
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.resamples, args.budget_repeats = 20, 100, 4
    started = time.time()
    report: dict = {"settings": vars(args) | {"json": str(args.json)}}
    parts = set(args.parts.split(","))
    with single_threaded():
        if "a" in parts:
            report["one_run"] = show_one_run(args.questions, args.resamples, args.seed)
            report["estimator"] = estimator_check(args.questions)
        report["coverage"] = []
        for design in ("all", "baseline") if "a" in parts else ():
            for kind in ("hard", "soft"):
                row = coverage(design, kind, args.repeats, args.resamples, args.questions, args.seed)
                report["coverage"].append(row)
                print(
                    f"(a) coverage, pairs {design:<8} {kind} outcomes: {row['coverage']:.1%} of true scores inside "
                    f"their 95% interval ({row['repeats']} draws x 7 models; mean width {row['mean_ci_width']:.0f} "
                    f"Elo); the oracle's +-1.96 sd ({row['oracle_mean_width']:.0f} Elo) on the same draws: "
                    f"{row['oracle_coverage']:.1%}; true order recovered in {row['order_recovered']:.0%} of draws"
                )
        report["budget"] = []
        for spread in (float(x) for x in args.spreads.split(",")) if "b" in parts else ():
            for n_models in (10, 30):
                result = budget_check(n_models, args.questions, spread, args.budget_repeats, args.seed)
                report["budget"].append(result)
                print_budget(result)
    report["seconds"] = round(time.time() - started, 1)
    print(f"rank_check: {report['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
