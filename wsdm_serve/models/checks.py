"""Checks of a model folder before anything expensive happens to it.

A 15 GB download that stopped early, a config from another model, or a tokenizer without its chat
template all fail late and obscurely (minutes into loading, or never, with silently wrong
scores). These checks read only small files (JSON, the safetensors headers, the tokenizer) so they
take about a second, and each problem found is one line that names the file and what is wrong.

``check_model`` collects every problem and a list of facts for the report of `check-model` and
`download-final-model`; ``preflight`` runs the cheapest part (config, tokenizer, letters) before
`predict` and raises on the first failure.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import WsdmError, one_line
from ..prompt import ANSWER_LETTERS, JudgePrompt
from .folder import ModelFolder
from .report import ModelReport
from .weights import check_weights_against_config, find_weights

GPTQ_BITS = (2, 3, 4, 8)


# --------------------------------------------------------------------------- config


def read_config(report: ModelReport, folder: ModelFolder | None = None) -> dict | None:
    """The folder's parsed config.json; None (with the problem recorded) when it is missing or unreadable."""
    try:
        return (folder or ModelFolder(report.path)).config
    except WsdmError as exc:
        report.problem(str(exc))
        return None


def check_config(report: ModelReport, config: dict, trust_remote_code: bool) -> None:
    """Architecture and sizes, and whether transformers itself accepts the config."""
    path = report.path / "config.json"
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if not model_type:
        report.problem(f"{path}: no model_type")
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        report.problem(f"{path}: architectures must be a list of class names")
        architectures = []
    report.fact("architecture", f"{', '.join(architectures) or '?'} (model_type {model_type or '?'})")
    if architectures and not any(name.endswith("ForCausalLM") for name in architectures):
        report.problem(
            f"{path}: architectures {', '.join(architectures)} is not a causal LM; "
            "the judge reads the next-token logits of a *ForCausalLM model"
        )
    dtype = config.get("dtype") or config.get("torch_dtype")
    report.fact("dtype", dtype or "not set")
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        value = config.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            report.problem(f"{path}: {name} must be a positive integer, found {value!r}")
    if model_type:
        try:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(report.path, trust_remote_code=trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - transformers raises many types for bad configs
            report.problem(f"{path}: transformers cannot read it ({one_line(exc)})")
    if all(isinstance(config.get(k), int) for k in ("hidden_size", "num_hidden_layers", "vocab_size")):
        report.fact(
            "size",
            f"{config['num_hidden_layers']} layers, hidden {config['hidden_size']}, vocab {config['vocab_size']:,}",
        )


# --------------------------------------------------------------------------- quantization


def describe_quantization(report: ModelReport, config: dict) -> dict | None:
    """Record method, bits, group size and format of ``quantization_config``; return it if usable."""
    path = report.path / "config.json"
    quant = config.get("quantization_config")
    if quant is None:
        report.fact("quantization", "none")
        return None
    if not isinstance(quant, dict):
        report.problem(f"{path}: quantization_config must be an object, found {type(quant).__name__}")
        return None
    method = quant.get("quant_method")
    if not method:
        report.problem(f"{path}: quantization_config has no quant_method")
        return None
    method = str(method).lower()
    if method == "gptq":
        _describe_gptq(report, quant, path)
    elif method == "compressed-tensors":
        _describe_compressed_tensors(report, quant, path)
    elif method == "awq":
        bits = quant.get("bits", quant.get("w_bit"))
        group = quant.get("group_size", quant.get("q_group_size"))
        report.fact(
            "quantization", f"awq {bits}-bit, group size {group}, version {quant.get('version', '?')}"
        )
    elif method == "bitsandbytes":
        if quant.get("load_in_4bit"):
            kind = f"4-bit {quant.get('bnb_4bit_quant_type', 'fp4')}"
        elif quant.get("load_in_8bit"):
            kind = "8-bit"
        else:
            kind = "(neither 4- nor 8-bit set)"
        report.fact("quantization", f"bitsandbytes {kind}")
    else:
        details = ", ".join(f"{k} {quant[k]}" for k in ("bits", "group_size", "fmt") if k in quant)
        report.fact("quantization", f"{method}{': ' + details if details else ''}")
    return quant


def _describe_gptq(report: ModelReport, quant: dict, path: Path) -> None:
    bits = quant.get("bits")
    group = quant.get("group_size")
    # transformers/optimum write checkpoint_format, GPTQModel writes format; absent means v1.
    fmt = quant.get("checkpoint_format") or quant.get("format") or "gptq"
    version = "v2 zero points" if str(fmt).lower() == "gptq_v2" else "v1 zero points"
    report.fact(
        "quantization",
        f"gptq {bits}-bit, group size {group}, format {fmt} ({version}), "
        f"desc_act {quant.get('desc_act', '?')}, sym {quant.get('sym', '?')}",
    )
    if bits not in GPTQ_BITS:
        report.problem(f"{path}: gptq bits must be one of {', '.join(map(str, GPTQ_BITS))}, found {bits!r}")
    if not isinstance(group, int) or isinstance(group, bool) or (group != -1 and group <= 0):
        report.problem(f"{path}: gptq group_size must be -1 or a positive integer, found {group!r}")


def _describe_compressed_tensors(report: ModelReport, quant: dict, path: Path) -> None:
    fmt = quant.get("format", "?")
    groups = quant.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        report.fact("quantization", f"compressed-tensors {fmt}, no config_groups")
        report.problem(f"{path}: compressed-tensors quantization_config has no config_groups")
        return
    parts = []
    for name, group in groups.items():
        weights = group.get("weights") if isinstance(group, dict) else None
        if not isinstance(weights, dict):
            report.problem(f"{path}: compressed-tensors config_groups.{name} has no weights scheme")
            continue
        size = weights.get("group_size")
        strategy = weights.get("strategy", "?")
        grouping = f"group size {size}" if size else f"strategy {strategy}"
        parts.append(
            f"{name}: {weights.get('type', '?')}{weights.get('num_bits', '?')} weights, {grouping}, "
            f"{'symmetric' if weights.get('symmetric') else 'asymmetric'}"
        )
    report.fact("quantization", f"compressed-tensors {fmt} ({'; '.join(parts)})")


# --------------------------------------------------------------------------- tokenizer


def check_tokenizer(report: ModelReport, config: dict | None, trust_remote_code: bool):
    """Tokenizer loads, has a chat template that renders, and spells "A" and "B" as one token each."""
    from ..tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(report.path, trust_remote_code)
    except WsdmError as exc:
        report.problem(str(exc))
        return None
    report.fact("tokenizer", f"{type(tokenizer).__name__}, {len(tokenizer):,} tokens")
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        report.problem(
            f"{report.path}: the tokenizer has no chat template (chat_template.jinja or "
            "tokenizer_config.json chat_template); the judge prompt is rendered through it"
        )
    else:
        try:
            JudgePrompt(tokenizer).render("query", "response a", "response b")
            report.fact("chat template", f"{len(template):,} characters, renders the judge prompt")
        except Exception as exc:  # noqa: BLE001 - jinja errors of arbitrary templates
            report.problem(
                f"{report.path}: the chat template fails to render the judge prompt ({one_line(exc)})"
            )
    ids = []
    for letter in ANSWER_LETTERS:
        encoded = list(tokenizer(letter, add_special_tokens=False)["input_ids"])
        if len(encoded) != 1:
            report.problem(
                f"the tokenizer encodes {letter!r} as {len(encoded)} tokens {encoded}; the judge reads "
                "one next-token logit per letter"
            )
        ids.append(encoded[-1] if encoded else None)
    if ids[0] is not None and ids[0] == ids[1]:
        report.problem(f"the tokenizer maps 'A' and 'B' to the same id {ids[0]}")
    vocab = config.get("vocab_size") if config else None
    for letter, token_id in zip(ANSWER_LETTERS, ids, strict=True):
        if token_id is not None and isinstance(vocab, int) and token_id >= vocab:
            report.problem(f"token id {token_id} of {letter!r} is outside the model's vocab_size {vocab}")
    if all(i is not None for i in ids):
        report.fact("answer tokens", f"A = {ids[0]}, B = {ids[1]}")
    return tokenizer


# --------------------------------------------------------------------------- entry points


def _start(path: str | Path) -> ModelReport:
    report = ModelReport(Path(path))
    if not report.path.exists():
        report.problem(
            f"{report.path}: model folder not found (run `wsdm-serve download-final-model` or pass the folder)"
        )
    elif not report.path.is_dir():
        report.problem(f"{report.path}: is a file, expected a model folder")
    return report


def check_files(path: str | Path, *, trust_remote_code: bool = False) -> tuple[ModelReport, dict | None]:
    """Config, quantization and weights (no tokenizer); also returns the parsed config."""
    report = _start(path)
    if report.problems:
        return report, None
    config = read_config(report)
    quant = None
    if config is not None:
        check_config(report, config, trust_remote_code)
        quant = describe_quantization(report, config)
    weights = find_weights(report)
    if weights is not None and config is not None:
        check_weights_against_config(report, weights, config, quant)
    return report, config


def check_model(path: str | Path, *, trust_remote_code: bool = False) -> ModelReport:
    """Every check that needs no model load: config, quantization, weights, tokenizer."""
    report, config = check_files(path, trust_remote_code=trust_remote_code)
    if report.path.is_dir():
        check_tokenizer(report, config, trust_remote_code)
    return report


def preflight(model: ModelFolder | str | Path, trust_remote_code: bool = False):
    """The cheap checks `predict` runs before loading weights; returns the loaded tokenizer.

    Weights are not inspected here: an engine may legitimately run without them (vLLM's dummy
    load format for benchmarks), and loading reports missing files itself. A :class:`ModelFolder`
    keeps the config it parsed for the engine that runs next.
    """
    folder = ModelFolder.of(model)
    report = _start(folder.path)
    if report.problems:
        raise WsdmError(report.problems[0])
    config = read_config(report, folder)
    if config is not None:
        check_config(report, config, trust_remote_code)
    tokenizer = check_tokenizer(report, config, trust_remote_code)
    if report.problems:
        raise report.summary_error()
    return tokenizer
