"""Reference text normalisation: list literals joined, everything else loses its brackets, nothing runs."""

from __future__ import annotations

import numpy as np

from wsdm_serve.textnorm import list_or_text, normalize_prompt, normalize_response


def test_list_literal_is_joined_with_newlines():
    assert list_or_text('["first turn", "second turn"]') == "first turn\nsecond turn"
    assert list_or_text("['a\\nb']") == "a\nb"


def test_plain_text_loses_every_bracket_and_outer_whitespace():
    assert list_or_text("  see [link](x) and a[i] ]  ") == "see link(x) and ai"


def test_string_literal_explodes_into_characters_like_the_reference():
    assert list_or_text('"abc"') == "a\nb\nc"


def test_non_string_items_fall_back_to_bracket_stripping():
    assert list_or_text("[1, 2]") == "1, 2"
    assert list_or_text("[None]") == "None"
    assert list_or_text("42") == "42"


def test_dict_literal_contributes_its_keys():
    assert list_or_text('{"k1": 1, "k2": 2}') == "k1\nk2"


def test_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    assert list_or_text(payload) == payload.replace("[", "").replace("]", "").strip()
    assert not marker.exists()
    assert list_or_text('["a"] + ["b"]') == '"a" + "b"'  # eval would concatenate; we never evaluate


def test_null_bytes_and_empty_text():
    assert list_or_text("") == ""
    assert list_or_text("a\x00[b]") == "a\x00b"


def test_mode_none_keeps_text_and_lists_are_joined():
    assert normalize_response("[kept]", "none") == "[kept]"
    assert normalize_response(np.array(["x", "y"], dtype=object), "reference") == "x\ny"
    assert normalize_response(["x", "y"], "none") == "x\ny"


def test_prompt_is_used_raw():
    assert normalize_prompt('["Hello"]') == '["Hello"]'
