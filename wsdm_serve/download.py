"""Fetch the released judge (or any model folder), verify it, and install it atomically.

Every source ends in the same tail: find the model folder inside what was fetched, stage it in a
hidden folder next to the destination, run the model checks on the staged copy, and only then
rename it into place. A failed, interrupted or rejected download therefore never leaves a
half-written ``final_model``, and an existing one is replaced only by a copy that passed.

Sources: a Kaggle model handle (through ``kagglehub``, whose cache resumes interrupted
downloads), a Hugging Face repo id (through ``huggingface_hub``), a local folder, or a local
``.zip`` / ``.tar.gz`` / ``.tgz`` / ``.tar`` archive. Network failures and missing credentials
become one line that says what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .archives import bytes_bar, extract_archive, require_space
from .errors import WsdmError
from .models.checks import check_model
from .models.report import ModelReport
from .outputs import replace_directory

KAGGLE_HANDLE = "daihengwei/wsdm-qwen2.5/transformers/711gptq8b128/1"
DEFAULT_SOURCE = f"kaggle:{KAGGLE_HANDLE}"
KAGGLE_MODELS_URL = "https://www.kaggle.com/models/"
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
PROBE_TIMEOUT_S = 10.0
CREDENTIALS_HINT = "set KAGGLE_USERNAME and KAGGLE_KEY (or put kaggle.json in ~/.kaggle/)"
MANUAL_HINT = "or download the model by hand (folder or archive) and pass --source PATH"


def kaggle_manual_hint(handle: str) -> str:
    return (
        f"or download it by hand from {KAGGLE_MODELS_URL}{handle} and pass --source PATH (folder or archive)"
    )


class ModelRejected(WsdmError):
    """The fetched model failed its checks; ``report`` lists every problem."""

    def __init__(self, report: ModelReport, source: str) -> None:
        self.report = report
        count = len(report.problems)
        super().__init__(
            f"{source}: the fetched model failed {count} check{'s' if count > 1 else ''} "
            f"(first: {report.problems[0]}); nothing was installed"
        )


@dataclass(frozen=True)
class Source:
    kind: str  # "kaggle" | "hf" | "folder" | "archive"
    ref: str
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "kaggle":
            return f"kaggle:{self.ref}"
        if self.kind == "hf":
            return f"hf:{self.ref}" + (f"@{self.revision}" if self.revision else "")
        return self.ref


# --------------------------------------------------------------------------- source parsing


def _kaggle_handle(text: str, original: str) -> Source:
    parts = [p for p in text.strip("/").split("/") if p]
    if len(parts) not in (4, 5) or (len(parts) == 5 and not parts[4].isdigit()):
        raise WsdmError(
            f"{original}: a Kaggle model handle is owner/model/framework/variation[/version], "
            f"e.g. {KAGGLE_HANDLE}"
        )
    return Source("kaggle", "/".join(parts))


def _hf_repo(text: str, original: str) -> Source:
    repo, _, revision = text.partition("@")
    parts = repo.strip("/").split("/")
    if len(parts) != 2 or not all(re.fullmatch(r"[\w.\-]+", p) for p in parts):
        raise WsdmError(f"{original}: a Hugging Face repo id is owner/name[@revision]")
    return Source("hf", "/".join(parts), revision or None)


def parse_source(text: str) -> Source:
    """Decide what ``--source`` names; an existing local path always wins over a repo id."""
    text = text.strip()
    if text.startswith("kaggle:"):
        return _kaggle_handle(text[len("kaggle:") :], text)
    if text.startswith("hf:"):
        return _hf_repo(text[len("hf:") :], text)
    if text.startswith(("http://", "https://")):
        url = urlparse(text)
        host = url.netloc.lower().removeprefix("www.")
        path = url.path.strip("/")
        if host == "kaggle.com" and path.startswith("models/"):
            # Long form: models/o/m/frameworks/f/variations/v/versions/n.
            long = re.fullmatch(
                r"models/([^/]+)/([^/]+)/frameworks/([^/]+)/variations/([^/]+)(?:/versions/(\d+))?", path
            )
            parts = [g for g in long.groups() if g] if long else path.split("/")[1:]
            return _kaggle_handle("/".join(parts), text)
        if host == "huggingface.co":
            parts = path.split("/")
            revision = parts[3] if len(parts) >= 4 and parts[2] == "tree" else None
            return _hf_repo("/".join(parts[:2]) + (f"@{revision}" if revision else ""), text)
        raise WsdmError(f"{text}: unsupported URL; give a kaggle.com/models or huggingface.co URL")
    local = Path(text).expanduser()
    if local.is_dir():
        return Source("folder", str(local))
    if local.is_file():
        if text.lower().endswith(ARCHIVE_SUFFIXES):
            return Source("archive", str(local))
        raise WsdmError(f"{text}: not a folder or a {', '.join(ARCHIVE_SUFFIXES)} archive")
    looks_local = text.startswith((".", "/", "~")) or text.lower().endswith(ARCHIVE_SUFFIXES) or "\\" in text
    parts = text.split("/")
    if not looks_local and len(parts) in (4, 5):
        return _kaggle_handle(text, text)
    if not looks_local and len(parts) == 2:
        return _hf_repo(text, text)
    raise WsdmError(
        f"{text}: no such file or folder, and not a Kaggle handle (owner/model/framework/variation[/version]) "
        "or a Hugging Face repo id (owner/name)"
    )


# --------------------------------------------------------------------------- network sources


def _endpoint_reachable(url: str) -> str | None:
    """None if a TCP connection to the API host opens, else the reason.

    The Kaggle client sets no timeout of its own, so on a network that drops packets it would
    hang for minutes; this probe answers within ``PROBE_TIMEOUT_S``. Behind a proxy the host
    is not reached directly, so the probe is skipped and the client's own error counts.
    """
    import urllib.request

    parsed = urlparse(url)
    host = parsed.hostname or ""
    proxies = urllib.request.getproxies()
    if (proxies.get(parsed.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{host}:{port} unreachable: {exc.strerror or exc}"


def _kaggle_endpoint() -> str | None:
    try:
        from kagglesdk.kaggle_env import get_endpoint, get_env
    except ImportError:  # older kagglehub without kagglesdk: no probe
        return None
    try:
        return get_endpoint(get_env())
    except Exception:  # noqa: BLE001 - an unknown KAGGLE_API_ENVIRONMENT is kagglehub's to report
        return None


def fetch_kaggle(handle: str) -> Path:
    """Download through kagglehub's cache (resumable; instant when already complete)."""
    try:
        import kagglehub
    except ImportError:
        raise WsdmError(f"kagglehub is not installed (pip install kagglehub), {MANUAL_HINT}") from None
    endpoint = _kaggle_endpoint()
    if endpoint:
        reason = _endpoint_reachable(endpoint)
        if reason:
            raise WsdmError(
                f"cannot download kaggle:{handle}: no network ({reason}); connect to the internet, "
                f"{kaggle_manual_hint(handle)}"
            )
    try:
        return Path(kagglehub.model_download(handle))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - translated below into one actionable line
        raise kaggle_error(exc, handle) from exc


def kaggle_error(exc: BaseException, handle: str) -> WsdmError:
    """One line for a kagglehub failure, saying what the user can do about it."""
    import requests

    prefix = f"cannot download kaggle:{handle}"
    url = f"{KAGGLE_MODELS_URL}{handle}"
    manual = kaggle_manual_hint(handle)
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    status = getattr(getattr(exc, "response", None), "status_code", None)
    name = type(exc).__name__
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return WsdmError(f"{prefix}: no network ({name}); connect to the internet, {manual}")
    if status in (401, 403) or name in ("UnauthenticatedError", "CredentialError"):
        refused = f"HTTP {status}" if status else "not signed in"
        return WsdmError(f"{prefix}: Kaggle refused access ({refused}); {CREDENTIALS_HINT}, {manual}")
    if status == 404 or name == "NotFoundError":
        return WsdmError(f"{prefix}: not found on Kaggle (check the handle at {url}), or pass --source PATH")
    if name == "DataCorruptionError":
        return WsdmError(f"{prefix}: a file arrived corrupted (checksum mismatch); run the command again")
    if isinstance(exc, ValueError) and "credentials" in reason.lower():
        return WsdmError(f"{prefix}: {reason}; fix or remove that file, or {CREDENTIALS_HINT} instead")
    if isinstance(exc, OSError) and exc.strerror:
        return WsdmError(
            f"{prefix}: {exc.strerror} ({exc.filename or 'kagglehub cache'}); free space or set KAGGLEHUB_CACHE"
        )
    return WsdmError(f"{prefix}: {name}: {reason}; {manual}")


def fetch_hf(repo_id: str, revision: str | None) -> Path:
    """Download through the Hugging Face cache (resumable, shared with transformers)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - translated below into one actionable line
        raise hf_error(exc, repo_id) from exc


def hf_error(exc: BaseException, repo_id: str) -> WsdmError:
    from huggingface_hub import errors

    prefix = f"cannot download hf:{repo_id}"
    token_hint = "set HF_TOKEN (or run `hf auth login`)"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    if isinstance(exc, errors.GatedRepoError):
        return WsdmError(f"{prefix}: the repo is gated; accept its terms on huggingface.co and {token_hint}")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return WsdmError(f"{prefix}: repo not found or private; check the id or {token_hint}, {MANUAL_HINT}")
    if isinstance(exc, errors.RevisionNotFoundError):
        return WsdmError(f"{prefix}: that revision does not exist")
    if isinstance(exc, errors.LocalEntryNotFoundError):
        return WsdmError(
            f"{prefix}: cannot reach the Hugging Face Hub and no complete copy is cached (no network?); "
            f"connect to the internet, {MANUAL_HINT}"
        )
    if status in (401, 403):
        return WsdmError(f"{prefix}: access refused (HTTP {status}); {token_hint}, {MANUAL_HINT}")
    if isinstance(exc, errors.HFValidationError):
        return WsdmError(f"{prefix}: not a valid repo id ({reason})")
    return WsdmError(f"{prefix}: {type(exc).__name__}: {reason}; {MANUAL_HINT}")


# --------------------------------------------------------------------------- the common tail


def _visible(path: Path, root: Path) -> bool:
    """Hidden entries (kagglehub's .complete markers, .cache, .git) are not part of the model."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def locate_model_dir(root: Path, source: str) -> Path:
    """The folder holding config.json: ``root`` itself or a single folder up to two levels down."""
    if (root / "config.json").is_file():
        return root
    found = sorted(
        p.parent
        for p in list(root.glob("*/config.json")) + list(root.glob("*/*/config.json"))
        if _visible(p, root)
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise WsdmError(f"{source}: no config.json inside; not a model folder or archive of one")
    shown = ", ".join(str(p.relative_to(root)) for p in found[:4])
    raise WsdmError(
        f"{source}: {len(found)} model folders inside ({shown}); pass the one you want as --source"
    )


def stage_tree(src: Path, dst: Path, *, link: bool, progress: bool = True) -> Path:
    """Copy the visible files of ``src`` into ``dst``; hard-link instead where ``link`` and possible.

    Hard links make staging from a download cache free of extra disk space; files are never
    modified in place, so sharing them with the cache is safe.
    """
    files = [p for p in sorted(src.rglob("*")) if _visible(p, src) and p.resolve().is_file()]
    dst.mkdir(parents=True)
    same_device = dst.stat().st_dev
    copy_bytes = sum(
        p.resolve().stat().st_size for p in files if not link or p.resolve().stat().st_dev != same_device
    )
    require_space(dst, copy_bytes, f"copying {src}")
    total = sum(p.resolve().stat().st_size for p in files)
    with bytes_bar(total, f"stage {src.name}", progress) as bar:
        for path in files:
            real = path.resolve()
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if link:
                try:
                    os.link(real, target)
                    bar.update(real.stat().st_size)
                    continue
                except OSError:
                    pass  # another filesystem, or links not allowed: copy
            shutil.copyfile(real, target)
            bar.update(real.stat().st_size)
    return dst


def install(new: Path, dest: Path) -> None:
    """Rename the verified ``new`` folder to ``dest``; an old ``dest`` is moved aside, then deleted."""
    replace_directory(new, dest)


def check_destination(dest: Path, force: bool) -> None:
    """Refuse early (before any download) what would fail or destroy something at the end."""
    if dest.exists() and not dest.is_dir():
        raise WsdmError(f"{dest}: exists and is a file; choose another --dest")
    if dest.exists() and not force:
        raise WsdmError(
            f"{dest}: already exists; pass --force to replace it (the old folder is kept until the new one passes its checks)"
        )
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WsdmError(f"{parent}: cannot create the folder ({exc.strerror})") from exc
    if not os.access(parent, os.W_OK):
        raise WsdmError(f"{parent}: not writable")


def download_final_model(
    source: str = DEFAULT_SOURCE,
    dest: str | Path = "model_save/final_model",
    *,
    force: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> ModelReport:
    """Fetch ``source``, check it, and install it as ``dest``; returns the check report."""
    dest = Path(dest)
    parsed = parse_source(source)
    check_destination(dest, force)
    if parsed.kind in ("folder", "archive") and dest.exists():
        src = Path(parsed.ref).resolve()
        if src == dest.resolve() or src.is_relative_to(dest.resolve()):
            raise WsdmError(f"{source}: is inside --dest {dest}; it cannot replace itself")
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.incoming-", dir=dest.parent))
    try:
        if parsed.kind == "archive":
            extract_archive(Path(parsed.ref), staging / "extracted", progress)
            model_dir = locate_model_dir(staging / "extracted", str(parsed))
        else:
            if parsed.kind == "kaggle":
                fetched = fetch_kaggle(parsed.ref)
            elif parsed.kind == "hf":
                fetched = fetch_hf(parsed.ref, parsed.revision)
            else:
                fetched = Path(parsed.ref)
            found = locate_model_dir(fetched, str(parsed))
            model_dir = stage_tree(found, staging / "model", link=parsed.kind != "folder", progress=progress)
        report = check_model(model_dir, trust_remote_code=trust_remote_code)
        if not report.ok:
            # Name the source, not the staging folder that is about to be deleted.
            report.path = Path(str(parsed))
            report.problems = [p.replace(str(model_dir), str(parsed)) for p in report.problems]
            raise ModelRejected(report, str(parsed))
        install(model_dir, dest)
        report.path = dest
        return report
    except OSError as exc:
        raise WsdmError(
            f"{dest}: {exc.strerror or exc} while installing {parsed}; nothing was installed"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
