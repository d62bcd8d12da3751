"""Session tickets and Issuer JWTs decided by Envoy itself (issue 14): through two real Envoys
and ``wardgate serve --workers 2``, what passes without a callout, what is refused, how fast a
revocation reaches every Envoy, and what an attacker can do with the pieces."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support import Stack, echo, eventually, route, with_redis
from wardgate import devstack
from wardgate.domain.tickets import PublishedKey
from wardgate.store.keys import Keys
from wardgate.store.redis_store import RedisSessionStore
from wardgate.store.tickets import RedisTicketKeyStore
from wardgate.xds.scope_key import SCOPE_HEADER

pytestmark = pytest.mark.e2e
FAST = {"WARDGATE_TICKET_KEY_LEAD": "1s", "WARDGATE_TICKET_CLOCK_SKEW": "2s"}
SPOOFED = {"x-user-id": "mallory", "x-user-roles": "admin", "x-auth-method": "session"}
ISSUER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
HS_SECRET = "h" * 40


class Gateway:
    """A stack with two Envoys on one wardgate (two workers)."""

    def __init__(self, stack: Stack, second: int) -> None:
        self.stack = stack
        self.bases = [stack.base, f"http://127.0.0.1:{second}"]
        self._clients = threading.local()
        self._opened: list[httpx.Client] = []

    def close(self) -> None:
        for client in self._opened:
            client.close()

    def get(
        self,
        path: str,
        *,
        envoy: int = 0,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request, with exactly these cookies (a client per thread, its jar emptied)."""
        client: httpx.Client | None = getattr(self._clients, "client", None)
        if client is None:
            client = self._clients.client = httpx.Client(timeout=5)
            self._opened.append(client)
        client.cookies.clear()
        sent = dict(headers or {})
        if cookies:
            sent["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        return client.get(self.bases[envoy] + path, headers=sent)

    def login(self, user: str, password: str) -> tuple[str, str]:
        """(session id, ticket) of a new session. Straight to wardgate: Envoy's login limit
        per address is not what these tests are about."""
        resp = httpx.post(
            f"http://127.0.0.1:{self.stack.http_port}/auth/login",
            json={"username": user, "password": password},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        return resp.cookies["wg_session"], resp.cookies.get("wg_ticket", "")

    def authz_checks(self) -> float:
        """ext_authz checks wardgate answered so far (both workers)."""
        text = httpx.get(f"http://127.0.0.1:{self.stack.http_port}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("wardgate_authz_decisions_total{")
        )

    def envoy_stat(self, name: str, *, admin: int | None = None) -> int:
        port = admin or self.stack.admin_port
        text = httpx.get(f"http://127.0.0.1:{port}/stats?filter=^{re.escape(name)}$", timeout=5)
        found = re.findall(rf"^{re.escape(name)}: (\d+)$", text.text, re.M)
        return int(found[0]) if found else 0


def _users(s: Stack) -> None:
    for name, roles in (("ann", ["user"]), ("boss", ["user", "admin"]), ("cid", ["user"])):
        args = [a for r in roles for a in ("--role", r)]
        added = s.cli("users", "add", name, *args, "--password-stdin", stdin=f"{name}-password\n")
        assert added.returncode == 0, added.stderr


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    data = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**data, "kid": kid, "use": "sig"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from tests.conftest import _start_stack

    tmp = tmp_path_factory.mktemp("tickets")
    port = devstack.free_port()
    redis_proc = devstack.start_redis(port, tmp / "redis")
    s = None
    try:
        env = {**FAST, "WG_TEST_HS": HS_SECRET}
        s = _start_stack(tmp, f"redis://127.0.0.1:{port}/0", "wardgate:", extra_env=env)
        devstack.stop(s.procs.pop("wardgate"))
        s.start_wardgate("--workers", "2", extra_env=env)
        second = devstack.free_port()
        s.procs["envoy-2"] = devstack.start_envoy(
            workdir=tmp,
            node_id="envoy-2",
            listen_port=second,
            admin_port=devstack.free_port(),
            wardgate_port=s.grpc_port,
        )
        _users(s)
        s.apply(
            route("tk-public", "/tk/public", "echo"),
            route("tk-me", "/tk/me", "echo", auth={"require": "session"}),
            route("tk-admin", "/tk/admin", "echo", auth={"require": "session", "roles": ["admin"]}),
            route(
                "tk-limited",
                "/tk/limited",
                "echo",
                auth={"require": "session"},
                rate_limits=[{"by": "user", "requests": 2, "per": "hour"}],
            ),
            route("tk-jwt", "/tk/jwt", "echo", auth={"require": "jwt", "roles": ["reader"]}),
            route("tk-key", "/tk/key", "echo", auth={"require": "api_key"}),
            route("tk-any", "/tk/any", "echo", auth={"require": "any"}),
            {
                "kind": "Issuer",
                "name": "corp",
                "issuer": "https://idp.example.com",
                "audiences": ["api"],
                "roles_claim": "groups",
                "jwks": {"keys": [_jwk(ISSUER_KEY, "r1")]},
            },
            {
                "kind": "Issuer",
                "name": "shared",
                "issuer": "https://hs.example.com",
                "audiences": ["api"],
                "hs256_secret_env": "WG_TEST_HS",
            },
        )
        g = Gateway(s, second)
        for envoy in (0, 1):
            eventually(lambda e=envoy: g.get("/tk/me", envoy=e).status_code == 401, timeout=10)
        # A first key signs lead seconds after each worker started.
        eventually(lambda: g.login("cid", "cid-password")[1], timeout=10)
        try:
            yield g
        finally:
            g.close()
    finally:
        if s is not None:
            s.stop_all()
        devstack.stop(redis_proc)


def _set_cookies(resp: httpx.Response) -> dict[str, str]:
    return {c.split("=", 1)[0]: c for c in resp.headers.get_list("set-cookie")}


def test_a_ticket_alone_passes_without_asking_wardgate(gw: Gateway) -> None:
    resp = httpx.post(
        gw.bases[0] + "/auth/login", json={"username": "ann", "password": "ann-password"}
    )
    cookie = _set_cookies(resp)["wg_ticket"]
    attributes = [a.strip() for a in cookie.split(";")[1:]]
    assert {"HttpOnly", "SameSite=Lax", "Path=/"} <= set(attributes)
    assert 50 <= int(next(a for a in attributes if a.startswith("Max-Age="))[8:]) <= 60
    ticket = resp.cookies["wg_ticket"]
    checks = gw.authz_checks()
    disabled = gw.envoy_stat("http.wardgate.ext_authz.disabled")
    for envoy in (0, 1):
        seen = echo(
            gw.get(
                "/tk/me",
                envoy=envoy,
                headers={**SPOOFED, "x-wardgate-ticket-sid": "0" * 32},
                cookies={"wg_ticket": ticket, "theirs": "1"},
            )
        )["headers"]
        # Identity from the ticket; the client's own identity headers are gone.
        assert (seen["x-user-id"], seen["x-user-roles"], seen["x-auth-method"]) == (
            "ann",
            "user",
            "session",
        )
        # Neither gateway cookie nor the ticket's session id reaches an upstream.
        assert seen["cookie"] == "theirs=1"
        assert "x-wardgate-ticket-sid" not in seen
    assert gw.authz_checks() == checks  # no callout at all
    assert gw.envoy_stat("http.wardgate.ext_authz.disabled") >= disabled + 1
    public = echo(gw.get("/tk/public", cookies={"wg_ticket": ticket, "wg_session": "x"}))
    assert "cookie" not in public["headers"]


def test_without_a_ticket_ext_authz_decides_and_sets_a_fresh_one(gw: Gateway) -> None:
    session, _ = gw.login("ann", "ann-password")
    checks = gw.authz_checks()
    resp = gw.get("/tk/me", cookies={"wg_session": session})
    assert resp.status_code == 200 and gw.authz_checks() == checks + 1
    fresh = _set_cookies(resp)["wg_ticket"]
    assert "HttpOnly" in fresh and "SameSite=Lax" in fresh
    ticket = resp.cookies["wg_ticket"]
    assert gw.get("/tk/me", envoy=1, cookies={"wg_ticket": ticket}).status_code == 200
    # A write always asks ext_authz (the CSRF rule); a ticket with most of its life left is
    # not renewed.
    checks = gw.authz_checks()
    write = httpx.post(
        gw.bases[0] + "/tk/me", cookies={"wg_session": session, "wg_ticket": ticket}, timeout=5
    )
    assert write.status_code == 200 and gw.authz_checks() == checks + 1
    assert "wg_ticket" not in _set_cookies(write)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _part(token: str, i: int) -> dict[str, Any]:
    raw = token.split(".")[i]
    return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: str) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{signature}"


@pytest.fixture(scope="module")
def test_key(gw: Gateway) -> Any:
    """A key of the test's own, published in Redis like a wardgate process's (whoever can
    write to Redis is trusted): tickets the test signs with it are verified by Envoy."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid="test-key", alg="ES256", use="sig")

    async def publish(r: Any) -> None:
        await RedisTicketKeyStore(redis=r, keys=Keys("wardgate:")).publish(
            PublishedKey("test-key", jwk, time.time(), time.time() + 600)
        )

    with_redis(gw.stack.redis_url, publish)
    return key


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    head = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{head}.{_b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())}"


def _published_jwk(gw: Gateway, kid: str) -> dict[str, Any]:
    async def read(r: Any) -> dict[str, Any]:
        keys = await RedisTicketKeyStore(redis=r, keys=Keys("wardgate:")).live(now=time.time())
        return dict(next(k.jwk for k in keys if k.kid == kid))

    found: dict[str, Any] = with_redis(gw.stack.redis_url, read)
    return found


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "urn:wardgate:ticket",
        "aud": "wardgate",
        "sub": "ann",
        "sid": "1" * 32,
        "roles": ["user"],
        "rls": "user",
        "am": "session",
        "iat": now,
        "exp": now + 30,
        **extra,
    }


def _signed(key: Any, **extra: Any) -> str:
    return jwt.encode(_claims(**extra), key, algorithm="ES256", headers={"kid": "test-key"})


def test_tampered_expired_wrong_key_and_unsigned_tickets_are_refused(
    gw: Gateway, test_key: Any
) -> None:
    # The test's key is trusted (a control): what it signs rightly passes.
    eventually(
        lambda: gw.get("/tk/me", cookies={"wg_ticket": _signed(test_key)}).status_code == 200,
        timeout=5,
    )
    _, real = gw.login("ann", "ann-password")
    header, claims, signature = _part(real, 0), _part(real, 1), real.split(".")[2]
    now = int(time.time())
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = {
        "tampered": _forge(header, {**claims, "roles": ["user", "admin"]}, signature),
        "other user": _forge(header, {**claims, "sub": "boss"}, signature),
        "wrong key": jwt.encode(claims, stranger, algorithm="ES256", headers=header),
        "alg none": _forge({**header, "alg": "none"}, claims, ""),
        # Algorithm confusion: HMAC keyed with the published public key.
        "HS256 with the public key": _hs256(
            {"alg": "HS256", "typ": "JWT", "kid": header["kid"]},
            claims,
            json.dumps(_published_jwk(gw, header["kid"])).encode(),
        ),
        "expired": _signed(test_key, iat=now - 100, exp=now - 40),
        "not yet valid": _signed(test_key, nbf=now + 60),
        "lives too long": _signed(test_key, exp=now + 3600),
        "no expiry": jwt.encode(
            {k: v for k, v in _claims().items() if k != "exp"},
            test_key,
            algorithm="ES256",
            headers={"kid": "test-key"},
        ),
        "another audience": _signed(test_key, aud="api"),
        "another issuer": _signed(test_key, iss="https://idp.example.com"),
        "unknown kid": jwt.encode(_claims(), test_key, algorithm="ES256", headers={"kid": "x"}),
        "garbage": "a.b.c",
    }
    for what, ticket in forged.items():
        resp = gw.get("/tk/admin", cookies={"wg_ticket": ticket})
        assert resp.status_code == 401, what  # no valid ticket: ext_authz, and no session
        assert resp.json()["error"] == "unauthenticated", what
    # A bearer header is not where tickets are read.
    assert gw.get("/tk/me", headers={"authorization": f"Bearer {real}"}).status_code == 401


def test_roles_are_checked_by_envoy_for_tickets_and_for_what_ext_authz_established(
    gw: Gateway,
) -> None:
    ann_session, ann = gw.login("ann", "ann-password")
    boss_session, boss = gw.login("boss", "boss-password")
    checks = gw.authz_checks()
    denied = gw.get("/tk/admin", cookies={"wg_ticket": ann})
    assert denied.status_code == 403
    assert denied.json() == {
        "error": "forbidden",
        "message": "your roles do not allow this route",
        "request_id": denied.json()["request_id"],
    }
    seen = echo(gw.get("/tk/admin", envoy=1, cookies={"wg_ticket": boss}))["headers"]
    assert seen["x-user-roles"] == "user,admin"
    assert gw.authz_checks() == checks
    assert gw.envoy_stat("http.wardgate.rbac.wardgate_roles.denied") >= 1
    # Without a ticket ext_authz decides, and RBAC accepts the identity it established.
    assert gw.get("/tk/admin", cookies={"wg_session": boss_session}).status_code == 200
    assert gw.get("/tk/admin", cookies={"wg_session": ann_session}).status_code == 403


def test_a_ticket_beside_another_session_lends_it_no_roles(gw: Gateway) -> None:
    """ext_authz decides by the session cookie when the gate does not let the ticket speak (a
    write, two ticket cookies), and checks the route's roles against that session: the roles
    of a ticket carried beside it (stolen, or left over from the browser's previous user)
    lend it nothing, although Envoy's role check alone would accept them."""
    ann_session, ann = gw.login("ann", "ann-password")
    _, boss = gw.login("boss", "boss-password")
    write = httpx.post(
        gw.bases[0] + "/tk/admin", cookies={"wg_session": ann_session, "wg_ticket": boss}
    )
    assert write.status_code == 403, write.text
    two = {"cookie": f"wg_ticket={boss}; wg_ticket={ann}; wg_session={ann_session}"}
    assert gw.get("/tk/admin", envoy=1, headers=two).status_code == 403
    # The control: the ticket alone is its own user, on a read.
    assert gw.get("/tk/admin", cookies={"wg_ticket": boss}).status_code == 200


def test_a_forged_scope_or_session_id_header_changes_nothing(gw: Gateway) -> None:
    _, ann = gw.login("ann", "ann-password")
    for scope in ("1:0", "1:1", "3:66", "wardgate_scope_1_0"):
        forged = {SCOPE_HEADER: scope}
        assert gw.get("/tk/admin", headers=forged, cookies={"wg_ticket": ann}).status_code == 403
        assert gw.get("/tk/admin", headers=forged).status_code == 401
        assert gw.get("/tk/me", headers=forged).status_code == 401
    # The session id header that keys the revocation list is Envoy's own: a client's cannot
    # stand for a ticket where jwt_authn does not run (an API key route) ...
    sid = {"x-wardgate-ticket-sid": "1" * 32}
    assert gw.get("/tk/key", headers=sid, cookies={"wg_ticket": ann}).status_code == 401
    # ... nor get someone else's ticket refused.
    assert gw.get("/tk/me", headers=sid, cookies={"wg_ticket": ann}).status_code == 200


def test_a_ticket_counts_only_where_a_session_does_and_only_alone(gw: Gateway) -> None:
    session, ann = gw.login("ann", "ann-password")
    assert gw.get("/tk/key", cookies={"wg_ticket": ann}).status_code == 401
    assert gw.get("/tk/jwt", cookies={"wg_ticket": ann}).status_code == 401
    assert echo(gw.get("/tk/any", cookies={"wg_ticket": ann}))["headers"]["x-user-id"] == "ann"
    # Another credential beside the ticket: ext_authz decides, in its order (key, bearer).
    bad_key = gw.get("/tk/any", headers={"x-api-key": "nonsense"}, cookies={"wg_ticket": ann})
    assert bad_key.status_code == 401 and bad_key.json()["error"] == "invalid_api_key"
    bearer = gw.get(
        "/tk/any", headers={"authorization": "Bearer x.y.z"}, cookies={"wg_ticket": ann}
    )
    assert bearer.status_code == 401 and bearer.json()["error"] == "invalid_token"
    # Writes need the session (ext_authz applies the CSRF rule).
    assert httpx.post(gw.bases[0] + "/tk/me", cookies={"wg_ticket": ann}).status_code == 401
    foreign = httpx.post(
        gw.bases[0] + "/tk/me",
        headers={"origin": "https://evil.example"},
        cookies={"wg_ticket": ann, "wg_session": session},
    )
    assert foreign.status_code == 403 and foreign.json()["error"] == "csrf"
    # Two ticket cookies (one may be planted by a sibling domain): ext_authz reads the session.
    _, boss = gw.login("boss", "boss-password")
    two = {"cookie": f"wg_ticket={boss}; wg_ticket={ann}"}
    assert gw.get("/tk/admin", headers=two).status_code == 401


def _revoke(gw: Gateway, session: str) -> None:
    id_hash = hashlib.sha256(session.encode()).hexdigest()

    async def body(r: Any) -> None:
        assert await RedisSessionStore(redis=r, keys=Keys("wardgate:")).delete_session(id_hash)

    with_redis(gw.stack.redis_url, body)


def _refused_everywhere(gw: Gateway, ticket: str) -> bool:
    return all(
        gw.get("/tk/me", envoy=e, cookies={"wg_ticket": ticket}).status_code == 401 for e in (0, 1)
    )


def test_limits_by_user_count_the_tickets_user(gw: Gateway) -> None:
    _, ann = gw.login("ann", "ann-password")
    _, ann2 = gw.login("ann", "ann-password")
    _, boss = gw.login("boss", "boss-password")
    codes = [gw.get("/tk/limited", cookies={"wg_ticket": t}).status_code for t in (ann, ann2, ann)]
    assert codes == [200, 200, 429]  # two sessions of one user share the user's budget
    assert gw.get("/tk/limited", cookies={"wg_ticket": boss}).status_code == 200


def test_a_revoked_session_is_refused_by_every_envoy_within_a_second(gw: Gateway) -> None:
    session, ticket = gw.login("ann", "ann-password")
    _, other = gw.login("ann", "ann-password")  # the same user's other session goes on
    for e in (0, 1):
        assert gw.get("/tk/me", envoy=e, cookies={"wg_ticket": ticket}).status_code == 200
    _revoke(gw, session)
    started = time.monotonic()
    eventually(lambda: _refused_everywhere(gw, ticket), timeout=3, interval=0.01)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"revocation took {elapsed:.3f} s to reach both Envoys"
    refused = gw.get("/tk/me", envoy=1, cookies={"wg_ticket": ticket})
    assert refused.json()["error"] == "unauthenticated"
    assert refused.headers["www-authenticate"].startswith("Cookie")
    assert _set_cookies(refused)["wg_ticket"].startswith("wg_ticket=; Max-Age=0")
    assert gw.get("/tk/me", envoy=1, cookies={"wg_ticket": other}).status_code == 200
    assert gw.envoy_stat("http.wardgate.rbac.wardgate_revoked.denied") >= 1
    # All of a user's sessions, from the CLI.
    _, cids = gw.login("cid", "cid-password")
    assert gw.stack.cli("sessions", "revoke", "--user", "cid").returncode == 0
    eventually(lambda: _refused_everywhere(gw, cids), timeout=1.0, interval=0.01)


def test_a_revocation_racing_ticket_refreshes_leaves_no_ticket_alive(gw: Gateway) -> None:
    session, first = gw.login("boss", "boss-password")
    minted: list[tuple[float, str]] = [(time.monotonic(), first)]
    stop = threading.Event()

    def refresh(base: str) -> None:
        with httpx.Client(base_url=base, timeout=5) as http:
            while not stop.is_set():
                # No ticket: ext_authz checks the session and mints a fresh one each time.
                http.cookies.clear()
                resp = http.get("/tk/me", headers={"cookie": f"wg_session={session}"})
                if "wg_ticket" in resp.cookies:
                    minted.append((time.monotonic(), resp.cookies["wg_ticket"]))

    threads = [threading.Thread(target=refresh, args=(b,)) for b in gw.bases]
    for t in threads:
        t.start()
    try:
        time.sleep(0.6)
        _revoke(gw, session)
        revoked_at = time.monotonic()
        time.sleep(0.4)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(minted) > 5
    assert any(revoked_at - 0.3 < at < revoked_at for at, _ in minted)  # refreshes raced it
    time.sleep(max(0.0, revoked_at + 1.0 - time.monotonic()))
    with ThreadPoolExecutor(max_workers=8) as pool:
        refused = list(pool.map(lambda t: _refused_everywhere(gw, t), [t for _, t in minted]))
    assert all(refused), f"{refused.count(False)} of {len(refused)} tickets still pass"


def _token(**extra: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://idp.example.com",
        "aud": "api",
        "sub": "ada",
        "exp": now + 300,
        "iat": now,
        "groups": ["reader", "x,admin", "ok:role"],
        **extra,
    }
    return jwt.encode(claims, ISSUER_KEY, algorithm="RS256", headers={"kid": "r1"})


def test_issuer_jwts_are_verified_by_envoy_and_odd_ones_left_to_ext_authz(gw: Gateway) -> None:
    checks = gw.authz_checks()
    seen = echo(gw.get("/tk/jwt", envoy=1, headers={"authorization": f"Bearer {_token()}"}))
    assert (
        seen["headers"]["x-user-id"],
        seen["headers"]["x-user-roles"],
        seen["headers"]["x-auth-method"],
    ) == ("ada", "reader,ok:role", "jwt")
    assert seen["headers"]["authorization"].startswith("Bearer ")  # forwarded, as before
    denied = gw.get("/tk/jwt", headers={"authorization": f"Bearer {_token(groups='writer')}"})
    assert denied.status_code == 403 and "roles" in denied.json()["message"]
    assert gw.authz_checks() == checks  # Envoy decided all three
    # What Envoy cannot decide goes to ext_authz, which refuses or accepts as before.
    injected = _token(sub="ada\r\nx-user-roles: admin")
    bad = gw.get("/tk/jwt", headers={"authorization": f"Bearer {injected}"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_token"
    now = int(time.time())
    shared = jwt.encode(
        {
            "iss": "https://hs.example.com",
            "aud": "api",
            "sub": "hs",
            "exp": now + 60,
            "roles": ["reader"],
        },
        HS_SECRET,
        algorithm="HS256",
    )
    assert echo(gw.get("/tk/jwt", headers={"authorization": f"Bearer {shared}"}))
    assert gw.authz_checks() >= checks + 2
    expired = _token(exp=now - 600, iat=now - 900)
    assert gw.get("/tk/jwt", headers={"authorization": f"Bearer {expired}"}).status_code == 401


def test_fast_path_decisions_are_counted(gw: Gateway) -> None:
    session, ticket = gw.login("ann", "ann-password")
    for _ in range(2):  # verified once, then from Envoy's cache
        assert gw.get("/tk/me", cookies={"wg_ticket": ticket}).status_code == 200
    # The session alone goes to ext_authz, which sets a fresh ticket (counted as authz).
    assert gw.get("/tk/me", cookies={"wg_session": session}).status_code == 200
    for name in (
        "http.wardgate.ext_authz.disabled",
        "http.wardgate.rbac.wardgate_native.shadow_allowed",
        "http.wardgate.jwt_authn.jwt_cache_hit",
        "http.wardgate.rbac.wardgate_revoked.allowed",
    ):
        assert gw.envoy_stat(name) > 0, name
    text = httpx.get(f"http://127.0.0.1:{gw.stack.http_port}/metrics", timeout=5).text
    assert re.search(r'^wardgate_tickets_issued_total\{where="login"\} [1-9]', text, re.M)
    assert re.search(r'^wardgate_tickets_issued_total\{where="authz"\} [1-9]', text, re.M)
    assert re.search(r"^wardgate_ticket_keys [2-9]", text, re.M)  # one key per worker


def _usage_by_user(s: Stack) -> dict[str, int]:
    result = s.cli("usage", "-o", "json", "--by", "user", "--since", "1h")
    assert result.returncode == 0, result.stderr
    return {str(e["key"]): int(e["requests"]) for e in json.loads(result.stdout)}


def test_fast_path_requests_are_metered_and_limited_under_their_user(gw: Gateway) -> None:
    """What Envoy decided alone reaches the statistics under the ticket's or the JWT's user
    (from the verifying filters' metadata): usage per user, the rate-limited clients, the
    refusal log, `wardgate top`; not under nobody, nor under the client's address."""
    s = gw.stack
    tag = uuid.uuid4().hex[:6]
    user, jwt_user = f"fp-{tag}", f"fj-{tag}"
    added = s.cli("users", "add", user, "--role", "user", "--password-stdin", stdin="pw-" + tag)
    assert added.returncode == 0, added.stderr
    _, ticket = gw.login(user, "pw-" + tag)
    assert ticket
    bearer = {"authorization": f"Bearer {_token(sub=jwt_user)}"}
    checks = gw.authz_checks()
    disabled = gw.envoy_stat("http.wardgate.ext_authz.disabled")
    for _ in range(5):
        assert echo(gw.get("/tk/me", cookies={"wg_ticket": ticket}))["headers"]["x-user-id"] == user
    for _ in range(3):
        assert echo(gw.get("/tk/jwt", headers=bearer))["headers"]["x-user-id"] == jwt_user
    limited = [gw.get("/tk/limited", cookies={"wg_ticket": ticket}) for _ in range(3)]
    assert [r.status_code for r in limited] == [200, 200, 429]
    # Envoy decided all eleven: no callout, ext_authz skipped every time.
    assert gw.authz_checks() == checks
    assert gw.envoy_stat("http.wardgate.ext_authz.disabled") >= disabled + 11

    def metered() -> bool:
        by_user = _usage_by_user(s)
        return (by_user.get(user), by_user.get(jwt_user)) == (8, 3)

    eventually(metered, timeout=20, interval=0.5)
    client = f"user:{user}"

    def named() -> bool:
        text = httpx.get(f"http://127.0.0.1:{s.http_port}/metrics", timeout=5).text
        return (
            re.search(
                rf'^wardgate_ratelimited_client_requests\{{client="{client}"\}} 1\.0$', text, re.M
            )
            is not None
        )

    eventually(named, timeout=20, interval=0.5)
    request_id = limited[-1].json()["request_id"]
    line = f"refused rate_limited: 429 tk-limited by {client} ({request_id})"
    eventually(lambda: line in (s.workdir / "wardgate.log").read_text(), timeout=10)
    top = s.cli("top", "--once", "--interval", "1")
    assert top.returncode == 0, top.stderr
    assert client in top.stdout, top.stdout


# --- stacks of their own ----------------------------------------------------------------------


def _dumped_kids(s: Stack) -> set[str]:
    """The ticket key ids in Envoy's filter configurations (ECDS)."""
    dump = httpx.get(
        f"http://127.0.0.1:{s.admin_port}/config_dump?resource=ecds_filters", timeout=5
    )
    return set(re.findall(r"wg-[A-Za-z0-9_-]{16}", dump.text))


@pytest.fixture
def lone_gw(private_stack: Stack) -> Iterator[Gateway]:
    """A stack of its own with one Envoy."""
    g = Gateway(private_stack, private_stack.listen_port)
    try:
        yield g
    finally:
        g.close()


def test_keys_rotate_without_a_drain_a_ticket_outlives_wardgate_and_tickets_turn_off(
    lone_gw: Gateway,
) -> None:
    gw = lone_gw
    s = gw.stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate(
        extra_env={
            **FAST,
            "WARDGATE_TICKET_KEY_ROTATION": "5s",
            "WARDGATE_TICKET_TTL": "5s",
            "WARDGATE_TICKET_CLOCK_SKEW": "1s",
        }
    )
    _users(s)
    s.apply(route("rot-me", "/rot/me", "echo", auth={"require": "session"}))
    eventually(lambda: gw.get("/rot/me").status_code == 401, timeout=20)
    modified = gw.envoy_stat("listener_manager.listener_modified")
    session = eventually(
        lambda: (c := gw.login("ann", "ann-password")) and c[1] and c[0], timeout=20
    )
    first_seen: dict[str, float] = {}  # kid -> when Envoy had it
    first_used: dict[str, float] = {}  # kid -> when a ticket signed with it was first seen
    last: tuple[str, str] | None = None  # the last ticket: (kid, ticket)
    honoured = 0  # rotations after which the previous key's last ticket still passed
    deadline = time.monotonic() + 13
    while time.monotonic() < deadline:
        for kid in _dumped_kids(s):
            first_seen.setdefault(kid, time.monotonic())
        resp = gw.get("/rot/me", cookies={"wg_session": session})  # a fresh ticket each time
        assert resp.status_code == 200
        ticket = resp.cookies.get("wg_ticket")
        if ticket:
            kid = jwt.get_unverified_header(ticket)["kid"]
            first_used.setdefault(kid, time.monotonic())
            if last is not None and last[0] != kid:
                # The key just rotated; the previous one is kept for its tickets' lifetime.
                old = gw.get("/rot/me", cookies={"wg_ticket": last[1]})
                assert old.status_code == 200, old.text
                honoured += 1
            last = (kid, ticket)
        time.sleep(0.1)
    assert len(first_used) >= 2 and honoured >= 1, first_used  # the key rotated (5 s windows)
    for kid, at in first_used.items():
        assert kid in first_seen and first_seen[kid] < at, kid  # published before it signed
    # No listener was replaced or drained: keys travel over ECDS.
    assert gw.envoy_stat("listener_manager.listener_modified") == modified
    assert gw.envoy_stat("listener_manager.total_listeners_draining") == 0

    # wardgate stops: a ticketed request still passes until the ticket expires; without a
    # ticket, the route fails closed.
    resp = gw.get("/rot/me", cookies={"wg_session": session})
    ticket = resp.cookies["wg_ticket"]
    expires = jwt.decode(ticket, options={"verify_signature": False})["exp"]
    devstack.stop(s.procs.pop("wardgate"))
    assert gw.get("/rot/me", cookies={"wg_ticket": ticket}).status_code == 200
    unavailable = gw.get("/rot/me", cookies={"wg_session": session})
    assert unavailable.status_code == 503 and unavailable.json()["error"] == "unavailable"
    # Envoy counts whole seconds and accepts a ticket until exp + skew (1 s here) inclusive.
    time.sleep(max(0.0, expires + 2.3 - time.time()))
    assert gw.get("/rot/me", cookies={"wg_ticket": ticket}).status_code == 503

    # Tickets turned off: no ticket at login, every request is decided by ext_authz.
    s.start_wardgate(extra_env={"WARDGATE_TICKETS": "false"})
    eventually(lambda: gw.get("/rot/me").status_code == 401, timeout=20)
    session, ticket = gw.login("ann", "ann-password")
    assert ticket == ""
    checks = gw.authz_checks()
    again = gw.get("/rot/me", cookies={"wg_session": session})
    assert again.status_code == 200 and "wg_ticket" not in again.cookies
    assert gw.authz_checks() == checks + 1
