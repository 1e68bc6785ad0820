"""Every figure of the run, as the report and ``--json`` show them, and the progress lines on stdout."""

from __future__ import annotations

from dataclasses import dataclass, field


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
