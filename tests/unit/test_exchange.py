"""One request's external processing, phase by phase, without Envoy: header values from the
identity, JSON filtering that fails closed, what the cache stores and answers, composition."""

from __future__ import annotations

import asyncio
import collections
import gzip
import json
from typing import Any

from tests.unit.test_response_cache import MemoryStore
from wardgate.domain.compose import Composer, PartRequest, PartResponse
from wardgate.domain.documents import Route, parse_document
from wardgate.domain.exchange import Action, Continue, Exchange, Respond, Slow
from wardgate.domain.extproc_policy import Policy, decode_policy, encode_policy
from wardgate.domain.response_cache import ResponseCache


class Counts:
    def __init__(self) -> None:
        self.seen: collections.Counter[tuple[str, str]] = collections.Counter()

    def count(self, what: str, route: str, value: str) -> None:
        self.seen[(what, value)] += 1


def policy(auth: str = "none", **extra: Any) -> Policy:
    doc: dict[str, Any] = {"kind": "Route", "name": "r", "match": {"prefix": "/r"}, **extra}
    if "compose" in extra:
        doc["match"] = {"path": "/r", "methods": ["GET", "HEAD"]}
    else:
        doc["backend"] = "b"
    doc["auth"] = {"require": auth}
    r = parse_document(doc)
    assert isinstance(r, Route)
    return decode_policy(
        encode_policy(
            route=r.name,
            authenticated=auth != "none",
            transform=r.transform,
            cache=r.cache,
            compose=r.compose,
            timeout=r.timeout,
        )
    )


def exchange(p: Policy, *, cache: ResponseCache | None = None, **kw: Any) -> Exchange:
    return Exchange(
        policy=p,
        cache=cache,
        composer=kw.pop("composer", None),
        via=kw.pop("via", ""),
        tier="",
        max_body=kw.pop("max_body", 4096),
        recorder=kw.pop("recorder", Counts()),
        clock=lambda: 1000.0,
    )


def request(path: str = "/r/x", method: str = "GET", **headers: str) -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":path", path),
        (":authority", "gw"),
        ("x-request-id", "rid-1"),
        *headers.items(),
    ]


ALICE = {"x-user-id": "alice", "x-user-roles": "user", "x-auth-method": "session"}
BOB = {"x-user-id": "bob", "x-user-roles": "user", "x-auth-method": "session"}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def settled(ex: Exchange, items: list[tuple[str, str]]) -> Action:
    """The request-headers answer, once what is slow is done."""
    action = await ex.request_headers(items)
    return await action.run() if isinstance(action, Slow) else action


# --- headers ---------------------------------------------------------------------------------


def test_request_values_come_from_the_identity_and_a_missing_one_removes_the_header() -> None:
    p = policy(
        "session",
        transform={"request_headers": {"set": {"x-tenant": "{user}:{roles}", "x-k": "const"}}},
    )
    action = run(exchange(p).request_headers(request(**ALICE)))
    assert isinstance(action, Continue)
    # Constant values are Envoy's own (never sent back); placeholders are filled.
    assert action.headers.set == (("x-tenant", "alice:user"),)
    anonymous = run(exchange(p).request_headers(request(**{"x-tenant": "forged"})))
    assert anonymous.headers.set == () and anonymous.headers.remove == ("x-tenant",)


def test_a_client_header_copied_into_another_must_be_a_header_value() -> None:
    counts = Counts()
    p = policy(transform={"request_headers": {"set": {"x-copy": "v={header:x-src}"}}})
    ok = run(exchange(p).request_headers(request(**{"x-src": "fine value"})))
    assert ok.headers.set == (("x-copy", "v=fine value"),)
    bad = run(exchange(p, recorder=counts).request_headers(request(**{"x-src": "caf\xc3\xa9"})))
    assert bad.headers.set == () and bad.headers.remove == ("x-copy",)
    assert counts.seen[("transform", "bad_value")] == 1


def test_a_copied_value_is_filled_once_and_a_repeated_header_is_joined() -> None:
    """A client's value holding '{user}' is text, never a second placeholder; a header sent
    twice is copied as its values joined with ',' (docs/TRANSFORMS.md); CR, LF and NUL are
    not header values (the header is removed)."""
    p = policy("session", transform={"request_headers": {"set": {"x-copy": "{header:x-src}"}}})
    once = run(exchange(p).request_headers(request(**ALICE, **{"x-src": "{user}-{{x}}"})))
    assert once.headers.set == (("x-copy", "{user}-{{x}}"),)
    twice = [*request(**ALICE), ("x-src", "a"), ("X-Src", "b")]
    assert run(exchange(p).request_headers(twice)).headers.set == (("x-copy", "a,b"),)
    for bad in ("a\r\nx-evil: 1", "a\x00b", "a\nb"):
        refused = run(exchange(p).request_headers(request(**ALICE, **{"x-src": bad})))
        assert refused.headers.set == () and refused.headers.remove == ("x-copy",)


# --- response_json ---------------------------------------------------------------------------

JSON = [(":status", "200"), ("content-type", "application/json")]
BODY = json.dumps({"id": 1, "password": "p", "profile": {"email": "e"}}).encode()


def filtered(headers: list[tuple[str, str]], body: bytes, *, eos: bool = True, **kw: Any) -> Any:
    async def go() -> tuple[Any, Any]:
        ex = exchange(policy(transform={"response_json": {"exclude": ["password"]}}), **kw)
        first = await ex.response_headers(headers, False)
        if isinstance(first, Respond):
            return first, None
        return first, await ex.response_body(body, eos)

    return run(go())


def test_json_bodies_are_filtered_and_other_bodies_pass_untouched() -> None:
    _, done = filtered(JSON, BODY)
    assert isinstance(done, Continue) and json.loads(done.body) == {
        "id": 1,
        "profile": {"email": "e"},
    }
    _, problem = filtered([(":status", "500"), ("content-type", "application/problem+json")], BODY)
    assert "password" not in json.loads(problem.body)  # error answers are filtered too
    _, text = filtered([(":status", "200"), ("content-type", "text/plain")], BODY)
    assert text == Continue()


def test_an_empty_json_body_passes_it_has_nothing_to_hide() -> None:
    """A JSON answer whose body is empty but not known so at its headers (chunked, no data):
    nothing to filter, and not a 502."""
    for body in (b"", b" \r\n"):
        _, done = filtered(JSON, body)
        assert done == Continue(), body


def test_a_filtered_answer_is_utf8_and_says_so() -> None:
    """JSON in UTF-16 (or with a UTF-8 byte order mark) is read; what goes out is UTF-8, and
    its content-type must not still name the upstream's charset."""
    doc = {"id": 1, "password": "p", "name": "Zo\u00eb"}
    utf16 = json.dumps(doc, ensure_ascii=False).encode("utf-16")
    ctype = [(":status", "200"), ("content-type", "application/json; charset=UTF-16")]
    _, done = filtered(ctype, utf16)
    assert isinstance(done, Continue) and json.loads(done.body.decode("utf-8")) == {
        "id": 1,
        "name": "Zo\u00eb",
    }
    assert done.headers.set == (("content-type", "application/json; charset=utf-8"),)
    bom = b"\xef\xbb\xbf" + json.dumps(doc).encode()
    _, plain = filtered(JSON, bom)
    assert "password" not in json.loads(plain.body) and plain.headers.set == ()
    labelled = [(":status", "200"), ("content-type", 'application/json;charset="utf-8"')]
    assert filtered(labelled, BODY)[1].headers.set == ()


def test_a_route_that_hides_json_fields_asks_the_upstream_for_json_only() -> None:
    """A negotiating upstream asked for HTML (a browser's accept) or XML answers the same
    fields in a body the filter cannot read, and that would pass untouched."""
    p = policy(transform={"response_json": {"exclude": ["password"]}})
    for accept, sent in [
        ("text/html,application/xhtml+xml,*/*;q=0.8", "application/json"),
        ("*/*", "application/json"),
        ("application/vnd.api+json, text/csv", "application/vnd.api+json"),
        ("application/json;q=0.9, application/problem+json", None),
        (None, None),
    ]:
        extra = {"accept": accept} if accept is not None else {}
        action = run(exchange(p).request_headers(request(**extra)))
        assert isinstance(action, Continue)
        assert dict(action.headers.set).get("accept") == sent, accept
    # Only where fields are hidden; and a transform that sets accept itself decides.
    plain = policy(transform={"request_headers": {"set": {"x-a": "{user}"}}})
    assert run(exchange(plain).request_headers(request(accept="text/html"))).headers.set == ()
    own = policy(
        transform={
            "request_headers": {"set": {"accept": "application/xml"}},
            "response_json": {"include": ["id"]},
        }
    )
    assert run(exchange(own).request_headers(request(accept="text/html"))).headers.set == ()


def test_json_that_cannot_be_filtered_is_refused_never_passed() -> None:
    for headers, body, eos in [
        (JSON, b"{not json", True),
        (JSON, b'{"a": NaN}' + b" ", True),
        (JSON, b"[" * 100_000 + b"]" * 100_000, True),  # nested too deeply
        (JSON, b'{"n": 1e400}', True),  # a double's infinity cannot be written back
        (JSON, b'{"n": ' + b"9" * 5000 + b"}", True),  # past Python's digit limit
        (JSON, BODY, False),  # larger than Envoy buffers: the rest never comes
        (JSON, BODY + b" " * 5000, True),  # larger than extproc_max_body_bytes
    ]:
        _, answer = filtered(headers, body, eos=eos, max_body=4096)
        assert isinstance(answer, Respond) and answer.status == 502, body[:20]
        assert json.loads(answer.body)["error"] == "bad_gateway"
    first, _ = filtered([*JSON, ("content-encoding", "br")], BODY)
    assert isinstance(first, Respond) and first.status == 502


def test_a_range_of_a_json_answer_is_refused() -> None:
    """Bytes 19-27 of {"id":7,"password":"hunter2"} are '"hunter2"': JSON, and no path of
    an exclude reaches into a bare string. A 206, JSON or multipart, is never passed on."""
    for ctype in ("application/json", "multipart/byteranges; boundary=x"):
        first, _ = filtered([(":status", "206"), ("content-type", ctype)], b'"hunter2"')
        assert isinstance(first, Respond) and first.status == 502, ctype


def test_gzip_json_is_filtered_and_sent_plain_and_zip_bombs_are_refused() -> None:
    _, done = filtered([*JSON, ("content-encoding", "gzip")], gzip.compress(BODY))
    assert json.loads(done.body) == {"id": 1, "profile": {"email": "e"}}
    assert done.headers.remove == ("content-encoding",)
    bomb = gzip.compress(b'{"a":"' + b"0" * 10_000_000 + b'"}')
    _, refused = filtered([*JSON, ("content-encoding", "gzip")], bomb, max_body=1 << 20)
    assert isinstance(refused, Respond) and refused.status == 502


# --- the cache -------------------------------------------------------------------------------


def cached_exchange(store: MemoryStore, **extra: Any) -> Exchange:
    cache = ResponseCache(store=store, wait=0.5)
    return exchange(policy(extra.pop("auth", "session"), **extra), cache=cache)


def test_a_stored_answer_is_served_with_x_cache_age_and_the_response_edit() -> None:
    async def go() -> None:
        store = MemoryStore()
        extra = {
            "cache": {"ttl": "1m"},
            "transform": {"response_headers": {"set": {"x-for": "{user}"}, "remove": ["server"]}},
        }
        ex = cached_exchange(store, **extra)
        first = await ex.request_headers(request(**ALICE))
        assert isinstance(first, Continue) and first.response_phases == (True, True)
        head = await ex.response_headers(
            [(":status", "200"), ("content-type", "application/json"), ("server", "up")], False
        )
        assert ("x-cache", "MISS") in head.headers.set and ("x-for", "alice") in head.headers.set
        await ex.response_body(b'{"mine": "alice"}', True)
        hit = await cached_exchange(store, **extra).request_headers(request(**ALICE))
        assert isinstance(hit, Respond) and hit.body == b'{"mine": "alice"}'
        headers = dict(hit.headers)
        assert headers["x-cache"] == "HIT" and headers["age"] == "0"
        assert headers["x-for"] == "alice" and "server" not in headers
        # Bob has his own entry: a miss, never Alice's answer.
        bob = await cached_exchange(store, **extra).request_headers(request(**BOB))
        assert isinstance(bob, Continue)

    run(go())


def test_a_hit_carries_every_value_of_a_repeated_header() -> None:
    """Two content-security-policy headers are two policies, both enforced: an answer from
    the cache that kept only the last would weaken the page it serves."""

    async def go() -> None:
        store = MemoryStore()
        extra = {"cache": {"ttl": "1m"}, "transform": {"response_headers": {"remove": ["x-b"]}}}
        ex = cached_exchange(store, auth="none", **extra)
        await ex.request_headers(request())
        upstream = [
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-security-policy", "default-src 'self'"),
            ("link", "</a>; rel=preload"),
            ("content-security-policy", "script-src 'none'"),
            ("link", "</b>; rel=preload"),
            ("x-b", "gone"),
        ]
        await ex.response_headers(upstream, False)
        await ex.response_body(b"{}", True)
        hit = await cached_exchange(store, auth="none", **extra).request_headers(request())
        assert isinstance(hit, Respond)
        assert [v for k, v in hit.headers if k == "content-security-policy"] == [
            "default-src 'self'",
            "script-src 'none'",
        ]
        assert [v for k, v in hit.headers if k == "link"] == [
            "</a>; rel=preload",
            "</b>; rel=preload",
        ]
        assert "x-b" not in dict(hit.headers)

    run(go())


def test_a_hit_never_carries_the_request_id_of_the_request_that_stored_it() -> None:
    async def go() -> None:
        store = MemoryStore()
        ex = cached_exchange(store, auth="none", cache={"ttl": "1m"})
        await ex.request_headers(request())
        await ex.response_headers([(":status", "200"), ("x-request-id", "rid-1")], False)
        await ex.response_body(b"{}", True)
        later = [(k, "rid-2" if k == "x-request-id" else v) for k, v in request()]
        hit = await cached_exchange(store, auth="none", cache={"ttl": "1m"}).request_headers(later)
        assert isinstance(hit, Respond) and "rid-1" not in dict(hit.headers).values()

    run(go())


def test_a_local_answer_adds_a_repeated_header_instead_of_overwriting_it() -> None:
    from envoy.config.core.v3 import base_pb2

    from wardgate.extproc.processor import immediate

    answer = immediate(Respond(200, (("link", "</a>"), ("x-cache", "HIT"), ("Link", "</b>")), b""))
    options = answer.immediate_response.headers.set_headers
    overwrite = base_pb2.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
    actions = [
        (o.header.key, o.header.raw_value, o.append_action == overwrite, o.append.value)
        for o in options
    ]
    # Envoy's ext_proc adds a value only for the deprecated append: APPEND_IF_EXISTS_OR_ADD is
    # append_action's zero, unset to it, and then it overwrites.
    assert actions == [
        ("link", b"</a>", True, False),
        ("x-cache", b"HIT", True, False),
        ("Link", b"</b>", False, True),
    ]


def test_answers_that_must_not_be_shared_are_not_stored() -> None:
    async def go(headers: list[tuple[str, str]], request_headers: dict[str, str]) -> bool:
        store = MemoryStore()
        ex = cached_exchange(store, auth="none", cache={"ttl": "1m"})
        await ex.request_headers(request(**request_headers))
        head = await ex.response_headers([(":status", "200"), *headers], False)
        if isinstance(head, Continue) and head.response_phases != (True, False):
            await ex.response_body(b"{}", True)
        await ex.close()
        return bool(store.entries)

    assert run(go([], {}))
    assert not run(go([("set-cookie", "s=1")], {}))
    assert not run(go([("cache-control", "private")], {}))
    assert not run(go([("cache-control", "no-store")], {}))
    assert not run(go([("vary", "cookie")], {}))
    assert not run(go([], {"authorization": "Bearer token"}))
    assert not run(go([], {"cache-control": "no-store"}))


def test_an_authenticated_route_without_identity_is_never_cached() -> None:
    async def go() -> None:
        store = MemoryStore()
        ex = cached_exchange(store, cache={"ttl": "1m", "shared": True})
        action = await ex.request_headers(request())  # ext_authz failed open: no identity
        assert isinstance(action, Continue) and not store.locks
        head = await ex.response_headers([(":status", "200")], False)
        assert ("x-cache", "MISS") in head.headers.set

    run(go())


# --- composition -----------------------------------------------------------------------------


class Parts:
    def __init__(self, answers: dict[str, PartResponse]) -> None:
        self.answers = answers
        self.requests: list[PartRequest] = []

    async def fetch(self, via: str, request: PartRequest) -> PartResponse:
        self.requests.append(request)
        return self.answers[request.part]


COMPOSE = {
    "profile": {"backend": "users", "path": "/users/{user}"},
    "orders": {"backend": "orders", "path": "/orders?u={header:x-q}", "optional": True},
}


def composed(answers: dict[str, PartResponse], **headers: str) -> tuple[Respond, Parts]:
    parts = Parts(answers)
    ex = exchange(
        policy("session", compose=COMPOSE),
        composer=Composer(fetcher=parts, max_bytes=4096),
        via="127.0.0.1:1",
    )
    answer = run(settled(ex, request("/r", **ALICE, **headers)))
    assert isinstance(answer, Respond)
    return answer, parts


def test_parts_are_composed_with_the_callers_identity() -> None:
    answer, parts = composed(
        {"profile": PartResponse(200, b'{"n": 1}'), "orders": PartResponse(200, b"[1, 2]")},
        **{"x-q": "../admin?x=1"},
    )
    assert answer.status == 200 and json.loads(answer.body) == {
        "profile": {"n": 1},
        "orders": [1, 2],
    }
    by_part = {r.part: r for r in parts.requests}
    assert by_part["profile"].path == "/users/alice"
    # A value is one path segment or query value, whatever it holds.
    assert by_part["orders"].path == "/orders?u=..%2Fadmin%3Fx%3D1"
    headers = dict(by_part["profile"].headers)
    assert headers["x-user-id"] == "alice" and headers["x-request-id"] == "rid-1"
    assert "cookie" not in headers and "authorization" not in headers


def test_a_value_never_makes_a_dot_segment_or_an_empty_one() -> None:
    """Percent-encoding leaves dots alone: a user named '..' would send /users/../orders,
    which the backend (or anything normalizing between) reads as /orders."""
    dotted = {
        "profile": {"backend": "users", "path": "/users/{user}/orders"},
        "orders": {"backend": "orders", "path": "/o/.{header:x-q}/x?u={header:x-q}"},
    }
    answers = {"profile": PartResponse(200, b"{}"), "orders": PartResponse(200, b"{}")}
    for user, q, sent in [
        ("..", "fine", {"orders": "/o/.fine/x?u=fine"}),
        (".", "fine", {"orders": "/o/.fine/x?u=fine"}),
        ("alice", ".", {"profile": "/users/alice/orders"}),  # '/o/../x' never sent
        ("alice", "", {"profile": "/users/alice/orders"}),  # '/o/./x' never sent
        ("a.b", "..x", {"profile": "/users/a.b/orders", "orders": "/o/...x/x?u=..x"}),
    ]:
        parts = Parts(answers)
        ex = exchange(
            policy("session", compose=dotted),
            composer=Composer(fetcher=parts, max_bytes=4096),
            via="127.0.0.1:1",
        )
        identity = {**ALICE, "x-user-id": user}
        answer = run(settled(ex, request("/r", **identity, **{"x-q": q})))
        assert isinstance(answer, Respond)
        assert {r.part: r.path for r in parts.requests} == sent, (user, q)


def test_an_empty_value_is_no_value_in_a_part_path() -> None:
    parts = Parts({"profile": PartResponse(200, b"{}"), "orders": PartResponse(200, b"{}")})
    ex = exchange(
        policy(
            "session",
            compose={
                "profile": {"backend": "users", "path": "/users/{user}"},
                "orders": {"backend": "orders", "path": "/a/{header:x-q}/b", "optional": True},
            },
        ),
        composer=Composer(fetcher=parts, max_bytes=4096),
        via="127.0.0.1:1",
    )
    answer = run(settled(ex, request("/r", **ALICE, **{"x-q": ""})))
    assert isinstance(answer, Respond) and dict(answer.headers)["x-compose-partial"] == "orders"
    assert [r.path for r in parts.requests] == ["/users/alice"]  # never /a//b


def test_a_part_header_copied_from_the_client_must_be_a_header_value() -> None:
    """As on the upstream's request: a client's obs-text, tab or 9 KiB never reach a part's
    headers (the header is left out, as when it has no value)."""
    edit = {"request_headers": {"set": {"x-copy": "v={header:x-src}"}}}
    for value, sent in [
        ("fine value", "v=fine value"),
        ("caf\xc3\xa9", None),
        ("a\tb", None),
        ("x" * 9000, None),
    ]:
        parts = Parts({"profile": PartResponse(200, b"{}"), "orders": PartResponse(200, b"{}")})
        ex = exchange(
            policy("session", compose=COMPOSE, transform=edit),
            composer=Composer(fetcher=parts, max_bytes=4096),
            via="127.0.0.1:1",
        )
        run(settled(ex, request("/r", **ALICE, **{"x-src": value, "x-q": "q"})))
        assert dict(parts.requests[0].headers).get("x-copy") == sent, value[:10]


def test_a_failing_optional_part_is_null_and_a_required_one_fails_the_answer() -> None:
    answer, _ = composed(
        {"profile": PartResponse(200, b"{}"), "orders": PartResponse(error="timeout")}
    )
    assert json.loads(answer.body) == {"profile": {}, "orders": None}
    assert dict(answer.headers)["x-compose-partial"] == "orders"
    for bad in (
        PartResponse(503, b"{}"),
        PartResponse(200, b"<html>"),
        PartResponse(error="too_large"),
    ):
        answer, _ = composed({"profile": bad, "orders": PartResponse(200, b"{}")})
        assert answer.status == 502
        assert "profile" in json.loads(answer.body)["message"]


def test_without_a_compose_listener_the_answer_is_503() -> None:
    ex = exchange(policy("session", compose=COMPOSE), composer=None, via="")
    answer = run(settled(ex, request("/r", **ALICE)))
    assert isinstance(answer, Respond) and answer.status == 503
