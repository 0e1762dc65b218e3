"""Prometheus metrics of one server (its own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("softprompt_requests_total", "HTTP requests answered", ["endpoint", "status"],
                                registry=r)
        self.errors = Counter("softprompt_request_errors_total", "HTTP requests answered with a 4xx/5xx status",
                              ["endpoint", "status"], registry=r)
        self.latency = Histogram("softprompt_request_latency_seconds", "Time to the response head",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("softprompt_batch_rows", "Rows per backbone batch",
                                    buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128), registry=r)
        self.batch_prompts = Histogram("softprompt_batch_prompts", "Distinct prompts per backbone batch",
                                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        self.batch_seconds = Histogram("softprompt_batch_seconds", "Backbone time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.generated_tokens = Counter("softprompt_generated_tokens_total", "Tokens generated", registry=r)
        self.abandoned_rows = Counter("softprompt_abandoned_rows_total", "Rows whose client went away before the "
                                      "answer (dropped from the queue, or stopped mid-generation)", registry=r)
        self.finished_rows = Counter("softprompt_finished_rows_total", "Rows answered (classified, or generated to "
                                     "their end) to a client still waiting", registry=r)
        self.queue_rows = Gauge("softprompt_queue_rows", "Rows waiting for a batch", registry=r)
        self.prompts = Gauge("softprompt_prompts_loaded", "Prompts being served", registry=r)
        self.cache_bytes = Gauge("softprompt_prompt_cache_bytes", "Bytes of the prompts' cached keys/values held "
                                 "(under --prompt-cache-mb)", registry=r)
        self.cache_evictions = Gauge("softprompt_prompt_cache_evictions", "Prompt caches dropped for the memory "
                                     "budget since the server started (recomputed on their next use)", registry=r)

    def watch_cache(self, budget) -> None:
        """Report a bank's `PromptCacheBudget` at every scrape."""
        self.cache_bytes.set_function(lambda: budget.bytes)
        self.cache_evictions.set_function(lambda: budget.evictions)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
