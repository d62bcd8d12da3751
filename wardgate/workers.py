"""``wardgate serve --workers N``: N processes sharing the ports through SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time

from prometheus_client import multiprocess

from wardgate.server import serve
from wardgate.settings import Settings
from wardgate.stats.logs import configure_logging

log = logging.getLogger("wardgate")


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)


def _worker(settings: Settings) -> None:
    _configure_logging(settings)
    try:  # optional: a faster event loop where it is installed
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(settings))


def run_workers(settings: Settings) -> None:
    _configure_logging(settings)
    if settings.workers <= 1:
        _worker(settings)
        return
    # Every worker writes its metrics here; /metrics adds them up (see wardgate.metrics).
    metrics_dir = tempfile.mkdtemp(prefix="wardgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(settings,), daemon=False) for _ in range(settings.workers)
    ]
    for p in procs:
        p.start()
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info("started %d workers: %s", len(procs), [p.pid for p in procs])
    while not stopping:
        for i, p in enumerate(procs):
            if not p.is_alive() and not stopping:
                log.warning("worker %s exited with %s; restarting", p.pid, p.exitcode)
                if p.pid:
                    multiprocess.mark_process_dead(p.pid)  # type: ignore[no-untyped-call]
                procs[i] = ctx.Process(target=_worker, args=(settings,), daemon=False)
                procs[i].start()
        time.sleep(0.5)
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(0)
