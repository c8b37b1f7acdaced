"""Count the dev texts of every fold that are also, character for character, in that fold's training rows.

A processed folder (what `wsdm-train prepare` writes) holds, per model and fold, ``train.parquet``
and ``dev.parquet`` with the rendered prompt of every row in ``text``. A dev text that also occurs
in the same fold's training rows is a row the model trains on and is then scored on: dev accuracy is
optimistic and the best checkpoint is chosen partly on training rows. Run from a clone's root::

    python tools/fold_leaks.py data/tiny/processed

prints one line per model and fold (``student fold0: 0 of 275 dev texts in training``) and exits
with code 1 when any fold leaks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow.parquet as pq


def fold_leaks(processed: Path) -> list[dict]:
    """One record per model folder and fold: dev texts, and how many of them the training rows hold."""
    records = []
    for dev_path in sorted(processed.glob("**/fold*/dev.parquet")):
        fold_dir = dev_path.parent
        train_texts = set(
            pq.read_table(fold_dir / "train.parquet", columns=["text"]).column("text").to_pylist()
        )
        dev_texts = pq.read_table(dev_path, columns=["text"]).column("text").to_pylist()
        leaked = sum(text in train_texts for text in dev_texts)
        records.append(
            {
                "model": str(fold_dir.parent.relative_to(processed)),
                "fold": fold_dir.name,
                "dev": len(dev_texts),
                "leaked": leaked,
            }
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("processed", type=Path, help="a folder written by `wsdm-train prepare`")
    args = parser.parse_args()
    records = fold_leaks(args.processed)
    if not records:
        sys.exit(f"error: {args.processed}: no fold*/dev.parquet (run `wsdm-train prepare` first)")
    for record in records:
        print(
            f"{record['model']} {record['fold']}: {record['leaked']} of {record['dev']} dev texts in training"
        )
    sys.exit(1 if any(record["leaked"] for record in records) else 0)


if __name__ == "__main__":
    main()
