"""The nightly reconciliation (issue 5): prove the ledger whole and true it against store counts.

`reconcile` runs every check; the rules that judge each row live in `stocksync.domain.reconciliation`.
"""

from __future__ import annotations

from stocksync.service.reconciliation.context import Progress, ReconcileOptions
from stocksync.service.reconciliation.report import REPORT_SUFFIXES, Summary
from stocksync.service.reconciliation.run import CouldNotRun, reconcile

__all__ = [
    "REPORT_SUFFIXES",
    "CouldNotRun",
    "Progress",
    "ReconcileOptions",
    "Summary",
    "reconcile",
]
