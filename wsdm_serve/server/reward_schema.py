"""The JSON of the reward routes: ``POST /v1/rewards`` (groups of responses in, rewards and the
pairwise matrix out) and OpenRLHF's ``POST /get_reward``, parsed into one
:class:`~wsdm_serve.rewards.GroupBatch` with one error message naming the field.

Both routes end in the same batch as the judge's ``score_groups``: the pairs each group is judged
on, all judged together in both orders, then each group's rewards.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ..compare import GROUP_METHODS
from ..groups import GroupError
from ..rewards.batch import GroupBatch
from ..rewards.openrlhf import response_of, user_prompt
from .schema import ApiError, check_unicode, load_json_object

Method = Literal["vs-reference", "round-robin", "circular"]


class GroupIn(BaseModel):
    """One prompt and its responses. Other keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: StrictStr | StrictInt | None = Field(default=None, description="returned with the result")
    prompt: StrictStr
    responses: list[StrictStr] = Field(description="one or more responses to the prompt")
    reference: StrictStr | None = Field(default=None, description="the reference response (vs-reference)")


class RewardsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    groups: list[GroupIn] = Field(description="one or more groups; their pairs count against the limits")
    method: Method = Field(
        description="vs-reference: P(response beats the reference); round-robin: Bradley-Terry strength "
        "from all pairs; circular: the same from neighbour pairs"
    )
    text_normalization: Literal["reference", "none"] | None = Field(
        default=None, description="how responses are normalised [default: the server's --text-normalization]"
    )


class GroupResult(BaseModel):
    id: StrictStr | StrictInt | None
    rewards: list[float] = Field(description="one per response, in order")
    mean_win: list[float] = Field(description="mean P(win) of each response over the pairs it was judged in")
    strengths: list[float] | None = Field(description="Bradley-Terry strengths (null for vs-reference)")
    matrix: list[list[float | None]] = Field(
        description="P(row beats column); responses in order, then the reference (vs-reference); null where "
        "not judged"
    )


class RewardsUsage(BaseModel):
    groups: int
    pairs: int = Field(description="pairs judged, each in both orders")
    tokens: int = Field(description="prompt tokens scored")


class RewardsResponse(BaseModel):
    method: Method
    results: list[GroupResult] = Field(description="one per group, in request order")
    usage: RewardsUsage


class OpenRLHFRequest(BaseModel):
    """OpenRLHF's remote reward request; other keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    query: list[StrictStr] = Field(
        description="each the prompt followed by the response, special tokens kept"
    )
    prompts: list[StrictStr] = Field(description="the prompt of each query, as the policy saw it")
    labels: list[StrictStr] | None = Field(default=None, description="the reference response of each query")


class OpenRLHFResponse(BaseModel):
    rewards: list[float]
    scores: list[float] = Field(description="the same numbers (OpenRLHF reads scores for filtering and logs)")


REWARDS_FIELDS = "groups, method, text_normalization"


def parse_rewards_request(body: bytes, max_pairs: int) -> tuple[RewardsRequest, GroupBatch]:
    """The request in ``body`` and its pairs, or an :class:`ApiError` (400 not JSON, 422 invalid)."""
    payload = load_json_object(body, '{"groups": [...], "method": "..."}')
    try:
        request = RewardsRequest.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc, REWARDS_FIELDS) from None
    for index, group in enumerate(request.groups):
        texts = [("prompt", group.prompt), *((f"responses[{i}]", r) for i, r in enumerate(group.responses))]
        if group.reference is not None:
            texts.append(("reference", group.reference))
        for name, text in texts:
            check_unicode(text, f"groups[{index}].{name}", group=index, field=name.split("[")[0])
    records = [group.model_dump(exclude_none=False) for group in request.groups]
    return request, plan(records, request.method, max_pairs)


def parse_openrlhf_request(
    body: bytes, method: str, max_pairs: int
) -> tuple[GroupBatch, list[tuple[int, int]]]:
    """OpenRLHF's request as groups, and where each query's reward is: (group, response).

    With ``vs-reference`` each query is a group of one response, its label the reference; with
    ``round-robin`` or ``circular`` the queries of one prompt (in request order) form a group and
    labels are not read.
    """
    if method not in GROUP_METHODS:
        raise ApiError(422, f"method: must be one of {', '.join(GROUP_METHODS)}", field="method")
    payload = load_json_object(body, '{"query": [...], "prompts": [...], "labels": [...]}')
    try:
        request = OpenRLHFRequest.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc, "query, prompts, labels") from None
    count = len(request.query)
    if not count:
        raise ApiError(422, "query: no queries; send at least one", field="query")
    if len(request.prompts) != count:
        raise ApiError(422, f"prompts: {len(request.prompts)} prompts for {count} queries", field="prompts")
    labels = request.labels
    if method == "vs-reference" and labels is None:
        raise ApiError(
            422, "labels: missing; method vs-reference compares each response with its label, the reference "
            "response (--data.label_key)", field="labels",
        )  # fmt: skip
    if labels is not None and len(labels) != count:
        raise ApiError(422, f"labels: {len(labels)} labels for {count} queries", field="labels")
    groups: dict[str, int] = {}
    records: list[dict] = []
    places: list[tuple[int, int]] = []
    for index, (query, prompt) in enumerate(zip(request.query, request.prompts, strict=True)):
        check_unicode(query, f"query[{index}]", field="query")
        check_unicode(prompt, f"prompts[{index}]", field="prompts")
        response = response_of(query, prompt)
        if response is None:
            raise ApiError(
                422, f"query[{index}]: does not start with prompts[{index}] (a query is the prompt followed by "
                "the response)", field="query",
            )  # fmt: skip
        if method == "vs-reference":
            assert labels is not None
            check_unicode(labels[index], f"labels[{index}]", field="labels")
            places.append((len(records), 0))
            records.append(
                {"prompt": user_prompt(prompt), "responses": [response], "reference": labels[index]}
            )
            continue
        group = groups.setdefault(prompt, len(records))
        if group == len(records):
            records.append({"prompt": user_prompt(prompt), "responses": []})
        places.append((group, len(records[group]["responses"])))
        records[group]["responses"].append(response)
    return plan(records, method, max_pairs), places


def plan(records: list[dict], method: str, max_pairs: int) -> GroupBatch:
    """The groups' pairs, or 422 naming the group and field (or the limit of pairs per request)."""
    try:
        batch = GroupBatch.plan(records, method)  # type: ignore[arg-type]
    except GroupError as exc:
        raise ApiError(422, str(exc), group=exc.group, field=exc.field) from None
    if len(batch.pairs) > max_pairs:
        raise ApiError(
            422,
            f"groups: {len(batch.groups)} groups make {len(batch.pairs)} pairs with method {method}, more than "
            f"this server takes per request ({max_pairs}, --max-pairs-per-request); send fewer groups per "
            "request",
            field="groups",
        )
    return batch


def validation_error(exc: ValidationError, fields: str) -> ApiError:
    """The first problem of a validation error as one message naming where it is
    (``groups[3].responses[2]: must be a string``)."""
    error = exc.errors(include_url=False)[0]
    location = list(error["loc"])
    if "id" in location:  # a union's error names the member too (groups.0.id.str): where is the id
        location = location[: location.index("id") + 1]
    where = location_name(location) or "body"
    kind = error["type"]
    group, field = None, str(location[0]) if location else None
    if location[:1] == ["groups"] and len(location) >= 2 and isinstance(location[1], int):
        group, field = location[1], str(location[2]) if len(location) >= 3 else None
    if kind == "missing":
        reason = "missing"
    elif kind == "extra_forbidden":
        reason = f"unknown field (a request has {fields})"
    elif where.endswith(".id"):
        reason = "must be a string, an integer or null"
    elif kind in ("string_type", "str_type"):
        reason = "must be a string"
    elif kind == "list_type":
        reason = "must be a list"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        reason = "must be an object"
    else:
        reason = error["msg"]
    return ApiError(422, f"{where}: {reason}", group=group, field=field)


def location_name(location: list) -> str:
    """``["groups", 3, "responses", 2]`` -> ``groups[3].responses[2]``."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
