"""wardgate's /auth/* handlers on their own (aiohttp's test server, a fake session service):
they read cookies, Origin and the scheme as ext_authz does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import test_utils
from multidict import CIMultiDict

from wardgate.domain.sessions import Identity, LoginResult
from wardgate.domain.tickets import PublishedKey, TicketPolicy, TicketSigner
from wardgate.http.app import create_app
from wardgate.metrics import create_metrics

GW = "gw.example.com"
SID = "A" * 43
NEW_SID = "B" * 43
ALICE = Identity("alice", ("user",), "session", 4_000_000_000.0)


class FakeSessions:
    """The three calls the handlers make, with one live session (SID)."""

    def __init__(self) -> None:
        self.live = {SID: ALICE}
        self.asked: list[str | None] = []

    async def resolve(self, session_id: str | None) -> Identity | None:
        self.asked.append(session_id)
        return self.live.get(session_id or "")

    async def logout(self, session_id: str | None) -> bool:
        return self.live.pop(session_id or "", None) is not None

    async def login(self, username: str, password: str) -> LoginResult | None:
        return LoginResult(NEW_SID, ALICE) if password == "right" else None


async def _ready() -> tuple[bool, str]:
    return True, ""


class Reply:
    def __init__(self, status: int, body: Any, headers: CIMultiDict[str], metrics: bytes) -> None:
        self.status, self.body, self.headers, self.metrics = status, body, headers, metrics


def call(
    sessions: FakeSessions,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    json: Any = None,
    tickets: TicketSigner | None = None,
) -> Reply:
    """One request to a fresh app (no cookie jar carried over), ``Host: gw.example.com``."""

    async def main() -> Reply:
        metrics = create_metrics()
        app = create_app(
            sessions=sessions,  # type: ignore[arg-type]
            metrics=metrics,
            cookie_name="wg_session",
            cookie_secure=False,
            ready=_ready,
            tickets=tickets,
        )
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            sent = CIMultiDict([("host", GW), *headers])
            resp = await client.request(method, path, headers=sent, json=json)
            body = await resp.json() if resp.content_type == "application/json" else None
            exposition = await (await client.get("/metrics")).read()
            return Reply(resp.status, body, CIMultiDict(resp.headers), exposition)

    return asyncio.run(main())


def logout(sessions: FakeSessions, *headers: tuple[str, str]) -> Reply:
    return call(sessions, "POST", "/auth/logout", [("cookie", f"wg_session={SID}"), *headers])


@pytest.mark.parametrize(
    "headers",
    [
        [("origin", "https://evil.example")],
        [("origin", "null")],
        [("origin", f"ftp://{GW}")],
        [("origin", f"http://{GW}"), ("x-forwarded-proto", "https")],
        [("origin", f"https://{GW}"), ("origin", "https://evil.example")],  # read as Envoy joins
        [("referer", "https://evil.example/page")],
    ],
)
def test_logout_from_a_foreign_origin_is_403_and_the_session_stays(
    headers: list[tuple[str, str]],
) -> None:
    sessions = FakeSessions()
    reply = logout(sessions, *headers)
    assert reply.status == 403
    assert reply.body["error"] == "csrf" and reply.body["request_id"]
    assert "set-cookie" not in reply.headers
    assert SID in sessions.live
    assert b'wardgate_logouts_total{result="csrf"} 1.0' in reply.metrics


@pytest.mark.parametrize(
    "headers",
    [
        [("origin", f"http://{GW}")],  # wardgate is reached over plain http here
        [("origin", f"https://{GW}"), ("x-forwarded-proto", "https")],
        [("origin", f"HTTPS://{GW.upper()}:443"), ("x-forwarded-proto", "HTTPS")],
        [("referer", f"http://{GW}/app/page")],
        [],  # neither Origin nor Referer: as for every other request
    ],
)
def test_logout_from_the_gateways_own_origin_ends_the_session(
    headers: list[tuple[str, str]],
) -> None:
    sessions = FakeSessions()
    reply = logout(sessions, *headers)
    assert reply.status == 204
    assert SID not in sessions.live
    assert "wg_session=" in reply.headers["set-cookie"]
    assert b'wardgate_logouts_total{result="ok"} 1.0' in reply.metrics


def test_logout_from_a_foreign_origin_is_refused_without_the_cookie_too() -> None:
    """A cross-site POST does not carry a SameSite=Lax cookie, but the answer would clear it."""
    reply = call(FakeSessions(), "POST", "/auth/logout", [("origin", "https://evil.example")])
    assert reply.status == 403 and "set-cookie" not in reply.headers


def test_logout_and_session_read_the_cookie_from_every_cookie_header() -> None:
    sessions = FakeSessions()
    two = [("cookie", "theme=dark"), ("cookie", f"wg_session={SID}")]
    assert call(sessions, "GET", "/auth/session", two).body["user"] == "alice"
    assert sessions.asked == [SID]
    assert call(sessions, "POST", "/auth/logout", two).status == 204
    assert SID not in sessions.live


def test_two_different_session_cookies_are_no_session() -> None:
    sessions = FakeSessions()
    two = [("cookie", f"wg_session={NEW_SID}"), ("cookie", f"wg_session={SID}")]
    assert call(sessions, "GET", "/auth/session", two).status == 401
    assert call(sessions, "POST", "/auth/logout", two).status == 204
    assert SID in sessions.live  # neither was chosen


@pytest.mark.parametrize(
    ("forwarded", "secure"),
    [(None, False), ("http", False), ("https", True), ("HTTPS", True), ("https, http", True)],
)
def test_login_cookie_is_secure_when_the_client_used_https(
    forwarded: str | None, secure: bool
) -> None:
    """The same reading of x-forwarded-proto as the Origin check's."""
    headers = [("x-forwarded-proto", forwarded)] if forwarded else []
    reply = call(
        FakeSessions(), "POST", "/auth/login", headers, json={"username": "a", "password": "right"}
    )
    assert reply.status == 200
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"wg_session={NEW_SID}")
    assert ("Secure" in cookie) is secure


# --- the session ticket set beside the session cookie -----------------------------------------


class _KeyStore:
    async def publish(self, key: PublishedKey) -> None:
        pass

    async def keep_until(self, kid: str, until: float) -> None:
        pass

    async def live(self, *, now: float) -> list[PublishedKey]:
        return []

    async def version(self) -> int:
        return 0


def _signer(*, signing: bool) -> TicketSigner:
    clock = [1_000_000.0]
    signer = TicketSigner(store=_KeyStore(), policy=TicketPolicy(lead=5), clock=lambda: clock[0])
    if signing:
        asyncio.run(signer.maintain())
        clock[0] += 5
    return signer


def _login_with_ticket_of_another(signer: TicketSigner) -> Reply:
    return call(
        FakeSessions(),
        "POST",
        "/auth/login",
        [("cookie", "wg_ticket=the-previous-users-ticket")],
        json={"username": "alice", "password": "right"},
        tickets=signer,
    )


def test_login_sets_a_ticket_beside_the_session() -> None:
    reply = _login_with_ticket_of_another(_signer(signing=True))
    assert reply.status == 200
    ticket = next(c for c in reply.headers.getall("set-cookie") if c.startswith("wg_ticket="))
    assert ticket.count(".") >= 2 and "HttpOnly" in ticket and "SameSite=Lax" in ticket


def test_a_login_that_cannot_mint_a_ticket_clears_the_previous_one() -> None:
    """No key signs yet (a process just started): the previous user's ticket must not go on
    speaking for the browser beside the new session."""
    reply = _login_with_ticket_of_another(_signer(signing=False))
    assert reply.status == 200
    cookies = reply.headers.getall("set-cookie")
    assert any(c.startswith("wg_session=") for c in cookies)
    ticket = [c for c in cookies if c.startswith("wg_ticket=")]
    assert len(ticket) == 1 and ticket[0].startswith('wg_ticket=""; ')
    assert "Max-Age=0" in ticket[0]
