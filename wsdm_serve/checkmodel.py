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

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import WsdmError
from .prompt import ANSWER_LETTERS, JudgePrompt

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
MAX_HEADER_BYTES = 100 * 2**20
LAYER_PATTERN = re.compile(r"(?:^|\.)layers\.(\d+)\.")
GPTQ_BITS = (2, 3, 4, 8)
# Tensors that only describe how another tensor was quantized: not parameters of their own.
QUANT_AUX_SUFFIXES = (
    ".qzeros",
    ".scales",
    ".g_idx",
    ".weight_scale",
    ".weight_zero_point",
    ".weight_g_idx",
    ".weight_shape",
    ".input_scale",
)
PACKED_SUFFIXES = (".qweight", ".weight_packed")


@dataclass
class ModelReport:
    """What was checked: facts to print, problems (one line each) that make the folder unusable."""

    path: Path
    facts: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fact(self, key: str, value: object) -> None:
        self.facts.append((key, str(value)))

    def problem(self, message: str) -> None:
        self.problems.append(" ".join(str(message).split()))

    def summary_error(self) -> WsdmError:
        """One line for a caller that must stop: the first problem and how many more there are."""
        first = self.problems[0]
        more = len(self.problems) - 1
        hint = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        return WsdmError(f"{first}{hint}; run `wsdm-serve check-model {self.path}` for the full report")

    def format(self) -> str:
        width = max((len(key) for key, _ in self.facts), default=0)
        lines = [f"model: {self.path}"]
        lines += [f"  {key.ljust(width)}  {value}" for key, value in self.facts]
        if self.problems:
            lines.append(f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}:")
            lines += [f"  - {problem}" for problem in self.problems]
        else:
            lines.append("ok: no problems found")
        return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- config


def read_config(report: ModelReport) -> dict | None:
    """Parse config.json; None (with a problem recorded) when it is missing or unreadable."""
    path = report.path / "config.json"
    if not path.is_file():
        report.problem(f"{path}: missing; not a model folder (expected config.json, weights, tokenizer)")
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        report.problem(f"{path}: not UTF-8 text")
        return None
    except json.JSONDecodeError as exc:
        report.problem(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})")
        return None
    if not isinstance(config, dict):
        report.problem(f"{path}: expected a JSON object, found {type(config).__name__}")
        return None
    return config


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
            report.problem(f"{path}: transformers cannot read it ({_first_line(exc)})")
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


# --------------------------------------------------------------------------- weights


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file; raises ValueError saying why it is unusable.

    The header records where every tensor's bytes end, so a file cut short by an interrupted copy
    or download is detected here without reading the data.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"only {size} bytes, not a safetensors file")
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES or length + 8 > size:
            raise ValueError("header length is implausible; truncated or not a safetensors file")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise ValueError(f"header entry {name!r} has no data_offsets") from None
    expected = 8 + length + end
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ValueError(f"{state}: {size:,} bytes on disk, the header describes {expected:,}")
    return header


@dataclass
class WeightsSummary:
    tensors: dict[str, dict]
    files: list[Path]
    total_bytes: int


def find_weights(report: ModelReport) -> WeightsSummary | None:
    """Locate the weight files and check that index, shards and headers agree."""
    folder = report.path
    index_path = folder / SAFETENSORS_INDEX
    if index_path.is_file():
        return _sharded_safetensors(report, index_path)
    single = folder / "model.safetensors"
    if single.is_file():
        return _safetensors_files(report, [single], expected=None)
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return _safetensors_files(report, others, expected=None)
    bin_index = folder / BIN_INDEX
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bin_index.is_file() or bins:
        return _pytorch_bins(report, bin_index, bins)
    report.problem(
        f"{folder}: no weights (model.safetensors, a {SAFETENSORS_INDEX} with its shards, or pytorch_model.bin)"
    )
    return None


def _read_index(report: ModelReport, index_path: Path) -> dict[str, str] | None:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.problem(f"{index_path}: not valid JSON ({exc})")
        return None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        report.problem(f"{index_path}: no weight_map")
        return None
    return weight_map


def _missing_files(report: ModelReport, index_path: Path, names: list[str]) -> list[str]:
    missing = [name for name in names if not (report.path / name).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        report.problem(
            f"{index_path.name} lists {len(names)} shard(s); {len(missing)} missing from {report.path}: {shown}"
        )
    return missing


def _sharded_safetensors(report: ModelReport, index_path: Path) -> WeightsSummary | None:
    weight_map = _read_index(report, index_path)
    if weight_map is None:
        return None
    shards = sorted(set(weight_map.values()))
    missing = _missing_files(report, index_path, shards)
    present = [report.path / name for name in shards if name not in missing]
    summary = _safetensors_files(report, present, expected=weight_map)
    if summary is not None:
        summary.files = [report.path / name for name in shards]
    return summary


def _safetensors_files(
    report: ModelReport, files: list[Path], expected: dict[str, str] | None
) -> WeightsSummary | None:
    tensors: dict[str, dict] = {}
    total = 0
    for path in files:
        try:
            header = read_safetensors_header(path)
        except (OSError, ValueError) as exc:
            report.problem(f"{path}: {exc}")
            continue
        total += path.stat().st_size
        if expected is not None:
            claimed = [name for name, shard in expected.items() if shard == path.name]
            absent = [name for name in claimed if name not in header]
            if absent:
                report.problem(
                    f"{path.name}: the index places {len(absent)} tensor(s) in this shard that it does not "
                    f"hold (e.g. {absent[0]})"
                )
        tensors.update(header)
    if not tensors:
        return None
    report.fact(
        "weights", f"{len(files)} safetensors file(s), {total / 2**30:.2f} GiB, {len(tensors):,} tensors"
    )
    return WeightsSummary(tensors=tensors, files=list(files), total_bytes=total)


def _pytorch_bins(report: ModelReport, bin_index: Path, bins: list[Path]) -> WeightsSummary | None:
    if bin_index.is_file():
        weight_map = _read_index(report, bin_index)
        if weight_map is None:
            return None
        shards = sorted(set(weight_map.values()))
        _missing_files(report, bin_index, shards)
        bins = [report.path / name for name in shards]
    total = sum(path.stat().st_size for path in bins if path.is_file())
    report.fact(
        "weights", f"{len(bins)} pytorch .bin file(s), {total / 2**30:.2f} GiB (contents not inspected)"
    )
    return None


def check_weights_against_config(
    report: ModelReport, weights: WeightsSummary, config: dict, quant: dict | None
) -> None:
    """Shapes and names in the weights must match what the config promises."""
    tensors = weights.tensors
    hidden = config.get("hidden_size")
    vocab = config.get("vocab_size")
    layers = config.get("num_hidden_layers")
    embed = next((n for n in tensors if n.endswith("embed_tokens.weight")), None)
    if embed is not None and isinstance(hidden, int) and isinstance(vocab, int):
        shape = list(tensors[embed].get("shape", []))
        if shape != [vocab, hidden]:
            report.problem(
                f"weights and config.json disagree: {embed} has shape {shape}, config says "
                f"vocab_size {vocab} x hidden_size {hidden}"
            )
    indices = {int(m.group(1)) for name in tensors if (m := LAYER_PATTERN.search(name))}
    if indices and isinstance(layers, int) and max(indices) + 1 != layers:
        report.problem(
            f"weights and config.json disagree: the weights hold {max(indices) + 1} layers, "
            f"config says num_hidden_layers {layers}"
        )
    tied = config.get("tie_word_embeddings", True)
    if not tied and not any(n.endswith("lm_head.weight") or n.endswith("lm_head.qweight") for n in tensors):
        report.problem(
            "weights have no lm_head.weight although config.json says tie_word_embeddings false: "
            "the output head would be random"
        )
    packed = [n for n in tensors if n.endswith(PACKED_SUFFIXES)]
    method = str(quant.get("quant_method", "")).lower() if quant else ""
    if packed and not quant:
        report.problem(
            f"weights hold packed quantized tensors (e.g. {packed[0]}) but config.json has no quantization_config"
        )
    if method == "gptq" and not any(n.endswith(".qweight") for n in tensors):
        report.problem("config.json says gptq but the weights hold no .qweight tensors")
    if method == "compressed-tensors" and quant.get("format") == "pack-quantized" and not packed:
        report.problem(
            "config.json says compressed-tensors pack-quantized but no .weight_packed tensors exist"
        )
    dtypes = Counter(str(entry.get("dtype")) for entry in tensors.values())
    report.fact("tensor dtypes", ", ".join(f"{d} x{c}" for d, c in dtypes.most_common()))
    count = estimate_parameters(tensors, quant)
    scaled = f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"
    report.fact("parameters", f"~{scaled} (from the weight headers)")


def estimate_parameters(tensors: dict[str, dict], quant: dict | None) -> int:
    """Parameter count; packed int32 tensors hold 32/bits values each, quantization metadata none."""
    bits = _quant_bits(quant)
    total = 0
    for name, entry in tensors.items():
        if name.endswith(QUANT_AUX_SUFFIXES):
            continue
        count = math.prod(int(d) for d in entry.get("shape", []))
        if name.endswith(PACKED_SUFFIXES) and bits:
            count = count * 32 // bits
        total += count
    return total


def _quant_bits(quant: dict | None) -> int | None:
    if not quant:
        return None
    if isinstance(quant.get("bits"), int):
        return quant["bits"]
    for group in (quant.get("config_groups") or {}).values():
        bits = (group.get("weights") or {}).get("num_bits") if isinstance(group, dict) else None
        if isinstance(bits, int):
            return bits
    return None


# --------------------------------------------------------------------------- tokenizer


def check_tokenizer(report: ModelReport, config: dict | None, trust_remote_code: bool):
    """Tokenizer loads, has a chat template that renders, and spells "A" and "B" as one token each."""
    from .tokenizer import load_tokenizer

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
                f"{report.path}: the chat template fails to render the judge prompt ({_first_line(exc)})"
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


def preflight(path: str | Path, trust_remote_code: bool = False):
    """The cheap checks `predict` runs before loading weights; returns the loaded tokenizer.

    Weights are not inspected here: an engine may legitimately run without them (vLLM's dummy
    load format for benchmarks), and loading reports missing files itself.
    """
    report = _start(path)
    if report.problems:
        raise WsdmError(report.problems[0])
    config = read_config(report)
    if config is not None:
        check_config(report, config, trust_remote_code)
    tokenizer = check_tokenizer(report, config, trust_remote_code)
    if report.problems:
        raise report.summary_error()
    return tokenizer


SMOKE_ROW = (
    "What is the boiling point of water at sea level in degrees Celsius?",
    "Water boils at 100 degrees Celsius at sea level.",
    "Water boils at 50 degrees Celsius at sea level.",
)


def smoke_test(report: ModelReport, engine, trust_remote_code: bool = False) -> None:
    """Score one fixed row, both orders, on the chosen engine: the model loads and gives probabilities.

    ``engine`` is an :class:`~wsdm_serve.engines.select.EngineOptions`. Load failures become a
    problem line rather than an exception, so the report still prints.
    """
    import time

    import numpy as np

    from .data import ArenaRows
    from .predict import PredictConfig, run_predict

    rows = ArenaRows(
        ids=["smoke"],
        prompts=[SMOKE_ROW[0]],
        responses_a=[SMOKE_ROW[1]],
        responses_b=[SMOKE_ROW[2]],
        null_text_cells=0,
    )
    config = PredictConfig(
        model=report.path, tta="all", engine=engine, trust_remote_code=trust_remote_code, progress=False
    )
    started = time.time()
    try:
        result = run_predict(rows, config, started)
    except WsdmError as exc:
        report.problem(f"smoke test: {exc}")
        return
    forward = result.forward[0]
    swapped = result.swapped[0] if len(result.swapped) else np.array([np.nan, np.nan])
    if not (np.isfinite(forward).all() and np.isfinite(swapped).all()):
        report.problem(
            f"smoke test on the {result.engine} engine gave non-finite probabilities {forward}, {swapped}"
        )
        return
    report.fact(
        "smoke test",
        f"{result.engine} engine, {time.time() - started:.1f} s: P(A) = {forward[0]:.4f} forward, "
        f"{swapped[0]:.4f} with the responses swapped",
    )
