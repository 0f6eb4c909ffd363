"""Prometheus metrics: latency histograms, token counters, the scheduler's running/waiting gauges, and
speculative decoding counters (zero while speculation is off)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)


class Metrics:
    """One registry per server, so several servers (tests) in one process do not collide."""

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        self.labels = {"model_name": model_name}
        self.ttft = self._make(Histogram, "sonic_time_to_first_token_seconds", "Request arrival to first token")
        self.itl = self._make(Histogram, "sonic_inter_token_latency_seconds", "Time between output tokens")
        self.e2e = self._make(Histogram, "sonic_e2e_request_latency_seconds", "Request arrival to last token")
        self.prompt_tokens = self._make(Counter, "sonic_prompt_tokens", "Prompt tokens processed")
        self.generation_tokens = self._make(Counter, "sonic_generation_tokens", "Tokens generated")
        self.running = self._make(Gauge, "sonic_num_requests_running", "Requests prefilling or decoding")
        self.waiting = self._make(Gauge, "sonic_num_requests_waiting", "Requests queued for a slot")
        self.requests = Counter("sonic_requests", "Requests ended, by reason (stop, length, abort, timeout, "
                                "error)", ["model_name", "finish_reason"], registry=self.registry)
        self.spec_drafted = self._make(Counter, "sonic_spec_draft_tokens", "Draft tokens sent to verification")
        self.spec_accepted = self._make(Counter, "sonic_spec_accepted_tokens", "Draft tokens the model kept")
        self.spec_steps = self._make(Counter, "sonic_spec_verification_steps",
                                     "Verification steps with at least one draft token")

    def _make(self, kind, name: str, doc: str):
        extra = {"buckets": LATENCY_BUCKETS} if kind is Histogram else {}
        return kind(name, doc, ["model_name"], registry=self.registry, **extra).labels(**self.labels)

    def watch(self, scheduler):
        """The gauges read the scheduler when scraped, so they are never stale."""
        self.running.set_function(lambda: scheduler.num_running)
        self.waiting.set_function(lambda: scheduler.num_waiting)

    def request_ended(self, request, stats, reason: str):
        """Called by the engine thread for every request that leaves the scheduler."""
        self.requests.labels(finish_reason=reason, **self.labels).inc()
        if reason in ("stop", "length") or stats.token_times:  # the prompt was run
            self.prompt_tokens.inc(stats.prompt_tokens)
        self.generation_tokens.inc(stats.output_tokens)
        if stats.spec is not None:
            self.spec_drafted.inc(stats.spec.drafted)
            self.spec_accepted.inc(stats.spec.accepted)
            self.spec_steps.inc(stats.spec.steps)
        if not stats.token_times:
            return
        self.ttft.observe(stats.ttft_s)
        self.e2e.observe(stats.token_times[-1] - request.arrival)
        for a, b in zip(stats.token_times, stats.token_times[1:]):
            self.itl.observe(b - a)

    def render(self) -> bytes:
        return generate_latest(self.registry)
