"""`wsdm-serve download-final-model`: every source through the same verify-then-rename tail.

The Kaggle path runs the real kagglehub client against a small Kaggle API served on 127.0.0.1
(the three calls a model download makes), so download, cache, staging, checks and the final
rename are exercised end to end without the internet. Failures of the network itself are real
too: a closed port, and a proxy that refuses connections.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import console_script

from wsdm_serve.cli import main
from wsdm_serve.download import (
    DEFAULT_SOURCE,
    KAGGLE_HANDLE,
    ModelRejected,
    Source,
    download_final_model,
    parse_source,
)
from wsdm_serve.errors import WsdmError
from wsdm_serve.models.checks import check_model

HANDLE = "someone/wsdm-judge/transformers/tiny/1"


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(parent: Path) -> list[str]:
    """Hidden staging or replaced folders that must never survive a run."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def invoke(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)], catch_exceptions=False)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment without credentials or proxies, with private caches."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAGGLE", "HF_", "HUGGING"))
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env.update(
        HOME=str(tmp_path / "home"),
        KAGGLEHUB_CACHE=str(tmp_path / "kaggle-cache"),
        HF_HOME=str(tmp_path / "hf"),
    )
    env.update(extra)
    return env


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (DEFAULT_SOURCE, Source("kaggle", KAGGLE_HANDLE)),
        (KAGGLE_HANDLE, Source("kaggle", KAGGLE_HANDLE)),
        (
            "daihengwei/wsdm-qwen2.5/transformers/711gptq8b128",
            Source("kaggle", "daihengwei/wsdm-qwen2.5/transformers/711gptq8b128"),
        ),
        (f"https://www.kaggle.com/models/{KAGGLE_HANDLE}", Source("kaggle", KAGGLE_HANDLE)),
        (
            "https://www.kaggle.com/models/daihengwei/wsdm-qwen2.5/frameworks/transformers/variations/711gptq8b128/versions/1",
            Source("kaggle", KAGGLE_HANDLE),
        ),
        ("Qwen/Qwen2.5-14B-Instruct", Source("hf", "Qwen/Qwen2.5-14B-Instruct")),
        ("hf:Qwen/Qwen2.5-0.5B@main", Source("hf", "Qwen/Qwen2.5-0.5B", "main")),
        ("https://huggingface.co/Qwen/Qwen2.5-0.5B/tree/v1", Source("hf", "Qwen/Qwen2.5-0.5B", "v1")),
    ],
)
def test_parse_source(text, expected):
    assert parse_source(text) == expected


def test_parse_source_local_and_bad(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert parse_source("org/name") == Source("folder", "org/name")  # a local folder wins over a repo id
    (tmp_path / "m.tgz").write_bytes(b"")
    assert parse_source("m.tgz").kind == "archive"
    (tmp_path / "notes.txt").write_text("x")
    for text, message in [
        ("notes.txt", "not a folder or a"),
        ("./missing", "no such file or folder"),
        ("missing.zip", "no such file or folder"),
        ("a/b/c", "no such file or folder"),
        ("kaggle:a/b", "owner/model/framework/variation"),
        ("kaggle:a/b/c/d/latest", "owner/model/framework/variation"),
        ("hf:a/b/c", "owner/name"),
        ("https://example.com/model", "unsupported URL"),
    ]:
        with pytest.raises(WsdmError, match=message):
            parse_source(text)


# --------------------------------------------------------------------------- local folders


def test_cli_installs_a_local_folder(tiny_model_dir, tmp_path):
    """Stage, check, rename; the source is untouched. (The Hugging Face test below runs the
    installed entry point; this one stays in-process to keep the file fast.)"""
    before = digest(tiny_model_dir)
    dest = tmp_path / "model_save" / "final_model"
    result = CliRunner().invoke(
        main, ["download-final-model", "--source", str(tiny_model_dir), "--dest", str(dest)]
    )
    assert result.exit_code == 0, result.output
    assert "ok: no problems found" in result.stdout and "answer tokens" in result.stdout
    assert f"-> {dest}" in result.stderr
    assert digest(dest) == before == digest(tiny_model_dir)
    assert not any(p.is_symlink() for p in dest.iterdir())
    assert leftovers(dest.parent) == []


def test_existing_destination_needs_force_and_survives_a_rejected_copy(tiny_model_dir, tmp_path):
    dest = tmp_path / "final_model"
    download_final_model(str(tiny_model_dir), dest, progress=False)
    (dest / "MARKER").write_text("old install")

    refused = invoke("download-final-model", "--source", tiny_model_dir, "--dest", dest)
    assert refused.exit_code == 2 and "already exists; pass --force" in refused.stderr
    assert (dest / "MARKER").exists()

    # A broken source never replaces a working install, even with --force.
    broken = Path(shutil.copytree(tiny_model_dir, tmp_path / "broken"))
    with (broken / "model.safetensors").open("r+b") as handle:
        handle.truncate(5000)
    rejected = invoke("download-final-model", "--source", broken, "--dest", dest, "--force")
    assert rejected.exit_code == 2
    assert "failed 1 check" in rejected.stderr and "nothing was installed" in rejected.stderr
    assert "truncated" in rejected.stdout  # the full report
    assert (dest / "MARKER").read_text() == "old install"
    assert leftovers(tmp_path) == []

    replaced = invoke("download-final-model", "--source", tiny_model_dir, "--dest", dest, "--force")
    assert replaced.exit_code == 0, replaced.output
    assert not (dest / "MARKER").exists()
    assert digest(dest) == digest(tiny_model_dir)
    assert leftovers(tmp_path) == []


def test_source_inside_destination_is_refused(tiny_model_dir, tmp_path):
    dest = Path(shutil.copytree(tiny_model_dir, tmp_path / "final_model"))
    with pytest.raises(WsdmError, match="cannot replace itself"):
        download_final_model(str(dest), dest, force=True, progress=False)
    assert check_model(dest).ok


def test_folder_without_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WsdmError, match="no config.json inside"):
        download_final_model(str(tmp_path / "empty"), tmp_path / "dest", progress=False)
    assert not (tmp_path / "dest").exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- archives


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_archive_with_the_model_one_level_down(tiny_model_dir, tmp_path, suffix):
    archive = tmp_path / f"final_model{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for path in sorted(tiny_model_dir.iterdir()):
                zf.write(path, f"711gptq8b128/{path.name}")
    else:
        with tarfile.open(archive, "w:gz", compresslevel=1) as tf:
            tf.add(tiny_model_dir, arcname="711gptq8b128")
    dest = tmp_path / "out" / "final_model"
    report = download_final_model(str(archive), dest, progress=False)
    assert report.ok and report.path == dest
    assert digest(dest) == digest(tiny_model_dir)
    assert leftovers(dest.parent) == []


def _tar_with(tmp_path: Path, build) -> Path:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        config = tarfile.TarInfo("model/config.json")
        config.size = 2
        tf.addfile(config, io.BytesIO(b"{}"))
        build(tf)
    return archive


def _file(name: str) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = 5
    return info, io.BytesIO(b"owned")


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda tf: tf.addfile(*_file("../escaped.txt")), "would be written outside"),
        (lambda tf: tf.addfile(*_file("model/../../escaped.txt")), "would be written outside"),
        (lambda tf: tf.addfile(*_file("/tmp/escaped-absolute.txt")), "would be written outside"),
        (lambda tf: tf.addfile(_link("model/link", "../../../escaped.txt")), "points outside"),
        (lambda tf: tf.addfile(_link("model/hard", "/etc/passwd", tarfile.LNKTYPE)), "points outside"),
        (lambda tf: tf.addfile(_link("model/dev", "", tarfile.CHRTYPE)), "device or pipe"),
    ],
    ids=["parent", "nested-parent", "absolute", "symlink", "hardlink", "device"],
)
def test_tar_members_that_escape_are_refused(tmp_path, build, message):
    work = tmp_path / "work"
    work.mkdir()
    archive = _tar_with(work, build)
    result = invoke("download-final-model", "--source", archive, "--dest", work / "final_model")
    assert result.exit_code == 2 and message in result.stderr and "refusing to extract" in result.stderr
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/escaped-absolute.txt").exists()
    assert sorted(p.name for p in work.iterdir()) == ["evil.tar"]


def test_zip_member_that_escapes_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model/config.json", "{}")
        zf.writestr("../escaped.txt", "owned")
    with pytest.raises(WsdmError, match="would be written outside"):
        download_final_model(str(archive), tmp_path / "final_model", progress=False)
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_corrupt_archive(tmp_path):
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(WsdmError, match="unreadable or truncated archive"):
        download_final_model(str(archive), tmp_path / "final_model", progress=False)
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- Kaggle, for real over HTTP


class FakeKaggle(ThreadingHTTPServer):
    """The Kaggle API calls of a versioned model download: list the files, download each one."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__(("127.0.0.1", 0), KaggleHandler)
        self.files = {p.name: p for p in sorted(model_dir.iterdir()) if p.is_file()}
        self.requests: list[tuple[str, dict]] = []
        self.status = 200
        self.truncate: str | None = None


class KaggleHandler(BaseHTTPRequestHandler):
    server: FakeKaggle

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append((self.path, request))
        if self.server.status != 200:
            error = {
                "code": self.server.status,
                "message": "Unauthenticated" if self.server.status < 404 else "Not found",
            }
            self._send(self.server.status, json.dumps(error).encode(), "application/json")
        elif self.path == "/api/v1/models.ModelApiService/ListModelInstanceVersionFiles":
            files = [{"name": n, "size": p.stat().st_size} for n, p in self.server.files.items()]
            self._send(200, json.dumps({"files": files, "nextPageToken": ""}).encode(), "application/json")
        elif self.path == "/api/v1/models.ModelApiService/DownloadModelInstanceVersion":
            data = self.server.files[request["path"]].read_bytes()
            if request["path"] == self.server.truncate:
                data = data[: len(data) // 2]
            self._send(200, data, "application/octet-stream")
        else:
            self._send(404, b'{"code": 404, "message": "no such call"}', "application/json")


@pytest.fixture
def kaggle(tiny_model_dir, tmp_path, monkeypatch):
    """kagglehub pointed at a local Kaggle API, with no credentials and a private cache."""
    pytest.importorskip("kagglesdk", reason="the local Kaggle API speaks kagglehub 1.x's protocol")
    from kagglesdk import kaggle_env

    server = FakeKaggle(tiny_model_dir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in list(os.environ):
        if name.startswith("KAGGLE") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kaggle-cache"))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setitem(
        kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, f"http://127.0.0.1:{server.server_port}"
    )
    yield server
    server.shutdown()
    server.server_close()


def test_kaggle_download_end_to_end(kaggle, tiny_model_dir, tmp_path):
    dest = tmp_path / "model_save" / "final_model"
    result = invoke("download-final-model", "--source", f"kaggle:{HANDLE}", "--dest", dest)
    assert result.exit_code == 0, result.output
    assert digest(dest) == digest(tiny_model_dir)
    downloads = [r for p, r in kaggle.requests if p.endswith("DownloadModelInstanceVersion")]
    assert sorted(r["path"] for r in downloads) == sorted(kaggle.files)
    assert downloads[0]["ownerSlug"] == "someone" and downloads[0]["versionNumber"] == 1
    # Staged from kagglehub's cache by hard links: no second copy on disk.
    assert (dest / "model.safetensors").stat().st_nlink == 2
    assert leftovers(dest.parent) == []

    # kagglehub's cache makes a repeated download free: no request reaches the server.
    calls = len(kaggle.requests)
    again = invoke("download-final-model", "--source", f"kaggle:{HANDLE}", "--dest", dest, "--force")
    assert again.exit_code == 0, again.output
    assert len(kaggle.requests) == calls
    assert check_model(dest).ok


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "Kaggle refused access (HTTP 401); set KAGGLE_USERNAME and KAGGLE_KEY"),
        (403, "Kaggle refused access (HTTP 403); set KAGGLE_USERNAME and KAGGLE_KEY"),
        (404, "not found on Kaggle (check the handle at https://www.kaggle.com/models/"),
    ],
)
def test_kaggle_http_errors_are_one_line(kaggle, tmp_path, status, message):
    kaggle.status = status
    result = invoke(
        "download-final-model", "--source", f"kaggle:{HANDLE}", "--dest", tmp_path / "final_model"
    )
    assert result.exit_code == 2
    assert message in result.stderr and "--source PATH" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert not (tmp_path / "final_model").exists() and leftovers(tmp_path) == []


def test_kaggle_download_that_arrives_truncated_is_rejected(kaggle, tmp_path):
    kaggle.truncate = "model.safetensors"
    with pytest.raises(ModelRejected) as caught:
        download_final_model(f"kaggle:{HANDLE}", tmp_path / "final_model", progress=False)
    problem = next(p for p in caught.value.report.problems if "truncated" in p)
    assert problem.startswith(f"kaggle:{HANDLE}/model.safetensors")  # names the source, not a temp folder
    assert not (tmp_path / "final_model").exists() and leftovers(tmp_path) == []


def test_kaggle_unreachable_fails_fast(kaggle, tmp_path, monkeypatch):
    from kagglesdk import kaggle_env

    port = closed_port()
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, f"http://127.0.0.1:{port}")
    result = invoke(
        "download-final-model", "--source", f"kaggle:{HANDLE}", "--dest", tmp_path / "final_model"
    )
    assert result.exit_code == 2
    assert f"no network (127.0.0.1:{port} unreachable" in result.stderr
    assert f"download it by hand from https://www.kaggle.com/models/{HANDLE}" in result.stderr
    assert result.stderr.count("\n") == 1


def test_default_source_without_network_or_credentials(tmp_path):
    """The real default command, through a proxy that refuses every connection: one line, exit 2."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = clean_env(tmp_path, HTTPS_PROXY=proxy, HTTP_PROXY=proxy, NO_PROXY="")
    result = subprocess.run(
        [console_script("wsdm-serve"), "download-final-model", "--dest", str(tmp_path / "final_model")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"cannot download kaggle:{KAGGLE_HANDLE}: no network" in lines[0]
    assert "--source PATH" in lines[0]
    assert not (tmp_path / "final_model").exists()


# --------------------------------------------------------------------------- Hugging Face


def test_hugging_face_repo_from_the_offline_cache(tiny_model_dir, tmp_path):
    """A repo id resolved by huggingface_hub from its cache layout (blobs + snapshot symlinks)."""
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-judge"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for path in tiny_model_dir.iterdir():
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    dest = tmp_path / "final_model"
    result = subprocess.run(
        [console_script("wsdm-serve"), "-q", "download-final-model", "--source", "hf:someone/tiny-judge", "--dest", str(dest)],
        capture_output=True, text=True, timeout=600, env=clean_env(tmp_path, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert digest(dest) == digest(tiny_model_dir)
    assert not any(p.is_symlink() for p in dest.iterdir())


def test_hugging_face_unreachable_is_one_line(tmp_path):
    env = clean_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    result = subprocess.run(
        [console_script("wsdm-serve"), "download-final-model", "--source", "hf:someone/tiny-judge", "--dest", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "cannot reach the Hugging Face Hub" in lines[0] and "--source PATH" in lines[0]
