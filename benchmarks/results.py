"""Every figure of the run, as the report and ``--json`` show them, and the progress lines on stdout."""

from __future__ import annotations

from dataclasses import dataclass, field

PIPELINE = ("worker", "relay", "postgres", "nats-server", "publisher")


def cpu_per_event(sc: dict) -> dict[str, float] | None:
    """CPU microseconds per recorded event of each pipeline process, and their total."""
    cpu, n = sc.get("cpu_seconds") or {}, sc["ledger"]["recorded"]
    if not n or not cpu:
        return None
    shares = {name: cpu.get(name, 0) / n * 1e6 for name in PIPELINE}
    return {**shares, "total": sum(shares.values())}


def pipeline_load(sc: dict) -> dict[str, float]:
    """How many cores the pipeline's processes kept busy over a run, and their CPU per event: where the two
    cores fill, a fixed rate starts to queue (the latency sweep's knee)."""
    per, wall = cpu_per_event(sc), (sc.get("cpu_seconds") or {}).get("wall seconds")
    if not per or not wall:
        return {}
    return {"cores": per["total"] * sc["ledger"]["recorded"] / 1e6 / wall, "cpu_per_event": per["total"]}


@dataclass
class Results:
    started_at: str
    command: str
    plan: dict
    machine: dict
    software: dict = field(default_factory=dict)
    seed: dict = field(default_factory=dict)
    pgbench: dict | None = None
    scenarios: dict[str, dict] = field(default_factory=dict)
    sweep: list[dict] = field(default_factory=list)
    http: dict[str, dict] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    orders: dict | None = None
    reconcile: dict | None = None
    profile: dict | None = None
    notes: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        print(f"  check {'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)


def say(text: str) -> None:
    print(text, flush=True)
