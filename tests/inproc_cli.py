"""The ``wardgate`` command run in the test's own process (no interpreter start per call):
the same ``main`` as the console script, the stack's environment, output captured."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import time
from unittest import mock

import yaml

from tests.support import Stack
from wardgate.cli import main


def run(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        mock.patch.dict(os.environ, stack.env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def apply(stack: Stack, *docs: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """``wardgate apply -f`` of ``docs``, in process; asserts it succeeded."""
    path = stack.workdir / f"apply-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump_all(list(docs)))
    result = run(stack, "apply", "-f", str(path))
    assert result.returncode == 0, result.stderr
    return result
