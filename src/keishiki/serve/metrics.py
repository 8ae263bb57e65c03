"""The server's Prometheus metrics (``GET /metrics``), named after vLLM's with a ``keishiki:``
prefix so its dashboards carry over: request and token counters, running and waiting
gauges, time to first token, inter-token latency, end-to-end latency, and the batch size of
each decode step (what shows that concurrent requests really share forward passes)."""

from __future__ import annotations

# the buckets of vLLM's histograms of the same names (seconds)
_TTFT = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_ITL = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_E2E = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """One registry per server (two servers in one process, as in the tests, do not share
    counters)."""

    def __init__(self, model_name: str):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # no *_created series per counter (vLLM turns them off too)

        self.registry = registry = CollectorRegistry()
        labels = ["model_name"]

        def make(kind, name, doc, **kw):
            metric = kind(f"keishiki:{name}", doc, labels, registry=registry, **kw)
            return metric.labels(model_name)

        self.running = make(Gauge, "num_requests_running", "Requests in the decode batch.")
        self.waiting = make(Gauge, "num_requests_waiting", "Requests waiting for a batch slot.")
        self.prompt_tokens = make(Counter, "prompt_tokens", "Prompt tokens prefilled.")
        self.generation_tokens = make(Counter, "generation_tokens", "Tokens generated.")
        self.finished = make(Counter, "request_success", "Requests that finished.")
        self.cancelled = make(
            Counter,
            "request_cancelled",
            "Requests cancelled (client disconnected) before finishing.",
        )
        self.rejected = make(
            Counter, "request_rejected", "Requests answered 503 because the queue was full."
        )
        self.joined = make(
            Counter,
            "requests_joined_running_batch",
            "Requests that joined a batch already decoding.",
        )
        self.steps = make(Counter, "decode_steps", "Decode steps (one forward pass each).")
        self.ttft = make(
            Histogram, "time_to_first_token_seconds", "Arrival to first token.", buckets=_TTFT
        )
        self.itl = make(
            Histogram,
            "inter_token_latency_seconds",
            "Time between two tokens of one sequence.",
            buckets=_ITL,
        )
        self.e2e = make(
            Histogram, "e2e_request_latency_seconds", "Arrival to last token.", buckets=_E2E
        )
        self.batch_size = make(
            Histogram, "batch_size", "Sequences in the batch at each decode step.", buckets=_BATCH
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
