"""`wsdm-serve serve`: the judge as an HTTP service (needs the `serve` extra)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import click

from ..errors import WsdmError, user_errors
from ..server.config import (
    API_KEY_ENV,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PAIRS_PER_REQUEST,
    DEFAULT_MAX_QUEUED_PAIRS,
)
from .options import judge_options

SERVE_MISSING = "the HTTP service needs its extra: pip install 'wsdm[serve]'"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: a free one)."
)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Require `Authorization: Bearer <key>` on every route but /health; the key is the file's "
    f"first line [default: the {API_KEY_ENV} environment variable, else no key].",
)
@click.option(
    "--max-pairs-per-request",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PAIRS_PER_REQUEST,
    show_default=True,
    help="Most pairs one request may hold (more: 422).",
)
@click.option(
    "--max-queued-pairs",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_QUEUED_PAIRS,
    show_default=True,
    help="Most pairs accepted and not yet answered; a request beyond it gets 429 with Retry-After.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BODY_BYTES,
    show_default=True,
    help="Largest request body (more: 413).",
)
@click.option(
    "--batch-window-ms",
    type=click.FloatRange(min=0),
    default=None,
    help="hf engine: requests arriving within this many milliseconds of the oldest waiting one are "
    "scored in one batch [default: 5].",
)
@click.option(
    "--batch-window-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="hf engine: a batch is taken early once this many prompt tokens wait, and holds at most "
    "this many (one request at least) [default: --batch-tokens].",
)
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn's access log) on stderr.")
@judge_options()
@click.pass_context
@user_errors
def serve(
    ctx,
    host,
    port,
    api_key_file,
    max_pairs_per_request,
    max_queued_pairs,
    max_body_bytes,
    batch_window_ms,
    batch_window_tokens,
    access_log,
    settings,
) -> None:
    """Serve the judge over HTTP: POST /v1/judge, GET /v1/model, /metrics, /health, /openapi.json.

    The model is checked first; then the port opens and /health answers 503 while the engine
    loads, 200 once it is ready. SIGTERM (or Ctrl-C) stops accepting connections, lets the
    requests in flight finish and exits 0.
    """
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise WsdmError(SERVE_MISSING)
    from ..engines.asynchronous import BatchingOptions
    from ..server.config import ServeConfig, read_api_key
    from ..server.runner import JudgeServer, bind_socket
    from ..server.service import JudgeService

    config = ServeConfig(
        judge=settings,
        batching=BatchingOptions(window_ms=batch_window_ms, window_tokens=batch_window_tokens),
        max_pairs_per_request=max_pairs_per_request,
        max_queued_pairs=max_queued_pairs,
        max_body_bytes=max_body_bytes,
        api_key=read_api_key(api_key_file, dict(os.environ)),
    )
    service = JudgeService.prepare(config)  # model checked, tokenizer loaded; nothing heavy yet
    server = JudgeServer(service, bind_socket(host, port), access_log=access_log)
    auth = "API key required" if config.api_key else "no API key"
    click.echo(
        f"serve: listening on {server.url} ({auth}); engine {service.engine.name} loading, "
        f"GET {server.url}/health answers 200 when ready",
        err=True,
    )
    code = server.run()
    click.echo("serve: stopped" if code == 0 else "serve: stopped, the engine could not start", err=True)
    sys.exit(code)
