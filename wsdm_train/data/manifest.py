"""What a processed folder was made from, so that a re-run can tell whether it must redo anything.

The fingerprint covers everything that changes the bytes of the outputs: the content (sha256) of
each input table, the content of each tokenizer's files, the prepare settings, the teachers' names,
the prompt contract and the layout version. Paths do not count (moving an input, or pointing at an
identical copy, changes nothing), and neither do sections of the configuration that prepare does
not read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wsdm_serve import __version__
from wsdm_serve.errors import WsdmError
from wsdm_serve.prompt import CHOICE_SUFFIX, STUDENT_SYSTEM_PROMPT, TEACHER_SYSTEM_PROMPT, user_message

from ..config import Config
from .overlap import count_dropped

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

# Files a Hugging Face tokenizer is built from (config.json: AutoTokenizer reads the model type).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "config.json",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise WsdmError(f"{path}: cannot read ({exc.strerror})") from exc
    return digest.hexdigest()


def tokenizer_files(folder: Path) -> dict[str, str]:
    """sha256 of each tokenizer file present in ``folder`` (model weights are not read)."""
    return {name: sha256_file(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}


def prompt_contract_sha256() -> str:
    """Digest of the prompt wording, so a changed prompt invalidates data made with the old one."""
    parts = [STUDENT_SYSTEM_PROMPT, TEACHER_SYSTEM_PROMPT, user_message("{q}", "{a}", "{b}"), CHOICE_SUFFIX]
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def fingerprint(config: Config, inputs: dict[str, str | None], tokenizers: dict[str, dict[str, str]]) -> str:
    """One digest of everything the outputs depend on; ``inputs`` maps role -> sha256 (None: absent)."""
    prepare = dataclasses.asdict(config.prepare)
    for name in ("train_file", "lmsys_file", "ut_file"):
        prepare.pop(name)
    payload = {
        "format": FORMAT_VERSION,
        "wsdm": __version__,
        "prompt_contract": prompt_contract_sha256(),
        "inputs": inputs,
        "prepare": prepare,
        "tokenizers": tokenizers,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a finished prepare run, or None when there is none or it is unreadable."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("complete") is True else None


def outputs_intact(folder: Path, manifest: dict[str, Any]) -> bool:
    """Every output the manifest lists still exists with the size it was written with."""
    try:
        return all((folder / item["path"]).stat().st_size == item["bytes"] for item in manifest["outputs"])
    except (OSError, KeyError, TypeError):
        return False


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("scikit-learn", "transformers", "tokenizers", "pyarrow"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def build_manifest(
    config: Config,
    source: str,
    digest: str,
    *,
    inputs: dict[str, dict[str, Any]],
    tokenizers: dict[str, dict[str, Any]],
    skipped: list[dict[str, Any]],
    units: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The manifest of a finished run; ``units`` are the records of the folds and of each model."""
    skipped = list(skipped)
    for unit in units.values():
        skipped += unit["skipped"]
    counts = Counter(
        f"{s['source']}: {s['reason']}" + ("" if s["scope"] == "all" else f" [{s['scope']}]") for s in skipped
    )
    folds = units["folds"]
    return {
        "format": FORMAT_VERSION,
        "complete": True,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": digest,
        "wsdm_version": __version__,
        "prompt_contract": {"version": __version__, "sha256": prompt_contract_sha256()},
        "libraries": library_versions(),
        "config_source": source,
        "config": config.to_dict(),
        "inputs": inputs,
        "tokenizers": tokenizers,
        "folds": {
            "n_folds": config.prepare.n_folds,
            "seed": config.prepare.fold_seed,
            "group_by": config.prepare.group_folds_by,
            "groups": folds["groups"],
            "rows_in_shared_groups": folds["rows_in_shared_groups"],
            "moved_rows": folds["moved_rows"],
            "rows_per_fold": folds["rows_per_fold"],
            "label_b_per_fold": folds["label_b_per_fold"],
        },
        "models": [key for key in units if key != "folds"],
        "outputs": [item for unit in units.values() for item in unit["outputs"]],
        "skipped": {"total": len(skipped), "counts": dict(sorted(counts.items())), "rows": skipped},
    }


def summary_line(manifest: dict[str, Any], out_dir: Path, seconds: float) -> str:
    inputs = manifest["inputs"]
    folds = manifest["folds"]
    parts = [f"{inputs['train']['rows_used']:,} train rows in {folds['n_folds']} folds"]
    if folds["group_by"] != "none":
        parts.append(
            f"{folds['groups']:,} {folds['group_by']} groups ({folds['moved_rows']:,} rows moved to their "
            "group's fold)"
        )
    for role in ("lmsys", "ut"):
        if inputs[role]["present"]:
            parts.append(f"{inputs[role]['rows_used']:,} {role} rows")
    outputs = manifest["outputs"]
    tokens = sum(item.get("tokens", 0) for item in outputs)
    models = len(manifest["models"])
    overlap = count_dropped(manifest["skipped"]["rows"])
    dropped = f" ({overlap} extra rows repeat a competition pair)" if overlap else ""
    return (
        f"prepare: {', '.join(parts)}; {models} model{'' if models == 1 else 's'}; {len(outputs)} files, "
        f"{tokens:,} tokens; {manifest['skipped']['total']} rows skipped{dropped}; {seconds:.1f} s -> {out_dir}"
    )
