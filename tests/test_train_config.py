"""Training configuration: presets, YAML files with `base`, and `--set` overrides."""

from __future__ import annotations

import dataclasses

import pytest

from wsdm_serve.errors import WsdmError
from wsdm_train.config import Budget, Config, load_config


def test_reference_preset_states_the_defaults():
    """The YAML preset and the dataclass defaults are the same recipe, so neither can drift alone."""
    assert load_config("reference") == Config()


def test_reference_values():
    config = load_config("reference")
    prep = config.prepare
    assert (prep.n_folds, prep.fold_seed) == (5, 2025)
    assert prep.student_train == Budget(token_budget=2048, response_word_cap=1400)
    assert prep.student_dev == Budget(token_budget=10000, response_word_cap=4200)
    assert prep.student_pretrain == Budget(token_budget=1024, response_word_cap=1400)
    assert prep.teacher_train == prep.teacher_dev == Budget(token_budget=2048, response_word_cap=1400)
    assert prep.teacher_pretrain == Budget(token_budget=1024, response_word_cap=700)
    assert [t.name for t in config.teachers] == ["athene", "llama3n", "qwen2"]
    truncation = prep.truncation(prep.student_dev)
    assert (truncation.token_budget, truncation.response_word_cap, truncation.query_token_cap) == (
        10000,
        4200,
        256,
    )


def test_tiny_preset_uses_the_shipped_assets():
    config = load_config("tiny")
    assert config.paths.data_dir == "tests/assets"
    assert config.prepare.ut_file == "pandalm_tiny_ut.csv"
    assert config.student.tokenizer_dir == "tests/assets/qwen2.5-tokenizer"
    sizes = {t.name: t.build_tiny.hidden_size for t in config.teachers}
    assert len(sizes) == 2 and len(set(sizes.values())) == 2, "two teachers of different sizes"
    # Budgets are inherited from the reference preset through `base: reference`.
    assert config.prepare.student_dev.token_budget == 10000


def test_overrides_by_path_index_and_name():
    config = load_config(
        "tiny",
        [
            "prepare.student_train.token_budget=99",
            "teachers.tiny_large.model=/models/large",
            "teachers.0.model=/models/small",
            "teachers.0.tokenizer=null",
            "paths.data_dir=2025",
            "prepare.lmsys_file=null",
        ],
    )
    assert config.prepare.student_train.token_budget == 99
    assert config.teachers[1].model == "/models/large"
    assert config.teachers[0].tokenizer is None
    assert config.teachers[0].tokenizer_dir == config.teachers[0].model
    assert config.paths.data_dir == "2025", "a text field keeps the text as typed"
    assert config.prepare.lmsys_file is None


def test_override_replaces_a_whole_list():
    assert load_config("tiny", ["teachers=[]"]).teachers == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prepare.nfolds=3", "unknown field prepare.nfolds"),
        ("prepare.n_folds=three", "prepare.n_folds: expected an integer"),
        ("prepare.n_folds=1", "need at least 2 folds"),
        ("teachers.nobody.model=x", "no item named 'nobody'"),
        ("teachers.7.model=x", "index out of range"),
        ("prepare", "expected section.field=value"),
        ("prepare.student_dev.token_budget=0", "prepare.student_dev.token_budget: must be >= 1, got 0"),
        ("teachers.1.name=tiny_small", "duplicate name 'tiny_small'"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(WsdmError, match=message):
        load_config("tiny", [override])


def test_user_file_extends_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "base: tiny\nprepare:\n  n_folds: 3\n  student_dev: {token_budget: 512, response_word_cap: 100}\n"
    )
    config = load_config(path)
    assert config.prepare.n_folds == 3
    assert config.prepare.student_dev == Budget(token_budget=512, response_word_cap=100)
    assert config.paths.data_dir == "tests/assets"
    assert dataclasses.asdict(config)["prepare"]["fold_seed"] == 2025


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prepare: [1, 2]\n", "prepare: expected a mapping of fields"),
        ("prepare:\n  bogus: 1\n", "unknown field 'bogus'"),
        ("training: {}\n", "unknown field 'training'"),
        ("prepare: {n_folds: 3\n", "not valid YAML"),
        ("- 1\n", "expected a mapping of sections"),
        ("teachers:\n  - model: x\n", r"teachers\[0\]: missing field 'name'"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(WsdmError, match=message):
        load_config(path)


def test_missing_config_and_base_cycles(tmp_path):
    with pytest.raises(WsdmError, match="no such preset or file"):
        load_config(tmp_path / "absent.yaml")
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("base: b.yaml\n")
    second.write_text("base: a.yaml\n")
    with pytest.raises(WsdmError, match="refers back to itself"):
        load_config(first)


def test_a_bad_value_names_where_it_came_from_and_the_field(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: tiny\nlora: {r: many}\n")
    with pytest.raises(WsdmError) as error:
        load_config(path)
    assert str(error.value) == f"config {path}: lora.r: expected an integer, got 'many'"
    with pytest.raises(WsdmError) as error:
        load_config("tiny", ["teachers.tiny_large.build_tiny=null"])
    assert str(error.value) == (
        "--set teachers.tiny_large.build_tiny=null: teachers.tiny_large.model: "
        "set the model folder (or build_tiny for a random tiny model)"
    )


def test_merge_and_quantize_options_are_made_from_the_fields_they_set():
    import typing

    from click.testing import CliRunner

    from wsdm_train.cli import main
    from wsdm_train.commands.export import MERGE_FIELDS, QUANTIZE_FIELDS
    from wsdm_train.commands.field_options import field_info

    for name, fields in (("merge", MERGE_FIELDS), ("quantize", QUANTIZE_FIELDS)):
        options = {p.opts[0]: p for p in main.commands[name].params}
        for spec, key in fields.items():
            option = options[spec.split()[0]]
            assert option.help.endswith(f"Sets {key}.") and len(option.help) > len(f"Sets {key}.") + 10
            choices = getattr(option.type, "choices", None)
            literal = field_info(key).annotation
            if typing.get_origin(literal) is typing.Literal:
                assert list(choices) == [str(value) for value in typing.get_args(literal)]
    result = CliRunner().invoke(main, ["quantize", "--group-size", "50", "--model", "m"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --group-size 50: quantize.group_size: use -1 (per channel) or a multiple of 32, got 50"
    )


def test_help_does_not_load_the_configuration_library():
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from wsdm_train.cli import main; "
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0; print('pydantic' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
