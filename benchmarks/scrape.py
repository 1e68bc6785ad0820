"""The pipeline's own histograms over one run: each service's ``/metrics`` scraped before and after, the
difference summarised (count, mean, p50 and p99 interpolated in the buckets): where a latency run's time goes
inside the worker and the relay (benchmarks/profiling.md, "Where publish-to-visible waits")."""

from __future__ import annotations

import asyncio
import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.infra import Service

# the histograms summarised, by name without the ``_seconds`` suffix and with their labels
WANTED = (
    "stocksync_batch_wait",
    "stocksync_transaction",
    "stocksync_transaction_stage",
    "stocksync_relay_wake",
    "stocksync_relay_stage",
)
_URL = re.compile(r"http://[^\"\s]+/metrics")


def metrics_url(service: Service) -> str | None:
    """Where the service serves ``/metrics`` (any free port: its log says), the last it logged."""
    urls = [
        found.group(0)
        for line in service.log_path.read_text(errors="replace").splitlines()
        if "metrics_serving" in line and (found := _URL.search(line))
    ]
    return urls[-1] if urls else None


def _buckets(text: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts per histogram series (name plus labels but ``le``)."""
    series: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.removesuffix("_seconds").startswith(WANTED):
            continue
        for sample in family.samples:
            if not sample.name.endswith(("_bucket", "_sum")):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            key = family.name.removesuffix("_seconds") + (f"{{{labels}}}" if labels else "")
            # the sum kept beside the buckets, under -1
            le = float(sample.labels["le"]) if sample.name.endswith("_bucket") else -1.0
            series.setdefault(key, {})[le] = sample.value
    return series


async def scrape(services: list[Service]) -> dict[str, dict[float, float]]:
    merged: dict[str, dict[float, float]] = {}
    for service in services:
        if (url := metrics_url(service)) is None:
            continue
        text = await asyncio.to_thread(lambda u=url: urllib.request.urlopen(u, timeout=5).read().decode())
        for key, buckets in _buckets(text).items():
            into = merged.setdefault(key, {})
            for le, value in buckets.items():
                into[le] = into.get(le, 0.0) + value
    return merged


def _quantile(buckets: list[tuple[float, float]], total: float, q: float) -> float:
    rank, below, lower = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        below, lower = count, le
    return lower


def summary(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Per series: how many were observed between the scrapes, their mean, p50 and p99 in ms."""
    out = {}
    for key, buckets in sorted(after.items()):
        then = before.get(key, {})
        delta = sorted((le, v - then.get(le, 0.0)) for le, v in buckets.items() if le >= 0)
        total = delta[-1][1] if delta else 0.0
        if total <= 0:
            continue
        seconds = buckets.get(-1.0, 0.0) - then.get(-1.0, 0.0)
        out[key] = {
            "count": total,
            "mean_ms": round(1000 * seconds / total, 2),
            "p50_ms": round(1000 * _quantile(delta, total, 0.5), 2),
            "p99_ms": round(1000 * _quantile(delta, total, 0.99), 2),
        }
    return out
