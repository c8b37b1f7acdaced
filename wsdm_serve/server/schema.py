"""The JSON API: request and response models (they also make the OpenAPI schema) and the parsing
of a request body into one error message that names the pair and the field.

Parsing is done here rather than by FastAPI's body handling so that every bad input gets one
message (``{"error": "pairs[3].response_a: must be a string", "pair": 3, "field": "response_a"}``)
instead of a list of validator records, and so that a body is never larger than the limit.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

TEXT_FIELDS = ("prompt", "response_a", "response_b")


class Pair(BaseModel):
    """One judgement: which response the user of ``prompt`` would prefer. Other keys are ignored,
    as other columns of a table are."""

    model_config = ConfigDict(extra="ignore")

    id: StrictStr | StrictInt | None = Field(default=None, description="returned with the result")
    prompt: StrictStr
    response_a: StrictStr
    response_b: StrictStr


class JudgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pairs: list[Pair] = Field(description="one or more pairs, at most --max-pairs-per-request")
    swap: Literal["none", "all"] = Field(
        default="none",
        description="all: score every pair also with the responses swapped and average (swap TTA)",
    )
    text_normalization: Literal["reference", "none"] | None = Field(
        default=None, description="how responses are normalised [default: the server's --text-normalization]"
    )


class Result(BaseModel):
    id: StrictStr | StrictInt | None
    p_a: float = Field(description="probability that response_a is preferred (after swap TTA)")
    p_b: float
    winner: Literal["model_a", "model_b"]
    p_a_forward: float | None = Field(default=None, description="swap all: P(A) of the prompt as given")
    p_a_swapped: float | None = Field(
        default=None, description="swap all: P(response_a) from the prompt with the responses swapped"
    )


class Usage(BaseModel):
    pairs: int
    tokens: int = Field(description="prompt tokens scored (forward and swapped)")


class JudgeResponse(BaseModel):
    results: list[Result] = Field(description="one per pair, in request order")
    usage: Usage


class ErrorBody(BaseModel):
    error: str
    pair: int | None = Field(default=None, description="index of the pair at fault, from 0")
    group: int | None = Field(default=None, description="/v1/rewards: index of the group at fault, from 0")
    field: str | None = None


class ApiError(Exception):
    """A request that cannot be served: its status, one message, and where the fault is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        pair: int | None = None,
        group: int | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.pair = pair
        self.group = group
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict:
        body: dict = {"error": self.message}
        if self.pair is not None:
            body["pair"] = self.pair
        if self.group is not None:
            body["group"] = self.group
        if self.field is not None:
            body["field"] = self.field
        return body


def load_json_object(body: bytes, shape: str) -> dict:
    """The JSON object in ``body``, or an :class:`ApiError`: 400 when it is not JSON, 422 when it
    is not an object (``shape`` shows what one looks like)."""
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise ApiError(400, "invalid JSON: the body is not UTF-8 text") from None
    except RecursionError:
        raise ApiError(400, "invalid JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise ApiError(422, f"the body must be a JSON object: {shape}")
    return payload


def check_unicode(text: str, where: str, **location) -> None:
    """422 naming ``where`` when ``text`` holds an unpaired surrogate (JSON allows it, UTF-8 does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ApiError(
            422,
            f"{where}: not valid Unicode (an unpaired surrogate "
            f"\\u{ord(error.object[error.start]):04x} at character {error.start})",
            **location,
        ) from None


def parse_judge_request(body: bytes, max_pairs: int) -> JudgeRequest:
    """The request in ``body``, or an :class:`ApiError` (400 not JSON, 422 not a valid request)."""
    payload = load_json_object(body, '{"pairs": [...]}')
    pairs = payload.get("pairs")
    if isinstance(pairs, list) and len(pairs) > max_pairs:
        raise ApiError(
            422,
            f"pairs: {len(pairs)} pairs, more than this server takes per request ({max_pairs}, "
            "--max-pairs-per-request); send them in several requests",
            field="pairs",
        )
    try:
        request = JudgeRequest.model_validate(payload)
    except ValidationError as exc:
        raise _one_error(exc) from None
    if not request.pairs:
        raise ApiError(422, "pairs: no pairs; send at least one", field="pairs")
    for index, pair in enumerate(request.pairs):
        for name in TEXT_FIELDS:
            check_unicode(getattr(pair, name), f"pairs[{index}].{name}", pair=index, field=name)
    return request


def _one_error(exc: ValidationError) -> ApiError:
    """The first problem of a validation error as one message naming the pair and the field."""
    error = exc.errors(include_url=False)[0]
    location = list(error["loc"])
    kind = error["type"]
    if location[:1] == ["pairs"] and len(location) >= 2 and isinstance(location[1], int):
        index = location[1]
        if len(location) == 2:
            return ApiError(
                422, f"pairs[{index}]: must be an object with prompt, response_a and response_b", pair=index
            )
        name = str(location[2])
        if kind == "missing":
            reason = "missing"
        elif name == "id":
            reason = "must be a string, an integer or null"
        else:
            reason = "must be a string"
        return ApiError(422, f"pairs[{index}].{name}: {reason}", pair=index, field=name)
    name = ".".join(str(part) for part in location) or "body"
    if kind == "extra_forbidden":
        return ApiError(
            422, f"{name}: unknown field (a request has pairs, swap, text_normalization)", field=name
        )
    if kind == "missing":
        return ApiError(422, f"{name}: missing", field=name)
    if name == "pairs":
        return ApiError(422, "pairs: must be a list of pairs", field=name)
    return ApiError(422, f"{name}: {error['msg']}", field=name)
