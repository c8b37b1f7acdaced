"""Build the `tiny` training preset's tables from the PandaLM pairs in tests/assets.

The preset needs a competition table, an LMSYS-layout table and a ut-layout table (the reference's
notie_lmsys.csv and ut_multi.csv) that share no pair, or the extra tables would put fold dev rows
into training. The prompts are split by a hash of their text: a third go to the extra tables (half
of those prompts to LMSYS, half to ut), the rest to the competition table. Run from the repository
root:

    python tools/make_tiny_data.py

Writes tests/assets/pandalm_tiny_train.parquet (WSDM train layout), pandalm_tiny_lmsys.csv (LMSYS
layout, ties kept: prepare skips them) and pandalm_tiny_ut.csv (ut layout: plain strings,
winner_model_a, winner_model_b; no ties). It also writes pandalm_ut_format.csv, every third
non-tie row of the full LMSYS file in the ut layout, which the prepare tests encode next to the
full tables.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

ASSETS = Path("tests/assets")
TRAIN = ASSETS / "pandalm_train.parquet"
LMSYS = ASSETS / "pandalm_lmsys_format.csv"
TINY_TRAIN = ASSETS / "pandalm_tiny_train.parquet"
TINY_LMSYS = ASSETS / "pandalm_tiny_lmsys.csv"
TINY_UT = ASSETS / "pandalm_tiny_ut.csv"
FULL_UT = ASSETS / "pandalm_ut_format.csv"


def bucket(prompt: str) -> int:
    """0: LMSYS, 1: ut, 2-5: competition table; stable across runs and machines."""
    return int(hashlib.sha1(("tiny-split:" + prompt).encode("utf-8")).hexdigest()[:12], 16) % 6


def plain(cell: str) -> str:
    return "\n".join(json.loads(cell))


def ut_layout(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": frame["prompt"].map(plain),
            "response_a": frame["response_a"].map(plain),
            "response_b": frame["response_b"].map(plain),
            "winner_model_a": frame["winner_model_a"].astype(int),
            "winner_model_b": frame["winner_model_b"].astype(int),
        }
    )


def main() -> None:
    train = pd.read_parquet(TRAIN)
    lmsys = pd.read_csv(LMSYS, dtype=str, keep_default_na=False)
    lmsys_prompt = lmsys["prompt"].map(plain)
    train_bucket = train["prompt"].map(bucket)
    lmsys_bucket = lmsys_prompt.map(bucket)

    train[train_bucket >= 2].to_parquet(TINY_TRAIN, index=False)
    lmsys[lmsys_bucket == 0].to_csv(TINY_LMSYS, index=False)
    ut_layout(lmsys[(lmsys_bucket == 1) & (lmsys["winner_tie"] != "1")]).to_csv(TINY_UT, index=False)
    ut_layout(lmsys[lmsys["winner_tie"] != "1"].iloc[::3]).to_csv(FULL_UT, index=False)
    for path in (TINY_TRAIN, TINY_LMSYS, TINY_UT, FULL_UT):
        rows = len(pd.read_parquet(path)) if path.suffix == ".parquet" else len(pd.read_csv(path))
        print(f"{path}: {rows} rows")


if __name__ == "__main__":
    main()
