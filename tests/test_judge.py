"""The Judge session: one model check and tokenizer load, one engine, many tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.conftest import ARENA_SAMPLE
from wsdm_serve.data import ArenaRows, load_arena_rows
from wsdm_serve.engines.base import ScoringEngine
from wsdm_serve.engines.hf import HFEngine
from wsdm_serve.engines.settings import EngineSettings
from wsdm_serve.judge import Judge, run_predict
from wsdm_serve.predict import write_predictions
from wsdm_serve.prompt import letter_token_ids
from wsdm_serve.settings import JudgeSettings
from wsdm_serve.truncation import TruncationConfig


def _config(model_dir, tta="none") -> JudgeSettings:
    return JudgeSettings(
        model=model_dir, tta=tta, truncation=TruncationConfig(token_budget=400), progress=False
    )


def _head(rows: ArenaRows, n: int) -> ArenaRows:
    return ArenaRows(
        ids=rows.ids[:n],
        prompts=rows.prompts[:n],
        responses_a=rows.responses_a[:n],
        responses_b=rows.responses_b[:n],
        null_text_cells=0,
    )


def test_judge_starts_one_engine_for_several_tables_and_closes_it(tiny_model_dir):
    rows = load_arena_rows(ARENA_SAMPLE)
    with Judge(_config(tiny_model_dir, tta="all")) as judge:
        assert judge.engine is None  # nothing loaded before there is a table to size it for
        first = judge.predict(rows)
        engine = judge.engine
        assert engine is not None and engine.model is not None
        second = judge.predict(_head(rows, 8))
        assert judge.engine is engine
    assert judge.engine is None and engine.model is None
    assert len(first.ids) == len(rows) and second.ids == rows.ids[:8]
    np.testing.assert_allclose(second.probs, first.probs[:8], atol=1e-5)
    np.testing.assert_allclose(
        first.probs, run_predict(rows, _config(tiny_model_dir, tta="all")).probs, atol=1e-6
    )


def test_a_judge_leaves_an_engine_it_was_given_open(tiny_model_dir, tokenizer):
    """The seam tools/bench.py uses: passes timed without engine start-up, engine reused."""
    rows = load_arena_rows(ARENA_SAMPLE)
    config = _config(tiny_model_dir)
    with HFEngine(
        tiny_model_dir, letter_token_ids(tokenizer), EngineSettings(name="hf", device="cpu")
    ) as engine:
        with Judge(config, engine) as judge:
            first = judge.predict(rows)
        assert engine.model is not None
        second = run_predict(rows, config, engine=engine)
        assert engine.model is not None
    built = run_predict(rows, config)
    np.testing.assert_array_equal(first.probs, second.probs)
    np.testing.assert_allclose(first.probs, built.probs, atol=1e-6)


class ChunkByChunkEngine(ScoringEngine):
    """A real streaming engine on a CPU: scores each chunk the moment it arrives (as the vllm
    engine queues it), with the transformers engine underneath."""

    def __init__(self, inner: HFEngine) -> None:
        self.inner = inner
        self.calls: list[tuple[bool, list[int]]] = []  # (chunks still being built?, chunk sizes)

    def score(self, sequences, progress=None):
        return self.inner.score(sequences, progress)

    def score_stream(self, chunks, progress=None):
        lazy = not isinstance(chunks, list | tuple)
        sizes, parts = [], []
        for chunk in chunks:
            sizes.append(len(chunk))
            parts.append(self.inner.score(chunk, progress))
        self.calls.append((lazy, sizes))
        return np.concatenate(parts)


def test_a_running_engine_gets_prompts_chunk_by_chunk_with_the_same_result(tiny_model_dir, tokenizer):
    """With its engine up, a judge streams the table in growing chunks; forward scores, TTA and
    token counts equal those of the whole-table path."""
    rows = load_arena_rows(ARENA_SAMPLE)
    config = _config(tiny_model_dir, tta="all")
    with HFEngine(
        tiny_model_dir, letter_token_ids(tokenizer), EngineSettings(name="hf", device="cpu")
    ) as inner:
        engine = ChunkByChunkEngine(inner)
        with Judge(config, engine) as judge:
            streamed = judge.predict(rows)
        whole = run_predict(rows, config, engine=inner)
    assert engine.calls == [(True, [16, 16]), (False, [len(rows)])]  # forward streamed, then TTA
    np.testing.assert_allclose(streamed.forward, whole.forward, atol=1e-6)
    np.testing.assert_allclose(streamed.probs, whole.probs, atol=1e-6)
    assert streamed.n_tokens == whole.n_tokens and (streamed.row_tokens == whole.row_tokens).all()


def test_write_predictions_writes_winners_and_probabilities(tiny_model_dir, tmp_path):
    rows = load_arena_rows(ARENA_SAMPLE)
    result = run_predict(_head(rows, 6), _config(tiny_model_dir))
    out, probs = tmp_path / "sub" / "submission.csv", tmp_path / "probs.parquet"
    write_predictions(result, out, probs)
    submission = pd.read_csv(out)
    table = pd.read_parquet(probs)
    assert list(submission.columns) == ["id", "winner"]
    assert submission["id"].astype(str).tolist() == [str(i) for i in rows.ids[:6]]
    expected = np.where(table["p_a"] > table["p_b"], "model_a", "model_b")
    assert submission["winner"].tolist() == expected.tolist()
    np.testing.assert_allclose(table["p_a"] + table["p_b"], 1.0, atol=1e-6)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["probs.parquet", "sub", "submission.csv"]
