"""Sessions, the authorization decision and password hashes, with in-memory stores and a clock."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import pytest

from wardgate.domain.authz import Allow, Authorizer, Deny, RequestFacts, RoutePolicy
from wardgate.domain.passwords import hash_password, verify_password
from wardgate.domain.ports import SessionRecord, UserRecord
from wardgate.domain.sessions import Identity, SessionService, hash_session_id

T = TypeVar("T")
FAST_N = 2**10  # scrypt cost for test hashes: fast, same format
TTL = 3600.0
COOKIE = "wg_session"
HOST = "gw.example.com"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryUsers:
    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {}
        self.gets = 0

    async def get_user(self, name: str) -> UserRecord | None:
        self.gets += 1
        return self.users.get(name)

    async def put_user(self, user: UserRecord) -> None:
        self.users[user.name] = user

    async def delete_user(self, name: str) -> bool:
        return self.users.pop(name, None) is not None

    async def list_users(self) -> list[UserRecord]:
        return list(self.users.values())


class MemorySessions:
    """Keeps what it is given, forever: expiry is the service's job, judged by its clock."""

    def __init__(self) -> None:
        self.records: dict[str, SessionRecord] = {}
        self.gets = 0

    async def create_session(self, record: SessionRecord) -> None:
        assert record.id_hash not in self.records
        self.records[record.id_hash] = record

    async def get_session(self, id_hash: str) -> SessionRecord | None:
        self.gets += 1
        return self.records.get(id_hash)

    async def delete_session(self, id_hash: str) -> bool:
        return self.records.pop(id_hash, None) is not None

    async def list_sessions(self, user: str | None = None) -> list[SessionRecord]:
        return [r for r in self.records.values() if user is None or r.user == user]

    async def delete_user_sessions(self, user: str) -> int:
        doomed = [h for h, r in self.records.items() if r.user == user]
        for h in doomed:
            del self.records[h]
        return len(doomed)


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.users = MemoryUsers()
        self.sessions = MemorySessions()
        self.service = SessionService(
            users=self.users, sessions=self.sessions, ttl_seconds=TTL, clock=self.clock
        )
        self.authorizer = Authorizer(sessions=self.service, cookie_name=COOKIE)

    def add_user(self, name: str, password: str, *roles: str) -> None:
        record = UserRecord(name, hash_password(password, n=FAST_N), tuple(roles))
        run(self.users.put_user(record))

    def login(self, name: str = "alice", password: str = "s3cret") -> str:
        result = run(self.service.login(name, password))
        assert result is not None
        return result.session_id


@pytest.fixture
def world() -> World:
    w = World()
    w.add_user("alice", "s3cret", "admin", "dev")
    w.add_user("bob", "hunter2", "viewer")
    return w


# --- sessions -----------------------------------------------------------------------------


def test_login_gives_a_43_char_id_and_stores_only_its_sha256(world: World) -> None:
    result = run(world.service.login("alice", "s3cret"))
    assert result is not None
    sid = result.session_id
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", sid)
    (record,) = world.sessions.records.values()
    assert result.identity == Identity(
        "alice", ("admin", "dev"), "session", world.clock.now + TTL, session=record.id_hash
    )
    assert record.id_hash == hashlib.sha256(sid.encode()).hexdigest() == hash_session_id(sid)
    assert sid not in repr(record)
    assert (record.user, record.roles) == ("alice", ("admin", "dev"))
    assert record.created_at == world.clock.now
    assert record.expires_at == world.clock.now + TTL


def test_every_login_makes_a_new_id(world: World) -> None:
    ids = {world.login() for _ in range(3)}
    assert len(ids) == 3
    assert len(world.sessions.records) == 3


def test_wrong_password_returns_none_and_stores_nothing(world: World) -> None:
    assert run(world.service.login("alice", "S3cret")) is None
    assert world.sessions.records == {}


def test_unknown_user_returns_none_and_stores_nothing(world: World) -> None:
    assert run(world.service.login("mallory", "s3cret")) is None
    assert world.sessions.records == {}


@pytest.mark.parametrize(
    ("username", "password"),
    [("", "s3cret"), ("a" * 129, "s3cret"), ("alice", "x" * 1025)],
)
def test_out_of_range_credentials_are_refused_without_a_lookup(
    world: World, username: str, password: str
) -> None:
    assert run(world.service.login(username, password)) is None
    assert world.users.gets == 0
    assert world.sessions.records == {}


def test_resolve_a_fresh_session(world: World) -> None:
    sid = world.login()
    identity = run(world.service.resolve(sid))
    assert identity == Identity(
        "alice", ("admin", "dev"), "session", world.clock.now + TTL, session=hash_session_id(sid)
    )


@pytest.mark.parametrize(
    "value",
    [None, "", "short", "a" * 42, "a" * 44, "a" * 42 + ".", "a" * 42 + "=", " " + "a" * 42],
)
def test_resolve_malformed_is_none_without_a_lookup(world: World, value: str | None) -> None:
    world.login()
    assert run(world.service.resolve(value)) is None
    assert world.sessions.gets == 0


def test_resolve_unknown_is_none(world: World) -> None:
    world.login()
    assert run(world.service.resolve("A" * 43)) is None
    assert world.sessions.gets == 1


def test_resolve_expired_is_none(world: World) -> None:
    sid = world.login()
    world.clock.now += TTL - 0.001
    assert run(world.service.resolve(sid)) is not None
    world.clock.now += 0.001  # exactly at expires_at
    assert run(world.service.resolve(sid)) is None
    world.clock.now += 1000
    assert run(world.service.resolve(sid)) is None


def test_logout(world: World) -> None:
    sid = world.login()
    other = world.login("bob", "hunter2")
    assert run(world.service.logout(sid)) is True
    assert run(world.service.resolve(sid)) is None
    assert run(world.service.logout(sid)) is False
    # Only that session went.
    assert run(world.service.resolve(other)) is not None


@pytest.mark.parametrize("value", [None, "", "not-a-session-id"])
def test_logout_malformed_is_false(world: World, value: str | None) -> None:
    world.login()
    assert run(world.service.logout(value)) is False
    assert len(world.sessions.records) == 1


# --- authorizer ---------------------------------------------------------------------------


def policy(
    require: str = "session", roles: str = "", cors_origins: str = "", route: str = "r"
) -> RoutePolicy:
    ext = {"route": route, "auth": require, "roles": roles, "cors_origins": cors_origins}
    return RoutePolicy.from_context(ext)


def facts(
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    host: str = HOST,
    scheme: str = "https",
) -> RequestFacts:
    return RequestFacts(
        method=method, host=host, path="/x", headers=dict(headers or {}), scheme=scheme
    )


def decide(world: World, pol: RoutePolicy, fx: RequestFacts) -> Allow | Deny:
    return run(world.authorizer.decide(pol, fx))


def with_session(sid: str, **headers: str) -> dict[str, str]:
    return {"cookie": f"{COOKIE}={sid}", **headers}


def test_route_policy_from_context() -> None:
    p = RoutePolicy.from_context(
        {"route": "a", "auth": "session", "roles": "admin,ops", "cors_origins": "https://x.io"}
    )
    assert p == RoutePolicy(
        "a", "session", frozenset({"admin", "ops"}), frozenset({"https://x.io"})
    )
    assert RoutePolicy.from_context({}).require == "none"
    # An unknown requirement is read strictly.
    assert RoutePolicy.from_context({"auth": "magic"}).require == "session"


def test_require_none_allows_without_identity(world: World) -> None:
    assert decide(world, policy("none"), facts()) == Allow(None, None)
    assert world.sessions.gets == 0


def test_require_none_strips_the_session_cookie_but_never_looks_it_up(world: World) -> None:
    sid = world.login()
    got = decide(world, policy("none"), facts(headers={"cookie": f"a=1; {COOKIE}={sid}"}))
    assert got == Allow(None, "a=1")
    assert world.sessions.gets == 0


@pytest.mark.parametrize("require", ["session", "any", "jwt", "api_key"])
def test_missing_session_is_401(world: World, require: str) -> None:
    got = decide(world, policy(require), facts())
    assert isinstance(got, Deny)
    assert (got.status, got.code) == (401, "unauthenticated")


@pytest.mark.parametrize("require", ["jwt", "api_key"])
def test_a_session_does_not_satisfy_jwt_or_api_key(world: World, require: str) -> None:
    sid = world.login()
    got = decide(world, policy(require), facts(headers=with_session(sid)))
    assert isinstance(got, Deny)
    assert got.status == 401
    assert {"jwt": "bearer token", "api_key": "API key"}[require] in got.message


def test_unknown_or_expired_session_is_401(world: World) -> None:
    sid = world.login()
    got = decide(world, policy(), facts(headers=with_session("B" * 43)))
    assert isinstance(got, Deny) and got.status == 401
    world.clock.now += TTL
    got = decide(world, policy(), facts(headers=with_session(sid)))
    assert isinstance(got, Deny) and got.status == 401


def test_wrong_role_is_403(world: World) -> None:
    sid = world.login("bob", "hunter2")
    got = decide(world, policy(roles="admin"), facts(headers=with_session(sid)))
    assert isinstance(got, Deny)
    assert (got.status, got.code) == (403, "forbidden")


@pytest.mark.parametrize("roles", ["admin", "ops,dev", ""])
def test_right_role_is_allowed_with_identity(world: World, roles: str) -> None:
    sid = world.login()
    got = decide(world, policy(roles=roles), facts(headers=with_session(sid)))
    assert isinstance(got, Allow)
    assert got.identity is not None
    assert (got.identity.user, got.identity.roles, got.identity.method) == (
        "alice",
        ("admin", "dev"),
        "session",
    )


def test_require_any_accepts_a_session(world: World) -> None:
    sid = world.login()
    got = decide(world, policy("any"), facts(headers=with_session(sid)))
    assert isinstance(got, Allow) and got.identity is not None


@pytest.mark.parametrize(
    ("cookie", "rewritten"),
    [
        ("theme=dark; {c}={sid}; lang=en", "theme=dark; lang=en"),
        ("{c}={sid}", ""),
        ("{c}={sid};theme=dark", "theme=dark"),
        ("{c}={sid}; {c}={sid}", ""),
        # Two Cookie headers over HTTP/1.1 reach ext_authz joined with ",".
        ("theme=dark,{c}={sid}", "theme=dark"),
        ("{c}={sid},theme=dark", "theme=dark"),
        ("a=x,y; {c}={sid}", "a=x,y"),
        (" {c} ={sid}", ""),
    ],
)
def test_the_session_cookie_is_removed_and_others_kept(
    world: World, cookie: str, rewritten: str
) -> None:
    sid = world.login()
    header = cookie.format(c=COOKIE, sid=sid)
    got = decide(world, policy(), facts(headers={"cookie": header}))
    assert isinstance(got, Allow)
    assert got.identity is not None
    assert got.cookie == rewritten


@pytest.mark.parametrize(
    "cookie", ["{c}={sid}; {c}={other}", "{c}={other},{c}={sid}", "{c}={sid},a=1; {c}={other}"]
)
def test_two_different_session_cookies_are_no_session(world: World, cookie: str) -> None:
    """A cookie planted for a longer path (or a second Cookie header) comes first: the
    gateway must not let it choose whose session a request runs in."""
    sid, other = world.login(), world.login()
    header = cookie.format(c=COOKIE, sid=sid, other=other)
    got = decide(world, policy(), facts(headers={"cookie": header}))
    assert isinstance(got, Deny) and got.status == 401
    got = decide(world, policy("none"), facts(headers={"cookie": header}))
    assert isinstance(got, Allow) and got.cookie in ("", "a=1")


def test_cookie_untouched_when_there_is_no_session_cookie(world: World) -> None:
    got = decide(world, policy("none"), facts(headers={"cookie": "theme=dark"}))
    assert got == Allow(None, None)


# --- CSRF ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_state_change_with_a_foreign_origin_is_refused(world: World, method: str) -> None:
    sid = world.login()
    fx = facts(method, with_session(sid, origin="https://evil.example"))
    got = decide(world, policy(), fx)
    assert isinstance(got, Deny)
    assert (got.status, got.code) == (403, "csrf")


@pytest.mark.parametrize(
    ("host", "scheme", "origin"),
    [
        (HOST, "https", f"https://{HOST}"),
        (HOST, "http", f"http://{HOST}"),
        (HOST, "https", f"HTTPS://{HOST.upper()}"),
        (f"{HOST}:10000", "http", f"http://{HOST}:10000"),
        ("127.0.0.1:10000", "http", "http://127.0.0.1:10000"),
    ],
)
def test_same_host_origin_is_allowed(world: World, host: str, scheme: str, origin: str) -> None:
    sid = world.login()
    fx = facts("POST", with_session(sid, origin=origin), host=host, scheme=scheme)
    assert isinstance(decide(world, policy(), fx), Allow)


@pytest.mark.parametrize(
    ("scheme", "forwarded", "origin", "allowed"),
    [
        ("https", None, f"http://{HOST}", False),  # a page a network attacker can write
        ("http", None, f"https://{HOST}", False),
        ("http", "https", f"https://{HOST}", True),  # x-forwarded-proto says more
        ("http", "https", f"http://{HOST}", False),
        ("https", "http", f"https://{HOST}", False),
        ("https", None, f"ftp://{HOST}", False),
        ("https", None, f"ws://{HOST}", False),
    ],
)
def test_the_same_host_must_come_with_the_scheme_the_client_used(
    world: World, scheme: str, forwarded: str | None, origin: str, allowed: bool
) -> None:
    sid = world.login()
    headers = with_session(sid, origin=origin)
    if forwarded:
        headers["x-forwarded-proto"] = forwarded
    got = decide(world, policy(), facts("POST", headers, scheme=scheme))
    assert isinstance(got, Allow if allowed else Deny)
    if not allowed:
        assert isinstance(got, Deny) and (got.status, got.code) == (403, "csrf")


def test_other_port_of_the_same_host_is_foreign(world: World) -> None:
    sid = world.login()
    fx = facts("POST", with_session(sid, origin=f"http://{HOST}:8080"), host=f"{HOST}:10000")
    assert isinstance(decide(world, policy(), fx), Deny)


def test_allowed_cors_origin_is_allowed(world: World) -> None:
    sid = world.login()
    pol = policy(cors_origins="https://app.example.com https://admin.example.com")
    got = decide(world, pol, facts("POST", with_session(sid, origin="https://app.example.com")))
    assert isinstance(got, Allow)
    got = decide(world, pol, facts("POST", with_session(sid, origin="https://evil.example.com")))
    assert isinstance(got, Deny) and got.code == "csrf"


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "gw.example.com",  # no scheme: no host to compare
        f"https://{HOST}.evil.example",
        f"https://evil.example/{HOST}",
        f"https://{HOST}@evil.example",
    ],
)
def test_suspicious_origins_are_refused(world: World, origin: str) -> None:
    sid = world.login()
    got = decide(world, policy(), facts("POST", with_session(sid, origin=origin)))
    assert isinstance(got, Deny)
    assert got.code == "csrf"


def test_no_origin_and_no_referer_is_allowed(world: World) -> None:
    sid = world.login()
    assert isinstance(decide(world, policy(), facts("POST", with_session(sid))), Allow)


def test_referer_is_used_when_there_is_no_origin(world: World) -> None:
    sid = world.login()
    same = facts("POST", with_session(sid, referer=f"https://{HOST}/page?x=1"))
    foreign = facts("POST", with_session(sid, referer="https://evil.example/page"))
    assert isinstance(decide(world, policy(), same), Allow)
    got = decide(world, policy(), foreign)
    assert isinstance(got, Deny) and got.code == "csrf"


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_safe_methods_are_never_checked(world: World, method: str) -> None:
    sid = world.login()
    got = decide(world, policy(), facts(method, with_session(sid, origin="https://evil.example")))
    assert isinstance(got, Allow)


def test_role_is_checked_before_csrf(world: World) -> None:
    sid = world.login("bob", "hunter2")
    fx = facts("POST", with_session(sid, origin="https://evil.example"))
    got = decide(world, policy(roles="admin"), fx)
    assert isinstance(got, Deny) and got.code == "forbidden"


# Reading and stripping cookies on their own: tests/unit/test_cookies.py.


# --- passwords ----------------------------------------------------------------------------


def test_hash_format_and_verify() -> None:
    h = hash_password("correct horse", n=FAST_N)
    assert h.startswith(f"scrypt${FAST_N}$8$1$")
    assert "correct horse" not in h
    assert verify_password(h, "correct horse") is True
    assert verify_password(h, "correct hors") is False
    assert verify_password(h, "") is False


def test_unicode_password() -> None:
    h = hash_password("pässwörd ✓", n=FAST_N)
    assert verify_password(h, "pässwörd ✓") is True
    assert verify_password(h, "passwörd ✓") is False


def test_two_hashes_of_one_password_differ() -> None:
    a, b = hash_password("same", n=FAST_N), hash_password("same", n=FAST_N)
    assert a != b
    assert verify_password(a, "same") and verify_password(b, "same")


def test_verify_without_a_stored_hash_is_false() -> None:
    assert verify_password(None, "anything") is False
    assert verify_password(None, "") is False


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        "bcrypt$1024$8$1$c2FsdA==$ZGlnZXN0",
        "scrypt$x$8$1$c2FsdA==$ZGlnZXN0",
        "scrypt$1000$8$1$c2FsdA==$ZGlnZXN0",  # n not a power of two
        "scrypt$1024$8$1$!!!$???",
        "scrypt$1024$8$1$c2FsdA==",
    ],
)
def test_verify_a_malformed_hash_is_false(stored: str) -> None:
    assert verify_password(stored, "anything") is False
