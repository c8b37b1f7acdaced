"""Prometheus metrics of the service, in a registry of its own (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..engines.asynchronous import EngineObserver

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (256, 1024, 4096, 8192, 16384, 32768, 65536, 131072, 262144)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics(EngineObserver):
    """Counters of requests, pairs, groups and tokens, latency, queue depth and the engine's batch sizes."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "wsdm_requests", "HTTP requests by route and status code", ["route", "status"], registry=registry
        )
        self.pairs = Counter("wsdm_pairs", "Pairs judged", registry=registry)
        self.tokens = Counter(
            "wsdm_prompt_tokens", "Prompt tokens scored (forward and swapped)", registry=registry
        )
        self.latency = Histogram(
            "wsdm_judge_seconds",
            "Time from receiving a /v1/judge request to its answer, by status code",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rewards_latency = Histogram(
            "wsdm_rewards_seconds",
            "Time from receiving a /v1/rewards or /get_reward request to its answer, by route and status code",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.groups = Counter("wsdm_groups", "Groups of responses given rewards", registry=registry)
        self.queued_pairs = Gauge(
            "wsdm_queued_pairs", "Pairs accepted and not answered yet (the bounded queue)", registry=registry
        )
        self.queue_limit = Gauge("wsdm_queued_pairs_limit", "--max-queued-pairs", registry=registry)
        self.batch_sequences = Histogram(
            "wsdm_engine_batch_sequences",
            "Prompts per engine batch (hf: one forward pass; vllm: requests in a scheduler step)",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_tokens = Histogram(
            "wsdm_engine_batch_tokens",
            "Prompt tokens per engine batch",
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.aborted_prompts = Counter(
            "wsdm_aborted_prompts",
            "Queued prompts dropped unscored because the client went away",
            registry=registry,
        )
        self.disconnects = Counter(
            "wsdm_client_disconnects", "Requests whose client went away before the answer", registry=registry
        )
        self.engine_errors = Counter("wsdm_engine_errors", "Requests failed by the engine", registry=registry)
        self.ready = Gauge(
            "wsdm_engine_ready", "1 once the engine has loaded and is healthy", registry=registry
        )

    # EngineObserver
    def batch(self, sequences: int, tokens: int) -> None:
        self.batch_sequences.observe(sequences)
        self.batch_tokens.observe(tokens)

    def aborted(self, sequences: int) -> None:
        self.aborted_prompts.inc(sequences)

    def render(self) -> bytes:
        return generate_latest(self.registry)
