"""The HTTP API: FastAPI routes over a :class:`~wsdm_serve.server.service.JudgeService`.

Routes: ``POST /v1/judge``, ``POST /v1/rewards`` (groups of responses in, rewards out),
``POST /get_reward`` (OpenRLHF's remote reward model), ``GET /v1/model``, ``GET /metrics``
(Prometheus text), ``GET /health`` (503 while the engine loads, 200 when it is ready) and
``GET /openapi.json``. With an API key every route but ``/health`` needs
``Authorization: Bearer <key>``. Every error is a JSON object with one ``error`` message (and
``pair``/``group``/``field`` where a pair or a group is at fault). The three POST routes share the
limits, the bounded queue (counted in pairs) and the engine's batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..rewards.batch import rewards_json
from .metrics import CONTENT_TYPE
from .reward_schema import (
    OpenRLHFRequest,
    OpenRLHFResponse,
    RewardsRequest,
    RewardsResponse,
    parse_openrlhf_request,
    parse_rewards_request,
)
from .schema import ApiError, ErrorBody, JudgeRequest, JudgeResponse, parse_judge_request
from .service import JudgeService

log = logging.getLogger(__name__)

ROUTES = ("/v1/judge", "/v1/rewards", "/get_reward", "/v1/model", "/metrics", "/health", "/openapi.json")
REQUEST_MODELS = (JudgeRequest, RewardsRequest, OpenRLHFRequest)
PUBLIC_ROUTES = ("/health",)
CLIENT_GONE = 499  # nginx's "client closed request": nothing is sent, the status is for the metrics

ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "the body is not JSON"),
        (401, "missing or wrong API key"),
        (413, "the body is larger than --max-body-bytes"),
        (422, "not a valid request; the message names the pair or group and the field"),
        (429, "the queue is full (--max-queued-pairs); see Retry-After"),
        (500, "the engine failed on this request"),
        (503, "the engine is loading or stopping; see Retry-After"),
    )
}


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def create_app(service: JudgeService, on_engine_failure: Callable[[], None] | None = None) -> GuardedApp:
    """The application; its lifespan starts the engine in the background (the port answers at
    once) and closes it at shutdown. ``on_engine_failure`` is called if the engine cannot start."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def load() -> None:
            try:
                await service.load()
            except Exception as exc:  # noqa: BLE001 - reported, then the server stops
                log.error("the engine could not start: %s", service.error or exc)
                log.debug("engine start-up failed", exc_info=True)
                if on_engine_failure is not None:
                    on_engine_failure()

        loading = asyncio.create_task(load(), name="wsdm-engine-load")
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await service.close()

    app = FastAPI(
        title="wsdm judge",
        version=__version__,
        description="Pairwise LLM judge: which of two responses would the user prefer?",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    config = service.config
    metrics = service.metrics

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s: %s", request.url.path, exc, exc_info=exc)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/health", responses={503: {"description": "the engine is loading, or failed"}})
    async def health() -> JSONResponse:
        """200 when the engine is ready; 503 while it loads or after it failed."""
        if service.ready():
            return JSONResponse({"status": "ready"})
        body = {"status": service.state if service.state != "ready" else "failed"}
        if service.error:
            body["error"] = service.error
        return JSONResponse(body, status_code=503)

    @app.get("/v1/model")
    async def model() -> JSONResponse:
        """The model folder, engine, precision, truncation settings, letter ids and limits."""
        return JSONResponse(service.model_info())

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format: requests by status, pairs, tokens, latency, queue depth, batch sizes."""
        service.ready()  # refreshes the readiness gauge
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    Parse = Callable[[bytes], tuple[int, Callable[[], Awaitable[dict]]]]

    async def answer(request: Request, parse: Parse, observe: Callable[[str, float], None]) -> Response:
        """Read the body, parse it into (pairs to admit, the work), admit the pairs to the bounded
        queue, and answer the work's result unless the client goes away first."""
        started = time.perf_counter()
        status = 500
        try:
            pairs, work = parse(await read_body(request, config.max_body_bytes))
            service.admit(pairs)
            answered = False
            try:
                result = await until_disconnect(request, work())
                answered = True
            finally:
                service.release(pairs, answered)
            status = 200
            return JSONResponse(result)
        except ApiError as exc:
            status = exc.status
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        except ClientGone:
            status = CLIENT_GONE
            metrics.disconnects.inc()
            return Response(status_code=CLIENT_GONE)
        finally:
            observe(str(status), time.perf_counter() - started)

    def body_schema(model: type) -> dict:
        schema = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
        return {"requestBody": {"required": True, "content": schema}}

    @app.post(
        "/v1/judge",
        response_model=JudgeResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=body_schema(JudgeRequest),
    )
    async def judge(request: Request) -> Response:
        """Judge pairs: P(response_a preferred) for each, in request order."""

        def parse(body: bytes):
            parsed = parse_judge_request(body, config.max_pairs_per_request)
            return len(parsed.pairs), lambda: service.judge_pairs(parsed)

        return await answer(
            request, parse, lambda status, seconds: metrics.latency.labels(status).observe(seconds)
        )

    def rewards_observer(route: str) -> Callable[[str, float], None]:
        return lambda status, seconds: metrics.rewards_latency.labels(route, status).observe(seconds)

    @app.post(
        "/v1/rewards",
        response_model=RewardsResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=body_schema(RewardsRequest),
    )
    async def rewards(request: Request) -> Response:
        """Rewards for groups of responses to one prompt each: every pair of every group judged in
        both orders, then each group's rewards, mean win probabilities and pairwise matrix."""

        def parse(body: bytes):
            parsed, batch = parse_rewards_request(body, config.max_pairs_per_request)

            async def work() -> dict:
                scored, tokens = await service.score_groups(batch, parsed.text_normalization)
                return {
                    "method": batch.method,
                    "results": [
                        rewards_json(record, group)
                        for record, group in zip(batch.groups, scored, strict=True)
                    ],
                    "usage": {"groups": len(batch), "pairs": len(batch.pairs), "tokens": tokens},
                }

            return len(batch.pairs), work

        return await answer(request, parse, rewards_observer("/v1/rewards"))

    @app.post(
        "/get_reward",
        response_model=OpenRLHFResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=body_schema(OpenRLHFRequest),
    )
    async def get_reward(
        request: Request,
        method: str = Query(
            "vs-reference",
            description="vs-reference: each query against its label; round-robin or circular: the queries "
            "of one prompt in this request form a group",
        ),
    ) -> Response:
        """OpenRLHF's remote reward model: one reward per query, in order (``rewards`` and ``scores``)."""

        def parse(body: bytes):
            batch, places = parse_openrlhf_request(body, method, config.max_pairs_per_request)

            async def work() -> dict:
                scored, _ = await service.score_groups(batch, None)
                values = [float(scored[group].rewards[item]) for group, item in places]
                return {"rewards": values, "scores": values}

            return len(batch.pairs), work

        return await answer(request, parse, rewards_observer("/get_reward"))

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for model in REQUEST_MODELS:
            request_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(request_schema.pop("$defs", {}))
            schemas[model.__name__] = request_schema
        if config.api_key is not None:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
    return GuardedApp(app, metrics, config.api_key)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body has {int(declared)} bytes, more than {limit} (--max-body-bytes)")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is more than {limit} bytes (--max-body-bytes)")
        parts.append(chunk)
    return b"".join(parts)


async def until_disconnect(request: Request, work: Awaitable[dict]) -> dict:
    """The result of ``work``, or :class:`ClientGone` once the client disconnects; ``work`` is then
    cancelled, which aborts its prompts still queued in the engine."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task.done():
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone


class GuardedApp:
    """ASGI wrapper: counts every response by route and status, and checks the API key (in
    constant time) on every route but /health before the application sees the request."""

    def __init__(self, app: FastAPI, metrics, api_key: str | None) -> None:
        self.app = app
        self.metrics = metrics
        self.key = None if api_key is None else api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        recorded = False

        async def counting_send(message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        if self.key is not None and path not in PUBLIC_ROUTES:
            given = dict(scope.get("headers") or []).get(b"authorization")
            scheme, _, token = (given or b"").strip().partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                message = "missing Authorization: Bearer <key>" if given is None else "wrong API key"
                await _send_json(counting_send, 401, {"error": message}, {b"www-authenticate": b"Bearer"})
                return
        try:
            await self.app(scope, receive, counting_send)
        finally:
            if not recorded:  # the client went away before any response
                self.metrics.requests.labels(route, str(CLIENT_GONE)).inc()


async def _send_json(send, status: int, body: dict, headers: dict[bytes, bytes] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or {}).items(),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
