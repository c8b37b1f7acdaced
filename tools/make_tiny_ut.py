"""Build tests/assets/pandalm_ut_format.csv: PandaLM pairs in the ut_multi.csv layout.

The `tiny` training preset needs post-pretraining data in the layout of the reference's
ut_multi.csv (prompt, response_a, response_b, winner_model_a, winner_model_b; plain strings). This
takes every third non-tie row of the LMSYS-layout PandaLM file, turns its one-turn JSON lists into
plain text, and writes the result. Run from the repository root:

    python tools/make_tiny_ut.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

ASSETS = Path("tests/assets")
SOURCE = ASSETS / "pandalm_lmsys_format.csv"
TARGET = ASSETS / "pandalm_ut_format.csv"


def plain(cell: str) -> str:
    return "\n".join(json.loads(cell))


def main() -> None:
    frame = pd.read_csv(SOURCE, dtype=str, keep_default_na=False)
    frame = frame[frame["winner_tie"] != "1"].iloc[::3]
    out = pd.DataFrame(
        {
            "prompt": frame["prompt"].map(plain),
            "response_a": frame["response_a"].map(plain),
            "response_b": frame["response_b"].map(plain),
            "winner_model_a": frame["winner_model_a"].astype(int),
            "winner_model_b": frame["winner_model_b"].astype(int),
        }
    )
    out.to_csv(TARGET, index=False)
    print(f"{TARGET}: {len(out)} rows")


if __name__ == "__main__":
    main()
