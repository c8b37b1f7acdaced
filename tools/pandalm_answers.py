"""An answers table for ``wsdm-serve rank`` from the PandaLM pairs in tests/assets.

PandaLM's test set compares the answers of five named 7B models (bloom-7b, cerebras-gpt-6.7B,
llama-7b, opt-7b, pythia-6.9b) to the same instructions, two at a time. This takes each model's
answer to each instruction out of the pairs and keeps the instructions every model answered (121 of
158), one row per answer: question_id, prompt, model, response, language.

    python tools/pandalm_answers.py --out answers.parquet
    python tools/pandalm_answers.py --out answers.csv --questions 20 --models 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PANDALM = REPO / "tests" / "assets" / "pandalm_train.parquet"


def pandalm_answers(
    source: Path = PANDALM, questions: int | None = None, models: int | None = None
) -> pd.DataFrame:
    """One row per (instruction, model) of the instructions answered by all chosen models; a model's
    first answer where the pairs hold two (17 of 730 differ in the input that followed)."""
    pairs = pd.read_parquet(source)
    sides = [
        pairs[["prompt", f"model_{s}", f"response_{s}", "language"]].set_axis(
            ["prompt", "model", "response", "language"], axis=1
        )
        for s in ("a", "b")
    ]
    answers = pd.concat(sides, ignore_index=True).drop_duplicates(["prompt", "model"])
    names = sorted(answers["model"].unique())[:models] if models else sorted(answers["model"].unique())
    answers = answers[answers["model"].isin(names)]
    complete = answers.groupby("prompt", sort=False)["model"].nunique()
    prompts = [p for p in complete.index if complete[p] == len(names)][:questions]
    ids = {prompt: f"pandalm-{k:03d}" for k, prompt in enumerate(prompts)}
    answers = answers[answers["prompt"].isin(ids)].copy()
    answers.insert(0, "question_id", answers["prompt"].map(ids))
    return answers.sort_values(["question_id", "model"]).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="answers table (.parquet, .csv or .jsonl)")
    parser.add_argument("--questions", type=int, default=None, help="keep the first N questions")
    parser.add_argument("--models", type=int, default=None, help="keep the first N models (sorted by name)")
    args = parser.parse_args()
    frame = pandalm_answers(questions=args.questions, models=args.models)
    suffix = args.out.suffix.lower()
    if suffix == ".parquet":
        frame.to_parquet(args.out, index=False)
    elif suffix == ".csv":
        frame.to_csv(args.out, index=False)
    elif suffix == ".jsonl":
        frame.to_json(args.out, orient="records", lines=True, force_ascii=False)
    else:
        raise SystemExit(f"{args.out}: use .parquet, .csv or .jsonl")
    print(
        f"{args.out}: {frame['question_id'].nunique()} questions x {frame['model'].nunique()} models "
        f"({', '.join(sorted(frame['model'].unique()))})"
    )


if __name__ == "__main__":
    main()
