"""Throughput of the prepare stage's encoding (truncate + render + tokenize -> Arrow), in rows/s.

Measures `wsdm_train.data.encode.encode_rows` with the real Qwen2.5 tokenizer on the PandaLM rows as
they are (short: median ~120 tokens) and on "long" rows, each built by joining the responses of
several PandaLM rows so that rows reach competition-like lengths (thousands of tokens) and the
token budget actually cuts. Run from the repository root:

    python tools/bench_prepare.py [--rows 2000] [--repeat 8]
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd

from wsdm_serve.prompt import STUDENT_SYSTEM_PROMPT, JudgePrompt
from wsdm_serve.textnorm import normalize_response
from wsdm_serve.tokenizer import load_tokenizer
from wsdm_serve.truncation import TruncationConfig
from wsdm_train.data.encode import encode_rows

TOKENIZER = "tests/assets/qwen2.5-tokenizer"
TRAIN = "tests/assets/pandalm_train.parquet"


def rows(n: int, repeat: int) -> tuple[list[str], list[str], list[str]]:
    frame = pd.read_parquet(TRAIN)
    prompts = frame["prompt"].tolist()
    a = [normalize_response(v, "reference") for v in frame["response_a"]]
    b = [normalize_response(v, "reference") for v in frame["response_b"]]
    m = len(prompts)
    out_p, out_a, out_b = [], [], []
    for i in range(n):
        out_p.append(prompts[i % m])
        out_a.append("\n\n".join(a[(i + j) % m] for j in range(repeat)))
        out_b.append("\n\n".join(b[(i + 7 * j) % m] for j in range(repeat)))
    return out_p, out_a, out_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=40, help="responses joined per long row")
    args = parser.parse_args()
    tokenizer = load_tokenizer(TOKENIZER)
    prompt = JudgePrompt(tokenizer, STUDENT_SYSTEM_PROMPT)
    print(f"cpus: {os.cpu_count()}")
    for label, repeat in (("pandalm rows", 1), (f"long rows (x{args.repeat} responses)", args.repeat)):
        data = rows(args.rows, repeat)
        for budget, cap in ((2048, 1400), (10000, 4200)):
            started = time.perf_counter()
            encoded = encode_rows(tokenizer, prompt, *data, TruncationConfig(budget, cap), progress=False)
            seconds = time.perf_counter() - started
            tokens = encoded.n_tokens_total
            print(
                f"{label:32s} budget {budget:5d}: {args.rows / seconds:8.0f} rows/s, "
                f"{tokens / seconds / 1e6:5.2f} M prompt tokens/s, mean {tokens / args.rows:6.0f} tokens/row"
            )


if __name__ == "__main__":
    main()
