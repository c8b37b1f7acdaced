"""Preprocessing throughput: wsdm's batched truncation + prompting vs the reference's per-row loops.

Both sides use the same tokenizer and the same rows in one run. The baseline re-creates the
reference's per-row procedure (encode each text, trim one token at a time, render, re-tokenize),
serially and, as the reference did, over a process pool of all cores.

    python tools/bench_preprocess.py [--tokenizer DIR] [--rows N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.reference_oracle import reference_truncate  # noqa: E402
from wsdm_serve.data import ArenaRows  # noqa: E402
from wsdm_serve.preprocess import build_prompts  # noqa: E402
from wsdm_serve.prompt import JudgePrompt  # noqa: E402
from wsdm_serve.textnorm import list_or_text  # noqa: E402

ASSETS = REPO / "tests" / "assets"
BUDGET, WORD_CAP = 10000, 4200
_tokenizer = None


def _encode(text: str) -> list[int]:
    return _tokenizer(text, add_special_tokens=False)["input_ids"]


def reference_row(row: tuple[str, str, str]) -> tuple[int, int]:
    """One row as the reference processed it: encode, loop-trim, render both orders, tokenize, decode."""
    query, a, b = reference_truncate(_tokenizer, *row, BUDGET, WORD_CAP)
    prompt = JudgePrompt(_tokenizer)
    forward, swapped = prompt.render_pair(query, a, b)
    # section 7.1: each prompt is tokenized and decoded back to get its length and the engine's string
    forward_ids, swapped_ids = _encode(forward), _encode(swapped)
    _tokenizer.decode(forward_ids), _tokenizer.decode(swapped_ids)
    return len(forward_ids), len(swapped_ids)


def _init(tokenizer_dir: str) -> None:
    global _tokenizer
    from transformers import AutoTokenizer

    _tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)


def realistic_rows(n: int) -> list[tuple[str, str, str]]:
    """Real arena and PandaLM rows, cycled to ``n``."""
    frames = [
        pd.read_parquet(ASSETS / "arena_hard_sample.parquet"),
        pd.read_parquet(ASSETS / "pandalm_train.parquet"),
    ]
    rows = [
        (r.prompt, list_or_text(r.response_a), list_or_text(r.response_b))
        for frame in frames
        for r in frame.itertuples()
    ]
    return [rows[i % len(rows)] for i in range(n)]


def over_budget_rows(n: int) -> list[tuple[str, str, str]]:
    """Real rows whose responses are repeated to ~60k and ~35k characters.

    Even rows keep their spaces, so the 4,200-word cap binds first (English prose); odd rows have
    their spaces turned into newlines, like code or CJK text, where only the token budget binds.
    """
    out = []
    for index, (query, a, b) in enumerate(realistic_rows(n)):
        a_long = (a + "\n") * max(1, 60000 // max(len(a), 1))
        b_long = (b + "\n") * max(1, 35000 // max(len(b), 1))
        if index % 2:
            a_long, b_long = a_long.replace(" ", "\n"), b_long.replace(" ", "\n")
        out.append((query, a_long, b_long))
    return out


def run_wsdm(rows: list[tuple[str, str, str]], tokenizer) -> float:
    arena = ArenaRows(
        ids=list(range(len(rows))),
        prompts=[r[0] for r in rows],
        responses_a=[r[1] for r in rows],
        responses_b=[r[2] for r in rows],
        null_text_cells=0,
    )
    started = time.perf_counter()
    build_prompts(arena, tokenizer, with_swapped_ids=True, progress=False)
    return time.perf_counter() - started


def run_reference(rows, tokenizer_dir: str, processes: int) -> float:
    started = time.perf_counter()
    if processes == 1:
        for row in rows:
            reference_row(row)
    else:
        with Pool(processes, initializer=_init, initargs=(tokenizer_dir,)) as pool:
            pool.map(reference_row, rows, chunksize=8)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", default=str(ASSETS / "qwen2.5-tokenizer"))
    parser.add_argument("--rows", type=int, default=1000, help="realistic rows")
    parser.add_argument("--over-rows", type=int, default=60, help="over-budget rows (the baseline is slow)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    _init(args.tokenizer)
    cores = os.cpu_count() or 1
    results = {"cores": cores, "tokenizer": Path(args.tokenizer).name}
    for name, rows in (
        ("realistic", realistic_rows(args.rows)),
        ("over_budget", over_budget_rows(args.over_rows)),
    ):
        wsdm_s = run_wsdm(rows, _tokenizer)
        serial_s = run_reference(rows, args.tokenizer, 1)
        pool_s = run_reference(rows, args.tokenizer, cores)
        n = len(rows)
        results[name] = {
            "rows": n,
            "wsdm_rows_per_s": n / wsdm_s,
            "reference_serial_rows_per_s": n / serial_s,
            "reference_pool_rows_per_s": n / pool_s,
            "speedup_vs_serial": serial_s / wsdm_s,
            "speedup_vs_pool": pool_s / wsdm_s,
        }
        r = results[name]
        print(
            f"{name:12s} rows={n:5d}  wsdm {r['wsdm_rows_per_s']:8.1f} rows/s | reference serial "
            f"{r['reference_serial_rows_per_s']:7.1f} rows/s (x{r['speedup_vs_serial']:.1f}) | reference "
            f"pool({cores}) {r['reference_pool_rows_per_s']:7.1f} rows/s (x{r['speedup_vs_pool']:.1f})"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
