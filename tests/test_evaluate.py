"""`wsdm-serve evaluate`: hand-computed metrics from a probability file, and real labelled data
scored by a tiny model (PandaLM rows, in the WSDM layout and in the LMSYS layout with ties)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import PANDALM_LMSYS, PANDALM_TRAIN, run_cli
from test_metrics import (
    BY_LANGUAGE_FORWARD,
    BY_LANGUAGE_TTA,
    BY_LENGTH_FORWARD,
    BY_LENGTH_TTA,
    FORWARD,
    LABELS,
    LANGUAGES,
    N_TOKENS,
    P_A,
    POSITION,
    WITH_TTA,
    S,
)

from wsdm_serve.cli import main


def invoke(*args) -> object:
    """Run the CLI in this process (the model-free paths); stdout and stderr are kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
def hand_tables(tmp_path) -> tuple[Path, Path]:
    """The six rows of test_metrics in the LMSYS layout, plus a tie, and their probability file."""
    ids = [f"r{i}" for i in range(1, 7)]
    table = pd.DataFrame(
        {
            "id": [*ids[:3], "tie-row", *ids[3:]],
            "prompt": ["q"] * 7,
            "response_a": ["a"] * 7,
            "response_b": ["b"] * 7,
            "winner_model_a": [1 - int(x) for x in LABELS[:3]] + [0] + [1 - int(x) for x in LABELS[3:]],
            "winner_model_b": [int(x) for x in LABELS[:3]] + [0] + [int(x) for x in LABELS[3:]],
            "winner_tie": [0, 0, 0, 1, 0, 0, 0],
            "language": [*LANGUAGES[:3], "en", *LANGUAGES[3:]],
        }
    )
    table_path = tmp_path / "labelled.csv"
    table.to_csv(table_path, index=False)
    # Rows in another order than the table: they are matched by id.
    probs = pd.DataFrame(
        {"id": ids, "p_a": P_A, "p_b": 1 - P_A, "p_a_swapped": S, "p_b_swapped": 1 - S, "n_tokens": N_TOKENS}
    ).iloc[::-1]
    probs_path = tmp_path / "probs.csv"
    probs.to_csv(probs_path, index=False)
    return table_path, probs_path


def test_evaluate_probs_file_matches_hand_computed_metrics(hand_tables, tmp_path):
    table, probs = hand_tables
    out = tmp_path / "eval"
    result = invoke("evaluate", table, "--probs", probs, "--out-dir", out, "--length-edges", "500,200")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["rows_read"] == 7 and report["ties_excluded"] == 1
    assert report["variants"] == ["no_tta", "tta"]
    for variant, expected in (("no_tta", FORWARD), ("tta", WITH_TTA)):
        assert report["metrics"][variant]["n"] == 6
        for name, value in expected.items():
            assert report["metrics"][variant][name] == pytest.approx(value, abs=1e-6), (variant, name)
    for name, value in POSITION.items():
        assert report["position_bias"][name] == pytest.approx(value, abs=1e-9), name
    for variant, expected in (("no_tta", BY_LANGUAGE_FORWARD), ("tta", BY_LANGUAGE_TTA)):
        got = {k: (v["n"], pytest.approx(v["accuracy"])) for k, v in report["by_language"][variant].items()}
        assert got == expected
    assert report["by_length"]["edges"] == [200, 500]
    for variant, expected in (("no_tta", BY_LENGTH_FORWARD), ("tta", BY_LENGTH_TTA)):
        got = {k: (v["n"], pytest.approx(v["accuracy"])) for k, v in report["by_length"][variant].items()}
        assert got == expected
        assert list(report["by_length"][variant]) == ["<200", "200-499", ">=500"]
    # The printed table carries the same numbers.
    lines = {line.split("  ")[0].strip(): line.split() for line in result.stdout.splitlines()}
    assert lines["accuracy"][-2:] == ["0.6667", "0.8333"]
    assert lines["Brier score"][-2:] == ["0.1925", "0.1584"]
    assert "1 ties excluded" in result.stdout
    for name in ("calibration.png", "accuracy_by_length.png"):
        width, height = png_size(out / name)
        assert width > 300 and height > 300


def test_probs_without_swapped_columns_give_one_variant(hand_tables, tmp_path):
    table, probs = hand_tables
    frame = pd.read_csv(probs)[["id", "p_a", "p_b"]]
    only = tmp_path / "forward.parquet"
    frame.to_parquet(only)
    result = invoke("evaluate", table, "--probs", only, "--out-dir", tmp_path / "e", "--no-plots")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["variants"] == ["given"]
    assert report["metrics"]["given"]["accuracy"] == pytest.approx(FORWARD["accuracy"])
    assert report["position_bias"]["swap_agreement"] is None
    assert report["by_length"] is None  # no n_tokens column
    assert not (tmp_path / "e" / "calibration.png").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t, p: t.drop(columns=["winner_model_a", "winner_model_b", "winner_tie"]), "no labels"),
        (lambda t, p: t.assign(winner_tie=[0, 0, 1, 1, 0, 0, 0]), "row 3: exactly one of"),
        (
            lambda t, p: t.assign(winner_model_a=["1", "1", "0", "0", "yes", "0", "0"]),
            "row 5: winner_model_a",
        ),
        (
            lambda t, p: t.drop(columns=["winner_model_a"]).assign(winner=["model_a"] * 6 + ["draw"]),
            "row 7: winner",
        ),
        (
            lambda t, p: t.assign(id=["r1", "r2", "r3", "tie-row", "r4", "r5", "r1"]),
            "duplicate id 'r1' at rows 1 and 7",
        ),
    ],
    ids=["no-labels", "two-ones", "not-binary", "bad-winner", "duplicate-id"],
)
def test_bad_labels_are_one_line_errors(hand_tables, tmp_path, change, message):
    table, probs = hand_tables
    frame = change(pd.read_csv(table), None)
    broken = tmp_path / "broken.csv"
    frame.to_csv(broken, index=False)
    result = invoke("evaluate", broken, "--probs", probs, "--out-dir", tmp_path / "e")
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert not (tmp_path / "e" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.iloc[1:], "no probabilities for 1 labelled row"),
        (lambda p: p.assign(p_b=p["p_b"] + 0.2), "is not a pair of probabilities"),
        (lambda p: p.drop(columns=["p_b_swapped"]), "must come together"),
        (lambda p: p.drop(columns=["p_a"]), "missing column(s) p_a"),
    ],
    ids=["missing-id", "not-normalised", "half-swapped", "no-p_a"],
)
def test_bad_probability_files_are_one_line_errors(hand_tables, tmp_path, change, message):
    table, probs = hand_tables
    broken = tmp_path / "broken.csv"
    change(pd.read_csv(probs)).to_csv(broken, index=False)
    result = invoke("evaluate", table, "--probs", broken, "--out-dir", tmp_path / "e")
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_all_ties_is_an_error(tmp_path):
    frame = pd.read_csv(PANDALM_LMSYS)
    ties = frame[frame["winner_tie"] == 1].head(5)
    path = tmp_path / "ties.csv"
    ties.to_csv(path, index=False)
    result = invoke("evaluate", path, "--probs", path, "--out-dir", tmp_path / "e")
    assert result.exit_code == 2 and "all 5 rows are ties" in result.stderr


def test_evaluate_tiny_model_on_pandalm(tiny_model_dir, tmp_path):
    """The real entry point on real labelled rows: metrics agree with the saved probabilities."""
    out = tmp_path / "eval"
    saved = tmp_path / "probs.parquet"
    result = run_cli(
        "wsdm-serve", "-q", "evaluate", PANDALM_TRAIN, "--model", tiny_model_dir, "--engine", "hf",
        "--limit", "32", "--out-dir", out, "--save-probs", saved, "--length-edges", "300,400",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert report["rows_read"] == 32 and report["ties_excluded"] == 0
    assert report["model"] == str(tiny_model_dir)
    probs = pd.read_parquet(saved)
    truth = pd.read_parquet(PANDALM_TRAIN).head(32)
    assert probs["id"].tolist() == truth["id"].tolist()
    a_won = (truth["winner"] == "model_a").to_numpy()
    p_a = probs["p_a"].to_numpy()
    tta_p_a = (p_a + probs["p_b_swapped"].to_numpy()) / 2
    assert report["metrics"]["no_tta"]["accuracy"] == pytest.approx(np.mean((p_a > 0.5) == a_won))
    assert report["metrics"]["tta"]["accuracy"] == pytest.approx(np.mean((tta_p_a > 0.5) == a_won))
    assert report["metrics"]["tta"]["log_loss"] == pytest.approx(
        -np.mean(np.log(np.where(a_won, tta_p_a, 1 - tta_p_a)))
    )
    agree = (p_a > 0.5) == (probs["p_a_swapped"].to_numpy() < 0.5)
    assert report["position_bias"]["swap_agreement"] == pytest.approx(agree.mean())
    assert report["by_language"]["no_tta"]["English"]["n"] == 32
    assert sum(v["n"] for v in report["by_length"]["tta"].values()) == 32
    assert (probs["n_tokens"] > 150).all()  # the template alone is longer than that
    for name in ("calibration.png", "accuracy_by_length.png"):
        png_size(out / name)
    assert "same winner in both orders" in result.stdout

    # The saved probabilities reproduce the report without a model.
    again = invoke("evaluate", PANDALM_TRAIN, "--probs", saved, "--limit", "32", "--out-dir", tmp_path / "again",
                   "--length-edges", "300,400", "--no-plots")  # fmt: skip
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())
    for variant in ("no_tta", "tta"):
        for name, value in report["metrics"][variant].items():
            assert second["metrics"][variant][name] == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert second["by_length"] == report["by_length"]


def test_forward_probabilities_are_predicts(tiny_model_dir, tmp_path):
    """evaluate's "no TTA" column is exactly what predict computes for the same rows."""
    from wsdm_serve.data import load_arena_rows
    from wsdm_serve.engines.settings import EngineSettings
    from wsdm_serve.evaluate import load_labelled, scored_from_model
    from wsdm_serve.judge import run_predict
    from wsdm_serve.settings import JudgeSettings

    config = JudgeSettings(model=tiny_model_dir, tta="none", engine=EngineSettings(name="hf"), progress=False)
    table = load_labelled(PANDALM_LMSYS, limit=95)
    scored = scored_from_model(table, PANDALM_LMSYS, config)
    lmsys = pd.read_csv(PANDALM_LMSYS).head(95)
    kept = lmsys[lmsys["winner_tie"] == 0]
    assert table.ties == 95 - len(kept) > 0
    assert scored.ids == kept["id"].astype(str).tolist()  # CSV ids stay text
    assert scored.labels.tolist() == kept["winner_model_b"].tolist()
    path = tmp_path / "kept.csv"
    kept.to_csv(path, index=False)
    plain = run_predict(load_arena_rows(path), config)
    np.testing.assert_allclose(scored.forward, plain.forward, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(scored.n_tokens, plain.row_tokens)
