"""A Secret's private key never leaves the CLI, whatever a raw write stored: a document
without ``kind`` (parsing fills it in from the hash it is in), a text that is not JSON, a
field the schema does not know."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from unittest import mock

import pytest
import redis as sync_redis

from tests.tls_certs import TestCA
from wardgate.cli import main
from wardgate.domain.doc_secret import encode_pem
from wardgate.store.keys import Keys

pytestmark = pytest.mark.integration


def cli(redis_url: str, prefix: str, *args: str) -> str:
    out = io.StringIO()
    env = {"REDIS_URL": redis_url, "WARDGATE_KEY_PREFIX": prefix}
    with (
        mock.patch.dict(os.environ, env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(out),
    ):
        try:
            main(list(args))
        except SystemExit as exc:
            assert not exc.code, out.getvalue()
    return out.getvalue()


def test_a_raw_secret_never_shows_its_key(redis_url: str, prefix: str, tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    old, new = ca.leaf("old", ["gw.test"]), ca.leaf("new", ["gw.test"])
    key_pem = old.key.read_text()
    secret_text = key_pem.splitlines()[1]  # a line of the key's own base64
    raw = {
        "name": "gw",
        "certificate": encode_pem(old.cert.read_text()),
        "private_key": encode_pem(key_pem),
    }  # no "kind": valid all the same (the hash says Secret)
    hash_key = Keys(prefix).secrets
    r = sync_redis.Redis.from_url(redis_url)
    r.hset(hash_key, "gw", json.dumps(raw))
    put = ("secrets", "put", "gw", "--cert", str(new.cert), "--key", str(new.key))

    def leaked(text: str) -> bool:
        return raw["private_key"][8:40] in text or secret_text in text

    shown = cli(redis_url, prefix, "get", "secret", "gw", "-o", "json")
    assert "CN=gw.test" in shown and not leaked(shown)
    assert not leaked(cli(redis_url, prefix, "get", "secrets", "-o", "yaml"))
    assert not leaked(cli(redis_url, prefix, *put, "--dry-run"))
    cli(redis_url, prefix, *put)
    assert not leaked(cli(redis_url, prefix, "history", "-o", "json"))

    # a raw write of the PEM itself (not base64), in the field or in one the schema lacks
    r.hset(hash_key, "gw", json.dumps({**raw, "private_key": key_pem, "key": key_pem}))
    assert not leaked(cli(redis_url, prefix, *put, "--dry-run"))
    cli(redis_url, prefix, *put)
    # a text that is not JSON at all: shown as a digest, and history does not fail on it
    r.hset(hash_key, "gw", key_pem)
    assert not leaked(cli(redis_url, prefix, *put, "--dry-run"))
    cli(redis_url, prefix, *put)
    history = cli(redis_url, prefix, "history", "-o", "json")
    assert not leaked(history) and "redacted, sha256" in history
