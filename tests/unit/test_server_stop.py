"""The worker's stop: background tasks get a bounded time to end."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from wardgate import server


def test_a_task_that_will_not_end_does_not_hold_up_the_stop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A task that swallows its cancellation (a bug) is waited for CANCEL_WAIT seconds,
    named in the log, and the stop goes on; one that fails while stopping is no error."""
    monkeypatch.setattr(server, "CANCEL_WAIT", 0.2)
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await release.wait()  # ignores the first cancellation

    async def polite() -> None:
        await asyncio.sleep(10)

    async def failing() -> None:
        raise RuntimeError("failed while stopping")

    async def body() -> float:
        tasks = [
            asyncio.create_task(stubborn(), name="stubborn"),
            asyncio.create_task(polite(), name="polite"),
            asyncio.create_task(failing(), name="failing"),
        ]
        await asyncio.sleep(0)
        started = time.monotonic()
        await server._cancel(tasks)
        took = time.monotonic() - started
        assert tasks[1].cancelled() and not tasks[0].done()
        release.set()
        await tasks[0]
        return took

    with caplog.at_level(logging.WARNING):
        took = asyncio.run(body())
    assert took < 1.0
    assert "still running after 0 s: stubborn" in caplog.text
