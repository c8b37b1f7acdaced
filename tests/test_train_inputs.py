"""Training inputs that would mislead: extra rows repeating a competition pair, no ut data."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import ASSETS, PANDALM_LMSYS, PANDALM_TRAIN, TINY_LMSYS, TINY_TRAIN, run_cli

from wsdm_train.config import load_config
from wsdm_train.data.overlap import OVERLAP_REASON, drop_overlap, pair_key
from wsdm_train.data.prepare import run_prepare
from wsdm_train.data.sources import read_competition, read_lmsys, read_ut
from wsdm_train.pipeline import PipelineOptions, make_plan

TINY_UT = ASSETS / "pandalm_tiny_ut.csv"


def test_a_swapped_copy_is_the_same_pair():
    assert pair_key("q", "a", "b") == pair_key(" q", "b ", "a")
    assert pair_key("name [x]", "a", "b") == pair_key("name x", "a", "b"), "brackets are normalised away"
    assert pair_key("q", "a", "b") != pair_key("q", "a", "c")


def test_the_full_lmsys_table_repeats_every_competition_pair():
    """The PandaLM LMSYS file is the competition table again: every usable row is dropped, named."""
    train = read_competition(PANDALM_TRAIN)
    lmsys = read_lmsys(PANDALM_LMSYS)
    kept = drop_overlap(lmsys, train)
    assert len(lmsys) == 894 and len(kept) == 0
    dropped = [s for s in kept.skipped if s.reason == OVERLAP_REASON]
    assert len(dropped) == 894 and {s.source for s in dropped} == {"lmsys"}
    assert dropped[0].row >= 1 and dropped[0].id


def test_the_tiny_tables_share_no_pair():
    train = read_competition(TINY_TRAIN)
    for extra in (read_lmsys(TINY_LMSYS), read_ut(TINY_UT)):
        assert len(extra) > 100
        assert len(drop_overlap(extra, train)) == len(extra)


@pytest.fixture
def leaky_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pd.read_parquet(PANDALM_TRAIN).head(60).to_parquet(data / "train.parquet", index=False)
    lmsys = pd.read_csv(PANDALM_LMSYS, dtype=str, keep_default_na=False)
    # 40 rows repeating the first competition pairs, then 40 of other pairs (not in the head).
    pd.concat([lmsys.head(40), lmsys.tail(40)]).to_csv(data / "lmsys.csv", index=False)
    shutil.copy(TINY_UT, data / "ut.csv")
    return data


def prepare_settings(data, *extra: str) -> list[str]:
    return [
        f"paths.data_dir={data}",
        f"paths.processed_dir={data / 'processed'}",
        "prepare.train_file=train.parquet",
        "prepare.lmsys_file=lmsys.csv",
        "prepare.ut_file=ut.csv",
        "teachers=[]",
        *extra,
    ]


def test_prepare_drops_and_counts_overlapping_rows_unless_told_to_keep_them(leaky_data):
    train = read_competition(leaky_data / "train.parquet")
    lmsys = read_lmsys(leaky_data / "lmsys.csv")
    expected = len(lmsys) - len(drop_overlap(lmsys, train))
    assert 20 < expected < len(lmsys), "the fixture mixes repeated and new pairs"
    ut = read_ut(leaky_data / "ut.csv")
    expected_ut = len(ut) - len(drop_overlap(ut, train))

    result = run_prepare(load_config("tiny", prepare_settings(leaky_data)), progress=False)
    assert result.manifest["skipped"]["counts"][f"lmsys: {OVERLAP_REASON}"] == expected
    assert result.manifest["skipped"]["counts"].get(f"ut: {OVERLAP_REASON}", 0) == expected_ut
    assert f"({expected + expected_ut} extra rows repeat a competition pair)" in result.summary
    fold_train = pd.read_parquet(leaky_data / "processed" / "student" / "fold0" / "train.parquet")
    assert (fold_train["source"] == "lmsys").sum() == len(lmsys) - expected

    kept = run_prepare(
        load_config("tiny", prepare_settings(leaky_data, "prepare.drop_extra_overlap=false")), progress=False
    )
    assert f"lmsys: {OVERLAP_REASON}" not in kept.manifest["skipped"]["counts"]
    fold_train = pd.read_parquet(leaky_data / "processed" / "student" / "fold0" / "train.parquet")
    assert (fold_train["source"] == "lmsys").sum() == len(lmsys)


def test_no_ut_data_skips_pretraining_in_all_and_names_it_in_pretrain(leaky_data, tmp_path):
    for setting in ("prepare.ut_file=null", "prepare.ut_file=missing.csv"):
        config = load_config("tiny", prepare_settings(leaky_data, setting))
        plan = make_plan(config, PipelineOptions())
        reason = plan.needed("pretrain")
        assert reason is not None and reason.startswith("no post-pretraining data (")
        assert not plan.config.finetune.init_from_pretrain and not plan.config.distill.init_from_pretrain

    args = ["--config", "tiny"]
    for item in prepare_settings(
        leaky_data, "prepare.ut_file=null", f"paths.model_dir={tmp_path / 'models'}"
    ):
        args += ["--set", item]
    assert run_cli("wsdm-train", "-q", "prepare", *args).returncode == 0
    result = run_cli("wsdm-train", "-q", "pretrain", *args, "--deepspeed", "none", "--target", "student")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no post-pretraining data (prepare.ut_file is null): nothing to pretrain; set prepare.ut_file "
        "to a ut table and run prepare, or train without it: --set finetune.init_from_pretrain=false "
        "--set distill.init_from_pretrain=false (wsdm-train all does this by itself)"
    ]


def _pretrain_table(path, pairs: list[tuple[list[int], list[int], int]]):
    """A pretrain.parquet of (forward ids, swapped ids, label) rows, as `prepare` writes it."""
    frame = pd.DataFrame(
        {
            "row_key": [f"ut:{i}" for i in range(len(pairs))],
            "label": [label for _, _, label in pairs],
            "input_ids": [forward for forward, _, _ in pairs],
            "input_ids_swapped": [swapped for _, swapped, _ in pairs],
            "label_swapped": [1 - label for _, _, label in pairs],
        }
    )
    frame.to_parquet(path)
    return path


def test_post_pretraining_dev_rows_never_share_a_pair_with_training(tmp_path):
    """Repeated pairs (the same ids, or the same pair the other way round, even with the opposite
    label from another annotator) stay on one side; distinct rows split as a plain shuffle."""
    from wsdm_train.config import PretrainSettings
    from wsdm_train.training.examples import pair_groups, pretrain_examples

    rows = [([i, 1, 2], [i, 2, 1], i % 2) for i in range(40)]
    rows += [([i, 1, 2], [i, 2, 1], 1 - i % 2) for i in range(0, 40, 4)]  # the same pair again
    rows += [([i, 2, 1], [i, 1, 2], i % 2) for i in range(1, 40, 5)]  # the same pair, swapped
    path = _pretrain_table(tmp_path / "pretrain.parquet", rows)
    groups = pair_groups(pd.read_parquet(path))
    assert len(set(groups)) == 40
    for seed in range(20):
        train, dev = pretrain_examples(path, PretrainSettings(dev_rows=12, both_orders=False), seed)
        train_pairs = {groups[int(key.split(":")[1])] for key in train.keys}
        dev_pairs = {groups[int(key.split(":")[1])] for key in dev.keys}
        assert not train_pairs & dev_pairs
        assert 12 <= len(dev.keys) // 2 <= 14  # dev always carries both orders
        assert len(train.keys) + len(dev.keys) // 2 == len(rows)

    distinct = _pretrain_table(tmp_path / "distinct.parquet", rows[:40])
    _, dev = pretrain_examples(distinct, PretrainSettings(dev_rows=12, both_orders=False), 3)
    expected = np.sort(np.random.default_rng(3).permutation(40)[:12])
    assert [key for key in dev.keys if not key.endswith(":swapped")] == [f"ut:{i}" for i in expected]


def test_a_post_pretraining_table_of_one_pair_is_refused(tmp_path):
    from wsdm_serve.errors import WsdmError
    from wsdm_train.config import PretrainSettings
    from wsdm_train.training.examples import pretrain_examples

    path = _pretrain_table(tmp_path / "pretrain.parquet", [([5, 1, 2], [5, 2, 1], 0)] * 3)
    with pytest.raises(WsdmError, match="every row is the same pair"):
        pretrain_examples(path, PretrainSettings(dev_rows=1, both_orders=False), 0)
