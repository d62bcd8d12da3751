"""Sessions, roles and identity headers, through a real Envoy."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import Stack, echo, eventually, route
from wardgate import devstack

pytestmark = pytest.mark.e2e
SPOOFED = {"x-user-id": "mallory", "x-user-roles": "admin", "x-auth-method": "session"}


@pytest.fixture(scope="module")
def auth_routes(stack: Stack) -> Stack:
    for name, password, roles in (
        ("alice", "alice-password", ["user"]),
        ("root", "root-password", ["admin", "user"]),
    ):
        args = ["users", "add", name, "--password-stdin"] + [
            a for r in roles for a in ("--role", r)
        ]
        result = stack.cli(*args, stdin=password + "\n")
        assert result.returncode == 0, result.stderr
    stack.apply(
        route("au-public", "/au/public", "echo"),
        route("au-me", "/au/me", "echo", auth={"require": "session"}),
        route(
            "au-admin",
            "/au/admin",
            "echo",
            auth={"require": "session", "roles": ["admin"]},
            cors={"allow_origins": ["https://app.example.com"]},
        ),
    )
    with stack.client() as http:
        eventually(lambda: http.get("/au/public").status_code == 200, timeout=3)
        eventually(lambda: http.get("/au/admin").status_code == 401, timeout=3)
    return stack


@contextlib.contextmanager
def login(stack: Stack, user: str, password: str) -> Iterator[httpx.Client]:
    with stack.client() as client:
        resp = client.post("/auth/login", json={"username": user, "password": password})
        assert resp.status_code == 200, resp.text
        yield client


def test_login_sets_a_strict_opaque_cookie(auth_routes: Stack) -> None:
    with auth_routes.client() as http:
        resp = http.post("/auth/login", json={"username": "alice", "password": "alice-password"})
    assert resp.status_code == 200
    assert resp.json()["user"] == "alice" and resp.json()["roles"] == ["user"]
    cookie = resp.headers["set-cookie"]
    value = cookie.split(";")[0].split("=", 1)[1]
    assert cookie.startswith("wg_session=")
    assert len(value) == 43  # 256 bits, URL-safe base64
    for attr in ("HttpOnly", "SameSite=Lax", "Path=/"):
        assert attr in cookie
    # Redis keeps only the hash of the id.
    keys = auth_routes.redis().keys(f"{auth_routes.prefix}session:*")
    assert keys and all(value not in k for k in keys)


def test_wrong_credentials_get_401_and_no_cookie(auth_routes: Stack) -> None:
    with auth_routes.client() as http:
        for body in (
            {"username": "alice", "password": "nope"},
            {"username": "nobody", "password": "x"},
        ):
            resp = http.post("/auth/login", json=body)
            assert resp.status_code == 401
            assert "set-cookie" not in resp.headers
            assert resp.json()["error"] == "invalid_credentials"
        assert (
            http.post(
                "/auth/login", content=b"{not json", headers={"content-type": "application/json"}
            ).status_code
            == 400
        )
        assert http.post("/auth/login", json={"username": 1, "password": []}).status_code == 400


def test_protected_route_without_session_is_401_with_json(auth_routes: Stack) -> None:
    with auth_routes.client() as http:
        resp = http.get("/au/me")
        assert resp.status_code == 401
        assert resp.json()["error"] == "unauthenticated"
        assert resp.json()["request_id"]
        for bad in (b"garbage", b"a" * 43, b"x" * 5000, b"wg_session=", "\u00e9".encode() * 10):
            http.cookies.clear()
            resp = http.get("/au/me", headers={"cookie": b"wg_session=" + bad})
            assert resp.status_code == 401, bad


def test_session_without_the_role_is_403_and_with_it_200_with_identity(auth_routes: Stack) -> None:
    with login(auth_routes, "alice", "alice-password") as alice:
        assert alice.get("/au/admin").status_code == 403
        assert alice.get("/au/admin").json()["error"] == "forbidden"
        seen = echo(alice.get("/au/me"))["headers"]
        assert (seen["x-user-id"], seen["x-user-roles"], seen["x-auth-method"]) == (
            "alice",
            "user",
            "session",
        )
        assert "x-request-id" in seen
        assert "wg_session" not in seen.get("cookie", "")
    with login(auth_routes, "root", "root-password") as root:
        seen = echo(root.get("/au/admin"))["headers"]
        assert seen["x-user-id"] == "root" and seen["x-user-roles"] == "admin,user"


def test_client_sent_identity_headers_never_reach_the_upstream(auth_routes: Stack) -> None:
    with auth_routes.client() as anon:
        seen = echo(anon.get("/au/public", headers=SPOOFED))["headers"]
        assert not set(SPOOFED) & set(seen)
    with login(auth_routes, "alice", "alice-password") as alice:
        seen = echo(alice.get("/au/me", headers=SPOOFED))["headers"]
        assert seen["x-user-id"] == "alice" and seen["x-user-roles"] == "user"
        seen = echo(alice.get("/au/public", headers={**SPOOFED, "cookie": "theme=dark"}))["headers"]
        assert not set(SPOOFED) & set(seen)


def test_the_session_cookie_never_reaches_an_upstream_public_routes_included(
    auth_routes: Stack,
) -> None:
    with login(auth_routes, "alice", "alice-password") as alice:
        alice.cookies.set("theme", "dark")
        seen = echo(alice.get("/au/public"))["headers"]
        assert seen["cookie"] == "theme=dark"
        only = echo(
            alice.get("/au/public", headers={"cookie": f"wg_session={alice.cookies['wg_session']}"})
        )
        assert "cookie" not in only["headers"]
        assert alice.get("/auth/session").status_code == 200  # wardgate's own routes keep it


def test_other_cookies_still_reach_the_upstream(auth_routes: Stack) -> None:
    with login(auth_routes, "alice", "alice-password") as alice:
        alice.cookies.set("theme", "dark")
        seen = echo(alice.get("/au/me"))["headers"]
        assert "theme=dark" in seen["cookie"] and "wg_session" not in seen["cookie"]


def _cookies_upstream_got(response: httpx.Response) -> list[str]:
    """Every Cookie header line the echo upstream received."""
    return [value for name, value in echo(response)["header_list"] if name == "cookie"]


def _two_cookie_headers(sid: str) -> list[list[tuple[str, str]]]:
    return [
        [("cookie", "theme=dark"), ("cookie", f"wg_session={sid}")],
        [("cookie", f"wg_session={sid}"), ("cookie", "theme=dark")],
        [("cookie", f"theme=dark;wg_session={sid}"), ("cookie", "lang=en")],
        [("cookie", "theme=dark,x"), ("cookie", f"lang=en;  wg_session ={sid}")],
        [("cookie", "theme=dark"), ("cookie", f"wg_session={sid}"), ("cookie", "lang=en")],
    ]


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_several_cookie_headers_never_bring_the_session_cookie_upstream(
    auth_routes: Stack, http2: bool
) -> None:
    """Over HTTP/1.1 Envoy passes two Cookie headers on as two lines (ext_authz and Lua's
    get() see them joined with ","); over HTTP/2 it joins the cookie entries with "; "."""
    with login(auth_routes, "alice", "alice-password") as alice:
        sid = alice.cookies["wg_session"]
    with auth_routes.client(http1=not http2, http2=http2) as http:
        for headers in _two_cookie_headers(sid):
            for path in ("/au/public", "/au/me"):
                resp = http.get(path, headers=headers)
                assert resp.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                got = _cookies_upstream_got(resp)
                assert got and all(sid not in v and "wg_session" not in v for v in got), got
                assert "theme=dark" in "".join(got), (headers, got)
                if path == "/au/me":  # the session is read from whichever header holds it
                    assert echo(resp)["headers"]["x-user-id"] == "alice"
            # wardgate's own endpoint reads the same session as ext_authz does.
            assert http.get("/auth/session", headers=headers).json()["user"] == "alice"


def test_two_different_session_cookies_are_no_session_anywhere(auth_routes: Stack) -> None:
    with (
        login(auth_routes, "alice", "alice-password") as a,
        login(auth_routes, "root", "root-password") as r,
    ):
        mine, other = a.cookies["wg_session"], r.cookies["wg_session"]
    with auth_routes.client() as http:
        for headers in (
            [("cookie", f"wg_session={other}"), ("cookie", f"wg_session={mine}")],
            [("cookie", f"wg_session={other}; wg_session={mine}")],
        ):
            assert http.get("/au/me", headers=headers).status_code == 401
            assert http.get("/auth/session", headers=headers).status_code == 401
            got = _cookies_upstream_got(http.get("/au/public", headers=headers))
            assert got == []


def test_logout_finds_the_session_in_a_second_cookie_header(auth_routes: Stack) -> None:
    with login(auth_routes, "alice", "alice-password") as alice:
        sid = alice.cookies["wg_session"]
    with auth_routes.client() as http:
        headers = [("cookie", "theme=dark"), ("cookie", f"wg_session={sid}")]
        assert http.get("/au/me", headers=headers).status_code == 200
        assert http.post("/auth/logout", headers=headers).status_code == 204
        assert http.get("/au/me", headers=headers).status_code == 401


def test_a_revoked_session_ends_on_every_worker_within_a_second(private_stack: Stack) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate("--workers", "2")
    assert s.cli("users", "add", "wk", "--password-stdin", stdin="wk-password\n").returncode == 0
    s.apply(route("wk-me", "/wk-me", "echo", auth={"require": "session"}))
    with s.client() as http:
        eventually(
            lambda: (
                http.post(
                    "/auth/login", json={"username": "wk", "password": "wk-password"}
                ).status_code
                == 200
            ),
            timeout=10,
        )
        eventually(lambda: http.get("/wk-me").status_code == 200, timeout=5)
        for _ in range(20):  # warm both workers' caches (connections spread over them)
            with s.client(cookies=http.cookies) as c:
                assert c.get("/wk-me").status_code == 200
        sid = s.cli("sessions", "list", "--user", "wk").stdout.splitlines()[-1].split()[0]
        assert s.cli("sessions", "revoke", sid).returncode == 0
        started = time.monotonic()

        def everywhere() -> bool:
            for _ in range(10):
                with s.client(cookies=http.cookies) as c:
                    if c.get("/wk-me").status_code != 401:
                        return False
            return True

        eventually(everywhere, timeout=1.0, interval=0.02)
        assert time.monotonic() - started < 1.0


def test_logout_ends_the_session(auth_routes: Stack) -> None:
    with login(auth_routes, "alice", "alice-password") as alice:
        assert alice.get("/auth/session").json()["user"] == "alice"
        cookie = alice.cookies["wg_session"]
        assert alice.post("/auth/logout").status_code == 204
        assert alice.get("/au/me", headers={"cookie": f"wg_session={cookie}"}).status_code == 401
        assert (
            alice.get("/auth/session", headers={"cookie": f"wg_session={cookie}"}).status_code
            == 401
        )


def test_revoking_a_users_sessions_from_the_cli(auth_routes: Stack) -> None:
    with login(auth_routes, "alice", "alice-password") as alice:
        assert alice.get("/au/me").status_code == 200
        listed = auth_routes.cli("sessions", "list", "--user", "alice")
        assert listed.returncode == 0 and "alice" in listed.stdout
        result = auth_routes.cli("sessions", "revoke", "--user", "alice")
        assert result.returncode == 0, result.stderr
        # Workers cache sessions; the revocation reaches them by pub/sub within the second.
        eventually(lambda: alice.get("/au/me").status_code == 401, timeout=1.0, interval=0.02)


def test_cross_site_unsafe_request_with_session_cookie_is_403(auth_routes: Stack) -> None:
    with login(auth_routes, "root", "root-password") as root:
        host = f"127.0.0.1:{auth_routes.listen_port}"
        assert (
            root.post("/au/admin", headers={"origin": "https://evil.example"}).json()["error"]
            == "csrf"
        )
        assert root.post("/au/admin", headers={"origin": "https://evil.example"}).status_code == 403
        assert root.post("/au/admin", headers={"origin": f"http://{host}"}).status_code == 200
        assert (
            root.post("/au/admin", headers={"origin": "https://app.example.com"}).status_code == 200
        )
        assert root.get("/au/admin", headers={"origin": "https://evil.example"}).status_code == 200


def test_only_http_and_https_origins_can_be_the_gateway(auth_routes: Stack) -> None:
    with login(auth_routes, "root", "root-password") as root:
        host = f"127.0.0.1:{auth_routes.listen_port}"
        for foreign in (f"ftp://{host}", f"https://{host}", "null", f"http://{host}.evil.example"):
            resp = root.post("/au/admin", headers={"origin": foreign})
            assert resp.status_code == 403, foreign
            assert resp.json()["error"] == "csrf"
        assert root.post("/au/admin", headers={"referer": f"ftp://{host}/x"}).status_code == 403
        assert root.post("/au/admin", headers={"origin": f"http://{host}"}).status_code == 200


def test_logout_from_a_foreign_origin_is_403_and_the_session_still_works(
    auth_routes: Stack,
) -> None:
    host = f"127.0.0.1:{auth_routes.listen_port}"
    with login(auth_routes, "alice", "alice-password") as alice:
        for foreign in ("https://evil.example", f"ftp://{host}", "null", f"https://{host}"):
            resp = alice.post("/auth/logout", headers={"origin": foreign})
            assert resp.status_code == 403, foreign
            assert resp.json()["error"] == "csrf" and "set-cookie" not in resp.headers
        resp = alice.post("/auth/logout", headers={"referer": "https://evil.example/page"})
        assert resp.status_code == 403
        assert alice.get("/au/me").status_code == 200
        assert alice.get("/auth/session").json()["user"] == "alice"
        cookie = alice.cookies["wg_session"]
        assert alice.post("/auth/logout", headers={"origin": f"http://{host}"}).status_code == 204
        assert alice.get("/au/me", headers={"cookie": f"wg_session={cookie}"}).status_code == 401


def test_behind_a_tls_proxy_an_http_origin_is_not_the_gateway(private_stack: Stack) -> None:
    """With trusted_proxy_hops, Envoy keeps the proxy's x-forwarded-proto: the client used
    https, so a page on http://<host> is foreign (ext_authz and logout alike)."""
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate(extra_env={"WARDGATE_TRUSTED_PROXY_HOPS": "1"})
    assert s.cli("users", "add", "tp", "--password-stdin", stdin="tp-password\n").returncode == 0
    s.apply(route("tp-me", "/tp-me", "echo", auth={"require": "session"}))
    https = {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.7"}
    host = f"127.0.0.1:{s.listen_port}"
    with s.client(headers=https) as http:
        credentials = {"username": "tp", "password": "tp-password"}
        eventually(
            lambda: http.post("/auth/login", json=credentials).status_code == 200, timeout=10
        )
        # The cookie is Secure now: httpx would not send it over plain http by itself.
        http.headers["cookie"] = f"wg_session={http.cookies['wg_session']}"
        eventually(lambda: echo(http.get("/tp-me"))["headers"]["x-forwarded-proto"] == "https")
        assert http.post("/tp-me", headers={"origin": f"http://{host}"}).status_code == 403
        assert http.post("/tp-me", headers={"origin": f"https://{host}"}).status_code == 200
        assert http.post("/auth/logout", headers={"origin": f"http://{host}"}).status_code == 403
        assert http.get("/tp-me").status_code == 200
        assert http.post("/auth/logout", headers={"origin": f"https://{host}"}).status_code == 204
        assert http.get("/tp-me").status_code == 401


def test_repeated_failed_logins_for_one_name_are_throttled(private_stack: Stack) -> None:
    s = private_stack
    devstack.stop(s.procs.pop("wardgate"))
    s.start_wardgate(extra_env={"WARDGATE_LOGIN_FAILURES_PER_USER": "3"})
    assert (
        s.cli("users", "add", "victim", "--password-stdin", stdin="right-password\n").returncode
        == 0
    )
    with s.client() as http:
        eventually(
            lambda: (
                http.post("/auth/login", json={"username": "x", "password": "y"}).status_code == 401
            ),
            timeout=10,
        )
        for name in ("victim", "nobody-at-all"):
            for _ in range(3):
                assert (
                    http.post(
                        "/auth/login", json={"username": name, "password": "wrong"}
                    ).status_code
                    == 401
                )
            blocked = http.post(
                "/auth/login", json={"username": name, "password": "right-password"}
            )
            assert blocked.status_code == 429
            assert blocked.json()["error"] == "too_many_attempts"
            assert 0 < int(blocked.headers["retry-after"]) <= 900
        # Another name is not affected.
        assert (
            http.post("/auth/login", json={"username": "other", "password": "x"}).status_code == 401
        )


@pytest.mark.parametrize(
    "username",
    [
        "\u00e9l\u00e8ve",
        "\u7528\u6237",
        "a" * 129,
        "a" * 10_000,
        "",
        " ",
        "alice\x00",
        "'; DROP TABLE users;--",
    ],
)
def test_odd_user_names_get_the_plain_401(auth_routes: Stack, username: str) -> None:
    with auth_routes.client() as http:
        resp = http.post("/auth/login", json={"username": username, "password": "whatever"})
    assert resp.status_code in (401, 413), resp.text
    assert "set-cookie" not in resp.headers


def test_logins_from_one_address_are_limited_by_envoy(private_stack: Stack) -> None:
    # A stack of its own: the limit is per client address and minute, and every test here
    # comes from 127.0.0.1.
    codes = []
    with private_stack.client() as http:
        for i in range(62):  # a minute boundary may reset the count once, never twice
            resp = http.post("/auth/login", json={"username": f"nobody{i}", "password": "x"})
            codes.append(resp.status_code)
            if resp.status_code == 429:
                assert resp.json()["error"] == "rate_limited"
                break
    assert codes[-1] == 429, codes
    assert set(codes[:-1]) == {401}
    assert len(codes) - 1 <= 60  # at most 30 per minute (two windows at worst)


def test_login_only_takes_json_so_a_cross_site_form_cannot_log_a_browser_in(
    auth_routes: Stack,
) -> None:
    body = '{"username":"alice","password":"alice-password","x":"="}'
    with auth_routes.client() as http:
        form = http.post("/auth/login", content=body, headers={"content-type": "text/plain"})
        assert form.status_code == 415 and "set-cookie" not in form.headers
        assert (
            http.post(
                "/auth/login", content=body, headers={"content-type": "application/json"}
            ).status_code
            == 200
        )
