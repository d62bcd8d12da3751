"""The wardgate CLI: exit codes, one-line reasons, all-or-nothing apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import Stack, route, service
from wardgate import devstack

pytestmark = pytest.mark.e2e


def run(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wardgate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        input=stdin,
    )


def test_unreachable_redis_exits_1_with_one_line() -> None:
    port = devstack.free_port()
    result = run("get", "routes", env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach Redis")


@pytest.mark.parametrize(
    "args",
    [
        ("get", "widgets"),
        ("apply",),
        ("apply", "-f", "/no/such/file.yaml"),
        ("users", "add", "bad name!", "--password-stdin"),
        ("sessions", "revoke"),
        ("serve", "--workers", "0"),
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line(args: tuple[str, ...]) -> None:
    result = run(*args, env={"REDIS_URL": f"redis://127.0.0.1:{devstack.free_port()}/0"}, stdin="")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("users", "add", "ada", "--role", "admin\n"), "role 'admin\\n'"),
        (("users", "add", "ada\n"), "user name 'ada\\n'"),
        (("keys", "create", "--name", "ci\n"), "key name 'ci\\n'"),
        (("keys", "create", "--name", "ci", "--tier", "gold\r\n"), "'gold\\r\\n'"),
    ],
)
def test_names_and_roles_with_a_trailing_newline_are_refused(
    args: tuple[str, ...], reason: str
) -> None:
    """Python's ``$`` matches before a final newline: these passed and were stored."""
    extra = "--password-stdin" if args[0] == "users" else "--expires=1d"
    nowhere = {"REDIS_URL": f"redis://127.0.0.1:{devstack.free_port()}/0"}
    result = run(*args, extra, env=nowhere, stdin="")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and reason in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_setting_stops_with_a_clear_message() -> None:
    result = run("get", "routes", env={"WARDGATE_REDIS_TIMEOUT": "fast"})
    assert result.returncode == 1
    assert "WARDGATE_REDIS_TIMEOUT" in result.stderr


def test_validate_is_offline_and_names_the_problem(tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "good.yaml"
    good.write_text("kind: Service\nname: a\nendpoints: [{address: 127.0.0.1, port: 1}]\n")
    assert run("validate", "-f", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "kind: Route\nname: a\nmatch: {prefix: /a}\nbackend: a\nauth: {require: magic}\n"
    )
    result = run("validate", "-f", str(bad))
    assert result.returncode == 1 and "auth.require" in result.stderr
    junk = tmp_path / "junk.yaml"
    junk.write_text("kind: [unclosed\n")
    result = run("validate", "-f", str(junk))
    assert result.returncode == 1 and "not valid YAML" in result.stderr


def test_apply_dry_run_get_history_and_delete(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "docs.yaml"
    import yaml

    path.write_text(
        yaml.safe_dump_all(
            [service("cli-svc", stack.upstream_port), route("cli-r", "/cli-r", "cli-svc")]
        )
    )
    dry = stack.cli("apply", "-f", str(path), "--dry-run")
    assert dry.returncode == 0
    assert "route/cli-r created (dry run)" in dry.stdout
    assert stack.redis().hget(f"{stack.prefix}routes", "cli-r") is None
    applied = stack.cli("apply", "-f", str(path))
    assert "service/cli-svc created" in applied.stdout and "route/cli-r created" in applied.stdout
    again = stack.cli("apply", "-f", str(path))
    assert "route/cli-r unchanged" in again.stdout
    got = json.loads(stack.cli("get", "routes", "cli-r", "-o", "json").stdout)
    assert got["backend"] == "cli-svc" and got["match"] == {"prefix": "/cli-r"}
    assert "cli-r" in stack.cli("get", "routes").stdout
    in_use = stack.cli("delete", "service", "cli-svc")
    assert in_use.returncode == 1 and "route cli-r still uses it" in in_use.stderr
    assert stack.cli("delete", "route", "cli-r").returncode == 0
    assert stack.cli("delete", "service", "cli-svc").returncode == 0
    missing = stack.cli("delete", "route", "cli-r")
    assert missing.returncode == 1 and "not found" in missing.stderr
    history = json.loads(stack.cli("history", "-o", "json").stdout)
    actions = [(c["name"], c["action"]) for h in history for c in h["changes"]]
    assert ("cli-r", "deleted") in actions and ("cli-r", "created") in actions
    assert history[0]["revision"] > history[-1]["revision"]


def test_rollback_restores_an_earlier_revision(stack: Stack) -> None:
    first = stack.apply(route("rb", "/rb-one", "echo"))
    rev1 = int(first.stdout.split("revision ")[1].split()[0])
    stack.apply(route("rb", "/rb-two", "echo"), route("rb-extra", "/rb-extra", "echo"))
    dry = stack.cli("rollback", str(rev1), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "route/rb configured (dry run)" in dry.stdout
    assert "route/rb-extra deleted (dry run)" in dry.stdout
    done = stack.cli("rollback", str(rev1))
    assert done.returncode == 0, done.stderr
    got = json.loads(stack.cli("get", "routes", "rb", "-o", "json").stdout)
    assert got["match"] == {"prefix": "/rb-one"}
    assert stack.redis().hget(f"{stack.prefix}routes", "rb-extra") is None
    with stack.client() as http:
        from tests.support import eventually

        eventually(lambda: http.get("/rb-one").status_code == 200, timeout=2)
        eventually(lambda: http.get("/rb-extra").status_code == 404, timeout=2)
    unknown = stack.cli("rollback", "999999")
    assert unknown.returncode == 1 and "not in the history" in unknown.stderr


def test_dry_run_prints_the_diff(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    stack.apply(route("diffme", "/diff-old", "echo"))
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(route("diffme", "/diff-new", "echo", timeout="3s")))
    out = stack.cli("apply", "-f", str(path), "--dry-run").stdout
    assert "route/diffme configured (dry run)" in out
    assert "    -  prefix: /diff-old\n    +  prefix: /diff-new\n" in out
    assert "    +timeout: 3s\n" in out
    assert (
        json.loads(stack.cli("get", "routes", "diffme", "-o", "json").stdout)["match"]["prefix"]
        == "/diff-old"
    )
