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
from pathlib import Path
from typing import Any

from wsdm_serve import __version__
from wsdm_serve.errors import WsdmError
from wsdm_serve.prompt import CHOICE_SUFFIX, STUDENT_SYSTEM_PROMPT, TEACHER_SYSTEM_PROMPT, user_message

from .config import Config

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
