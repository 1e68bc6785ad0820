"""A stalled test fails the run at once, with the stacks that say where it waits.

A hang in an asyncio test shows nothing useful in thread stacks (the loop sits in ``select``), so the
watchdog also prints every live asyncio task's stack; then it ends the process, so that CI reports a
failure instead of running into its own time limit. ``STOCKSYNC_TEST_TIMEOUT_S`` sets the limit per test
(default 600 s; the slowest test takes about a minute); 0 turns the watchdog off.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import os
import sys
import threading
import time
from collections.abc import Iterator

import pytest

LIMIT_S = float(os.environ.get("STOCKSYNC_TEST_TIMEOUT_S", "600"))
EXIT_STALLED = 3

_running: dict[str, float] = {}  # nodeid -> when it started (one at a time without xdist)


def _dump_and_exit(config: pytest.Config, nodeid: str) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:  # write to the terminal, not into a capture that os._exit would lose
        capture.suspend_global_capture(in_=True)
    out = sys.stderr
    out.write(f"\n\nwatchdog: {nodeid} has run for more than {LIMIT_S:.0f} s; stacks follow\n")
    faulthandler.dump_traceback(file=out, all_threads=True)
    tasks = [obj for obj in gc.get_objects() if isinstance(obj, asyncio.Task) and not obj.done()]
    out.write(f"\n{len(tasks)} asyncio tasks not done:\n")
    for task in tasks:
        out.write(f"\n{task!r}\n")
        task.print_stack(limit=30, file=out)
    out.flush()
    os._exit(EXIT_STALLED)


def _watch(config: pytest.Config) -> None:
    while True:
        time.sleep(1.0)
        for nodeid, started in list(_running.items()):
            if time.monotonic() - started > LIMIT_S:
                _dump_and_exit(config, nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _running[item.nodeid] = time.monotonic()
    try:
        yield
    finally:
        _running.pop(item.nodeid, None)


def pytest_configure(config: pytest.Config) -> None:
    if LIMIT_S > 0:
        threading.Thread(target=_watch, args=(config,), name="test-watchdog", daemon=True).start()
