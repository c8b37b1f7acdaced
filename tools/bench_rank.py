"""Judge throughput inside `wsdm-serve rank` against `predict` on the same prompts (one GPU).

The model and workload are tools/bench.py's: Qwen2.5-14B-shaped random weights (vLLM builds them,
``load_format="dummy"``) and real arena and PandaLM rows lengthened to a realistic length mix. Here
the rows become an answers table: ``--questions`` questions, each answered by ``--models`` models
(the answers are the lengthened real responses), every model judged against the baseline in both
orders (``rank --pairs baseline``). On ONE engine, with the prefix cache reset before every pass and
the methods interleaved per repetition:

  predict      ``Judge.predict`` with ``--tta all`` on the table of those pairs, in rank's order
               (question-major): the reference
  rank         rank's judging as the command runs it: schedule, pair keys, the in-memory store,
               chunks of 1024 pairs (the default ``--chunk-rows``) through ``rank.judging``
  rank-chunks  the same in chunks of ``--chunk-rows`` pairs (what a smaller --chunk-rows costs)

Tokens are counted the same way for all (both orders of every prompt); the judgements of rank must
equal predict's probabilities. Target: rank >= 0.95x predict's tokens/s.

    PYTHONPATH=$PWD python tools/bench_rank.py --json bench-rank.json     # ~6 min on one H100
    PYTHONPATH=$PWD python tools/bench_rank.py --quick --engine hf        # 2-layer model on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))

import bench  # noqa: E402  (tools/bench.py: workload rows, model folders)

TARGET = 0.95
BASELINE = "model-0"


def answers_table(args, tokenizer):
    """Questions x models answers from bench's lengthened real rows: question q takes the prompt of
    its first row and the responses of its rows, both sides, as the models' answers."""
    import pandas as pd

    per_question = math.ceil(args.models / 2)
    rows = bench.build_rows(
        args.questions * per_question, args.seed, tokenizer, args.median, args.sigma, args.budget_share
    )
    records = []
    for q in range(args.questions):
        first = q * per_question
        texts = [
            t for r in range(first, first + per_question) for t in (rows.responses_a[r], rows.responses_b[r])
        ]
        for m in range(args.models):
            records.append(
                {
                    "question_id": f"q{q:04d}",
                    "prompt": rows.prompts[first],
                    "model": f"model-{m}",
                    "response": texts[m],
                }
            )
    return pd.DataFrame(records)


def make_engine(args, model_dir: Path, letters, longest: int):
    from wsdm_serve.engines.select import create_engine
    from wsdm_serve.engines.settings import EngineSettings
    from wsdm_serve.models.folder import ModelFolder

    if args.engine == "hf":
        import bench_serve  # the transformers engine on random weights built from config.json

        return bench_serve.random_hf_engine(model_dir, letters)
    settings = EngineSettings(
        name="vllm", dtype="bfloat16", load_format="dummy", gpu_memory_utilization=args.gpu_memory_utilization
    )
    return create_engine(ModelFolder(model_dir), letters, longest, settings)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=128)
    parser.add_argument(
        "--models", type=int, default=5, help="models answering each question, one the baseline"
    )
    parser.add_argument(
        "--chunk-rows", type=int, default=128, help="pairs per chunk of the rank-chunks method"
    )
    parser.add_argument("--reps", type=int, default=2, help="passes per method (median reported)")
    parser.add_argument("--median", type=float, default=1350, help="median target prompt length (tokens)")
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--budget-share", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="hf: run the tool on a CPU")
    parser.add_argument("--gpu", default=None, help="the GPU to use [default: the first visible]")
    parser.add_argument(
        "--quick", action="store_true", help="2-layer model, 8 questions x 3 models, one pass"
    )
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.models, args.reps, args.median, args.chunk_rows = 8, 3, 1, 600, 4
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    run(args)


def run(args) -> None:
    import tempfile

    import numpy as np
    import pandas as pd

    from wsdm_serve.data import arena_rows_from_frame
    from wsdm_serve.engines.settings import EngineSettings
    from wsdm_serve.judge import Judge
    from wsdm_serve.preprocess import longest_admissible_prompt
    from wsdm_serve.prompt import letter_token_ids
    from wsdm_serve.rank.answers import check_answers
    from wsdm_serve.rank.boards import BoardSettings
    from wsdm_serve.rank.judging import PairJudge
    from wsdm_serve.rank.run import Judging, Pairing, judge_answers
    from wsdm_serve.rank.store import JudgementStore
    from wsdm_serve.settings import JudgeSettings
    from wsdm_serve.tokenizer import load_tokenizer

    config_shape = bench.TINY if args.quick else bench.QWEN25_14B
    workdir = Path(tempfile.mkdtemp(prefix="wsdm-bench-rank-"))
    model_dir = bench.write_model_dir(workdir / "model", config_shape, None)
    tokenizer = load_tokenizer(model_dir)
    frame = answers_table(args, tokenizer)
    answers = check_answers(frame.assign(where=[f"row {i + 1}" for i in range(len(frame))]), "bench answers")
    options = EngineSettings(name=args.engine, dtype="bfloat16" if args.engine == "vllm" else "float32")
    settings = JudgeSettings(model=model_dir, tta="all", progress=False, engine=options)
    pairing, board = Pairing("baseline"), BoardSettings(baseline=BASELINE)

    started = time.perf_counter()
    letters = letter_token_ids(tokenizer)
    engine = make_engine(args, model_dir, letters, longest_admissible_prompt(tokenizer, settings.truncation))
    startup = time.perf_counter() - started
    if args.engine == "vllm" and engine.scorer is None:
        raise SystemExit("the bench runs one in-process engine; give --gpu N (or set CUDA_VISIBLE_DEVICES)")
    print(f"engine up in {startup:.1f} s: {engine.describe()}", flush=True)
    judge = Judge(settings, engine)

    pair_judge = PairJudge(settings, engine=engine)  # made once, as the command makes it once

    def rank_method(chunk_rows: int):
        def method():
            with JudgementStore(None, {}) as store:
                judging = Judging(settings, store, pair_judge, chunk_rows, quiet=True)
                judged = judge_answers(answers, pairing, board, judging, seed=0)
                return judged, judging.stats.tokens

        return method

    # The reference: the same pairs as one predict table, in rank's order.
    schedule, _ = rank_method(10**9)()
    texts = frame.set_index(["question_id", "model"])["response"]
    prompts = frame.groupby("question_id")["prompt"].first()
    pairs = pd.DataFrame(
        {
            "id": range(len(schedule)),
            "prompt": prompts[schedule.question_id].to_numpy(),
            "response_a": [
                texts[(q, m)] for q, m in zip(schedule.question_id, schedule.model_a, strict=True)
            ],
            "response_b": [
                texts[(q, m)] for q, m in zip(schedule.question_id, schedule.model_b, strict=True)
            ],
        }
    )
    table = arena_rows_from_frame(pairs, "bench pairs")

    def predict_method():
        result = judge.predict(table)
        return result, result.n_tokens

    methods = {
        "predict": predict_method,
        "rank": rank_method(1024),
        "rank-chunks": rank_method(args.chunk_rows),
    }
    judge.predict(arena_rows_from_frame(pairs.head(8), "warm-up"))
    times: dict[str, list[float]] = {name: [] for name in methods}
    outputs: dict[str, tuple] = {}
    for _ in range(args.reps):
        for name, method in methods.items():
            if args.engine == "vllm":
                engine.scorer.reset_prefix_cache()
            tick = time.perf_counter()
            outputs[name] = method()
            times[name].append(time.perf_counter() - tick)
    reference = outputs["predict"][0]
    results = {}
    for name in methods:
        tokens = outputs[name][1]
        median = statistics.median(times[name])
        results[name] = {"tokens": tokens, "times_s": [round(t, 3) for t in times[name]],
                         "tokens_per_s": round(tokens / median, 1)}  # fmt: skip
        if name != "predict":
            judged = outputs[name][0]
            results[name]["max_abs_dp_vs_predict"] = float(
                max(np.abs(judged.p_a_forward.to_numpy() - reference.forward[:, 0]).max(),
                    np.abs(judged.p_a_swapped.to_numpy() - reference.swapped[:, 1]).max())
            )  # fmt: skip
    described = engine.describe()
    engine.close()
    base = results["predict"]["tokens_per_s"]
    print(
        f"workload: {args.questions} questions x {args.models} models, {len(schedule)} pairs vs {BASELINE}, "
        f"{results['predict']['tokens']:,} tokens in both orders ({'tiny' if args.quick else 'Qwen2.5-14B'} shape, "
        f"{args.engine})"
    )
    for name, record in results.items():
        ratio = record["tokens_per_s"] / base
        extra = "" if name == "predict" else (
            f"  {ratio:.3f}x predict ({'met' if ratio >= TARGET else 'MISSED'}: >= {TARGET})"
            f"  max |dP| vs predict {record['max_abs_dp_vs_predict']:.1e}"
        )  # fmt: skip
        print(f"  {name:<12} {record['tokens_per_s']:>12,.0f} tok/s  {record['times_s']}{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "startup_s": startup, "results": results,
                                               "engine": described}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
