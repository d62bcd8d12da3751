"""transform, cache and compose through a real Envoy calling wardgate's external processor
(issue 12): headers from the identity, JSON fields hidden, the shared response cache (never
one user's answer to another, one trip upstream per key), purges, composition."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Stack, eventually, service, with_redis
from wardgate import devstack
from wardgate.domain.catalog import plan_delete
from wardgate.domain.ports import ApiKeyRecord
from wardgate.domain.tokens import hash_api_key, new_api_key
from wardgate.store.documents import RedisDocumentStore
from wardgate.store.keys import Keys
from wardgate.store.redis_store import RedisApiKeyStore
from wardgate.xds.scope_key import request_segments, scope_key

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
USERS = [f"xpuser{i}" for i in range(20)]


def start_upstream(port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.extproc_upstream", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    devstack.wait_port(port, proc=proc, what="extproc upstream")
    return proc


def create_keys(stack: Stack, names: list[str]) -> dict[str, str]:
    """API keys straight into the store (the CLI would cost a process each)."""
    keys = {name: new_api_key() for name in names}

    async def body(redis: Any) -> None:
        store = RedisApiKeyStore(redis=redis, keys=Keys(stack.prefix))
        for name, key in keys.items():
            await store.put_key(hash_api_key(key), ApiKeyRecord(name, ("user",), "", 0.0, 0.0))

    with_redis(stack.redis_url, body)
    return keys


def xp_route(name: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "Route", "name": name, "match": {"prefix": prefix}, "backend": "xp-up", **extra}


ENRICH = {
    "request_headers": {
        "set": {"x-tenant": "{user}", "x-via": "{route}:{auth_method}", "x-static": "v%1"},
        "remove": ["x-debug"],
    },
    "response_headers": {
        "set": {"x-for": "{user}", "x-frame-options": "DENY"},
        "remove": ["x-powered-by"],
    },
}
ROUTES = [
    xp_route("xp-enrich", "/xp/enrich", auth={"require": "api_key"}, transform=ENRICH),
    xp_route(
        "xp-hide",
        "/xp/hide",
        transform={
            "request_headers": {"set": {"x-tenant": "{user}"}},
            "response_json": {"exclude": ["password", "internal.*", "items.secret"]},
        },
    ),
    xp_route(
        "xp-include", "/xp/include", transform={"response_json": {"include": ["id", "items.id"]}}
    ),
    xp_route("xp-cache", "/xp/cache", cache={"ttl": "60s", "vary": ["accept-language"]}),
    xp_route("xp-mine", "/xp/mine", auth={"require": "api_key"}, cache={"ttl": "60s"}),
    xp_route(
        "xp-shared", "/xp/shared", auth={"require": "api_key"}, cache={"ttl": "60s", "shared": True}
    ),
    xp_route("xp-plain", "/xq/plain"),  # another first segment: another scope
    {
        "kind": "Route",
        "name": "xp-dash",
        "match": {"path": "/xp/dash", "methods": ["GET"]},
        "auth": {"require": "api_key"},
        "compose": {
            "profile": {"backend": "xp-up", "path": "/profile/{user}?q={header:x-q}"},
            "slow": {
                "backend": "xp-up",
                "path": "/slow?delay=3",
                "timeout": "1s",
                "optional": True,
            },
        },
        "transform": {"response_json": {"exclude": ["profile.password"]}},
    },
    {
        "kind": "Route",
        "name": "xp-dash-fail",
        "match": {"path": "/xp/dash-fail", "methods": ["GET"]},
        "compose": {
            "ok": {"backend": "xp-up", "path": "/ok"},
            "broken": {"backend": "xp-up", "path": "/broken?status=503"},
        },
    },
]


@pytest.fixture(scope="module")
def xp(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int]]:
    port = devstack.free_port()
    proc = start_upstream(port, tmp_path_factory.mktemp("xp") / "upstream.log")
    try:
        stack.apply(service("xp-up", port), *ROUTES)
        with stack.client() as http:
            eventually(lambda: http.get("/xq/plain").status_code == 200, timeout=5)
            eventually(lambda: http.get("/xp/cache/warm").headers.get("x-cache"), timeout=5)
        yield stack, port
    finally:
        remove_documents(stack, [r["name"] for r in ROUTES], ["xp-up"])
        devstack.stop(proc)


def remove_documents(stack: Stack, routes: list[str], services: list[str]) -> None:
    """The stack is shared: leave nothing behind (in one commit each, not a CLI run each)."""

    async def body(redis: Any) -> None:
        store = RedisDocumentStore(redis=redis, keys=Keys(stack.prefix))
        for kind, names in (("Route", routes), ("Service", services)):
            await store.commit(
                lambda current, kind=kind, names=names: [
                    plan_delete(current, kind, n) for n in names if n in current.get(kind, {})
                ]
            )

    with_redis(stack.redis_url, body)


@pytest.fixture(scope="module")
def keys(xp: tuple[Stack, int]) -> dict[str, str]:
    return create_keys(xp[0], USERS)


def forged_scope(path: str) -> str:
    """The scope key the scope filter gives ``path`` (first segment, the depth routes here
    use): what a client would forge to pick another route's table."""
    return scope_key(1, request_segments(path))


def counts(port: int) -> dict[str, int]:
    data: dict[str, int] = httpx.get(f"http://127.0.0.1:{port}/__count", timeout=5).json()
    return data


def metric(stack: Stack, name: str, **labels: str) -> float:
    """A sample of wardgate's /metrics (0 when absent)."""
    text = httpx.get(f"http://127.0.0.1:{stack.http_port}/metrics", timeout=5).text
    # Labels as the exposition writes them (in the metric's declared order, not sorted).
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            written = line[len(name) + 1 :].split("}")[0]
            if set(written.split(",")) == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def stat(stack: Stack, name: str) -> int:
    for line in stack.admin("/stats").splitlines():
        if line.startswith(f"{name}: "):
            return int(line.split(": ")[1])
    return 0


# --- transform -------------------------------------------------------------------------------


def test_request_headers_come_from_the_identity_never_from_the_client(
    xp: tuple[Stack, int], keys: dict[str, str]
) -> None:
    stack, _ = xp
    forged = {"x-tenant": "victim", "x-debug": "1", "x-static": "forged", "x-for": "forged"}
    with stack.client() as http:
        got = http.get("/xp/enrich/a", headers={"x-api-key": keys["xpuser1"], **forged})
    assert got.status_code == 200
    seen = got.json()["headers"]
    assert seen["x-tenant"] == "xpuser1" and seen["x-via"] == "xp-enrich:api_key"
    assert seen["x-static"] == "v%1"  # Envoy's own, '%' kept literal
    assert "x-debug" not in seen
    assert got.headers["x-for"] == "xpuser1" and got.headers["x-frame-options"] == "DENY"
    assert "x-powered-by" not in got.headers


def test_a_placeholder_without_a_value_removes_what_the_client_sent(xp: tuple[Stack, int]) -> None:
    stack, _ = xp
    with stack.client() as http:
        got = http.get("/xp/hide/a", headers={"x-tenant": "victim"})  # a public route: no user
    assert got.status_code == 200 and "x-tenant" not in got.json()["headers"]


def test_json_fields_are_hidden_and_what_cannot_be_filtered_is_refused(
    xp: tuple[Stack, int],
) -> None:
    stack, _ = xp
    with stack.client() as http:
        body = http.get("/xp/hide/a").json()
        assert "password" not in body and body["internal"] == {}
        assert body["items"] == [{"id": 1}, {"id": 2}] and body["profile"]["phone"] == "555"
        assert "accept-encoding" not in body["headers"]  # the processor must read the body
        # A browser's accept: a negotiating upstream would answer HTML it cannot filter.
        browsed = http.get("/xp/hide/a", headers={"accept": "text/html,*/*;q=0.8"}).json()
        assert browsed["headers"]["accept"] == "application/json"
        assert http.get("/xp/include/a").json() == {"id": 7, "items": [{"id": 1}, {"id": 2}]}
        # A gzip answer sent anyway is read, filtered and sent plain.
        zipped = http.get("/xp/hide/z", params={"gzip": 1})
        assert "password" not in zipped.json() and "content-encoding" not in zipped.headers
        # A range of the document is not asked for: bytes 40-48 would be '"hunter2"'.
        ranged = http.get("/xp/hide/g", headers={"range": "bytes=40-48", "if-range": "x"})
        assert ranged.status_code == 200 and "hunter2" not in ranged.text
        assert "range" not in ranged.json()["headers"]
        # Nothing to hide: an empty chunked JSON answer passes.
        empty = http.get("/xp/hide/e", params={"late": 0.1, "empty": 1})
        assert empty.status_code == 200 and empty.content == b""
        # Not JSON: untouched.
        text = http.get("/xp/hide/t", params={"ctype": "text/plain"})
        assert "hunter2" in text.text
        # Fails closed: never the unfiltered answer.
        for params in ({"malformed": 1}, {"encoding": "br"}, {"size": 1_500_000}):
            refused = http.get("/xp/hide/r", params=params)
            assert refused.status_code == 502, params
            assert refused.json()["error"] == "bad_gateway"
            assert "hunter2" not in refused.text


def test_a_forged_scope_header_neither_skips_nor_adds_processing(xp: tuple[Stack, int]) -> None:
    """The processor is chosen per route after the scope filter overwrote x-wardgate-scope:
    a client naming another route's scope changes nothing."""
    stack, _ = xp
    with stack.client() as http:
        assert forged_scope("/xq/plain") != forged_scope("/xp/hide")
        hidden = http.get("/xp/hide/a", headers={"x-wardgate-scope": forged_scope("/xq/plain")})
        assert hidden.status_code == 200 and "password" not in hidden.json()
        plain = http.get("/xq/plain/a", headers={"x-wardgate-scope": forged_scope("/xp/hide")})
        assert plain.status_code == 200 and plain.json()["password"] == "hunter2"
        assert "x-cache" not in plain.headers


# --- the cache -------------------------------------------------------------------------------


def test_a_miss_then_hits_with_one_trip_upstream(xp: tuple[Stack, int]) -> None:
    stack, port = xp
    with stack.client() as http:
        first = http.get("/xp/cache/one", params={"q": "1"})
        assert first.headers["x-cache"] == "MISS" and first.json()["n"] == 1
        hits = [http.get("/xp/cache/one", params={"q": "1"}) for _ in range(3)]
    for hit in hits:
        assert hit.headers["x-cache"] == "HIT" and int(hit.headers["age"]) >= 0
        assert hit.json() == first.json()
    assert counts(port)["/xp/cache/one?q=1"] == 1


def test_a_hit_is_the_answer_with_every_value_of_a_repeated_header(xp: tuple[Stack, int]) -> None:
    stack, _ = xp
    with stack.client() as http:
        first = http.get("/xp/cache/links", params={"links": 1})
        hit = http.get("/xp/cache/links", params={"links": 1})
    assert first.headers["x-cache"] == "MISS" and hit.headers["x-cache"] == "HIT"
    assert hit.headers.get_list("link") == ["</a.css>; rel=preload", "</b.js>; rel=preload"]
    assert hit.headers.get_list("link") == first.headers.get_list("link")


def test_what_the_cache_must_not_keep_or_answer(xp: tuple[Stack, int]) -> None:
    stack, port = xp

    def trips(path: str, params: dict[str, Any] | None = None, **headers: str) -> int:
        with stack.client() as http:
            for _ in range(3):
                assert http.get(path, params=params, headers=headers).status_code in (200, 404)
        qs = "?" + str(httpx.QueryParams(params)) if params else ""
        return counts(port)[path + qs]

    assert trips("/xp/cache/ns", {"cc": "no-store"}) == 3
    assert trips("/xp/cache/pv", {"cc": "private"}) == 3
    assert trips("/xp/cache/ck", {"cookie": 1}) == 3
    assert trips("/xp/cache/vy", {"vary": "x-other"}) == 3
    assert trips("/xp/cache/st", {"status": 404}) == 3
    assert trips("/xp/cache/au", authorization="Bearer not-ours") == 3
    assert trips("/xp/cache/rq", **{"cache-control": "no-store"}) == 3
    # A request asking for a fresh answer gets one, and refreshes the entry.
    with stack.client() as http:
        http.get("/xp/cache/fresh")
        fresh = http.get("/xp/cache/fresh", headers={"cache-control": "no-cache"})
        assert fresh.headers["x-cache"] == "MISS" and fresh.json()["n"] == 2
        assert http.get("/xp/cache/fresh").json()["n"] == 2
        # vary: each accept-language its own entry; HEAD its own; POST never.
        assert http.get("/xp/cache/v", headers={"accept-language": "en"}).json()["n"] == 1
        assert http.get("/xp/cache/v", headers={"accept-language": "de"}).json()["n"] == 2
        assert http.get("/xp/cache/v", headers={"accept-language": "en"}).json()["n"] == 1
        head = http.head("/xp/cache/v", headers={"accept-language": "en"})
        assert head.headers["x-cache"] == "MISS"
        assert http.post("/xp/cache/v").json()["n"] == 4
        # max-age below the route's ttl wins.
        short = {"cc": "max-age=1"}
        assert http.get("/xp/cache/ma", params=short).json()["n"] == 1
        assert http.get("/xp/cache/ma", params=short).headers["x-cache"] == "HIT"
        time.sleep(2.2)
        assert http.get("/xp/cache/ma", params=short).headers["x-cache"] == "MISS"
    # Larger than extproc_max_body_bytes: passed untouched, not stored.
    assert trips("/xp/cache/big", {"size": 1_200_000}) == 3


def test_users_never_receive_each_others_answers_under_concurrency(
    xp: tuple[Stack, int], keys: dict[str, str]
) -> None:
    """Twenty users, four requests each, all at once, on a per-user cached route whose
    upstream takes 300 ms: each gets their own answer, never another's."""
    stack, port = xp

    async def main() -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(base_url=stack.base, timeout=15) as http:

            async def one(user: str) -> tuple[str, httpx.Response]:
                got = await http.get(
                    "/xp/mine/x", params={"delay": 0.3}, headers={"x-api-key": keys[user]}
                )
                return user, got

            return await asyncio.gather(*(one(u) for u in USERS for _ in range(4)))

    results = asyncio.run(main())
    served = set()
    for user, got in results:
        if got.status_code == 503:  # ext_authz past its deadline on a loaded machine: no answer
            assert got.json()["message"] == "authorization is unavailable; retry shortly"
            continue
        assert got.status_code == 200, got.text
        assert got.json()["user"] == user  # the one rule
        served.add(user)
    assert len(served) >= len(USERS) // 2
    # Fewer trips than answers: requests of one user waited for that user's first answer
    # (one trip per user, a few more on a loaded machine; test_concurrent_misses counts).
    answered = sum(1 for _, got in results if got.status_code == 200)
    assert len(served) <= counts(port)["/xp/mine/x?delay=0.3"] < answered
    # And afterwards, hits are still per user.
    with stack.client() as http:
        for user in sorted(served)[:5]:
            hit = http.get("/xp/mine/x", params={"delay": 0.3}, headers={"x-api-key": keys[user]})
            assert hit.headers["x-cache"] == "HIT" and hit.json()["user"] == user


def test_concurrent_misses_send_one_request_upstream(xp: tuple[Stack, int]) -> None:
    stack, port = xp

    def get(_: int) -> httpx.Response:
        with httpx.Client(base_url=stack.base, timeout=15) as http:
            return http.get("/xp/cache/flight", params={"delay": 0.5})

    def detours() -> float:
        """Requests that went upstream on their own: waited past cache_lock_wait, found the
        leader gone, or the processor past Envoy's deadline (a loaded machine)."""
        return (
            sum(
                metric(stack, "wardgate_cache_bypass_total", reason=r, route="xp-cache")
                for r in ("wait_timeout", "pass")
            )
            + stat(stack, "http.wardgate.ext_proc.wardgate.message_timeouts")
            + stat(stack, "http.wardgate.ext_proc.wardgate.streams_failed")
        )

    before = detours()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(get, range(12)))
    extra = detours() - before
    assert all(a.status_code == 200 for a in answers)
    trips = counts(port)["/xp/cache/flight?delay=0.5"]
    if extra == 0:
        assert trips == 1  # the others waited for the first one's answer
        assert [a.headers["x-cache"] for a in answers].count("MISS") == 1
        assert all(a.json()["n"] == 1 for a in answers)
    else:
        assert trips <= 1 + extra


def test_a_shared_entry_serves_every_user_of_an_authenticated_route(
    xp: tuple[Stack, int], keys: dict[str, str]
) -> None:
    stack, _ = xp
    with stack.client() as http:
        first = http.get("/xp/shared/s", headers={"x-api-key": keys["xpuser2"]})
        other = http.get("/xp/shared/s", headers={"x-api-key": keys["xpuser3"]})
        assert other.headers["x-cache"] == "HIT" and other.json() == first.json()
        assert http.get("/xp/shared/s").status_code == 401  # the cache is behind ext_authz


def test_purge_a_route_or_one_path(xp: tuple[Stack, int]) -> None:
    stack, _ = xp
    with stack.client() as http:
        for path in ("/xp/cache/p1", "/xp/cache/p2"):
            http.get(path, params={"q": 1})
            http.get(path, params={"q": 2})
            assert http.get(path, params={"q": 1}).headers["x-cache"] == "HIT"
        purged = stack.cli("cache", "purge", "xp-cache", "--path", "/xp/cache/p1")
        assert purged.returncode == 0 and "purged 2 cached answers" in purged.stdout
        assert http.get("/xp/cache/p1", params={"q": 2}).headers["x-cache"] == "MISS"
        assert http.get("/xp/cache/p2", params={"q": 2}).headers["x-cache"] == "HIT"
        assert stack.cli("cache", "purge", "xp-cache").returncode == 0
        assert http.get("/xp/cache/p2", params={"q": 2}).headers["x-cache"] == "MISS"


# --- composition -----------------------------------------------------------------------------


def test_a_composed_answer_carries_each_part_and_the_callers_identity(
    xp: tuple[Stack, int], keys: dict[str, str]
) -> None:
    stack, port = xp
    sent = stat(stack, "cluster.xp-up.upstream_rq_total")
    with httpx.Client(base_url=stack.base, timeout=15) as http:
        got = http.get("/xp/dash", headers={"x-api-key": keys["xpuser4"], "x-q": "../a?b#c"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert set(body) == {"profile", "slow"} and body["slow"] is None
    assert got.headers["x-compose-partial"] == "slow"
    profile = body["profile"]
    assert profile["user"] == "xpuser4" and profile["roles"] == "user"
    assert "password" not in profile  # the route's response_json applies to the whole
    # A value fills one query value, whatever it holds.
    assert profile["path"] == "/profile/xpuser4?q=..%2Fa%3Fb%23c"
    assert "x-api-key" not in profile["headers"] and "x-wardgate-part" not in profile["headers"]
    # Through Envoy's cluster for the backend (balancing, health checks, retries are Envoy's).
    assert stat(stack, "cluster.xp-up.upstream_rq_total") >= sent + 2
    assert counts(port)["/profile/xpuser4?q=..%2Fa%3Fb%23c"] == 1


def test_a_failing_required_part_is_a_502_naming_it(xp: tuple[Stack, int]) -> None:
    stack, _ = xp
    with stack.client() as http:
        got = http.get("/xp/dash-fail")
        assert got.status_code == 502
        assert got.json()["error"] == "bad_gateway" and "broken" in got.json()["message"]
        assert http.post("/xp/dash-fail").status_code == 404  # GET and HEAD only


def test_documents_that_would_touch_identity_are_refused(xp: tuple[Stack, int]) -> None:
    stack, _ = xp
    path = stack.workdir / "bad-transform.yaml"
    bad = {"request_headers": {"set": {"x-user-id": "root"}}}
    path.write_text(json.dumps(xp_route("xp-bad", "/xp/bad", transform=bad)))
    result = stack.cli("apply", "-f", str(path))
    assert result.returncode != 0 and "'x-user-id' is reserved" in result.stderr
    # Written straight into Redis: refused by the watcher, never served.
    raw = xp_route(
        "xp-raw",
        "/xp/raw",
        transform={"request_headers": {"set": {"x-copy": "{header:cookie}"}}},
    )
    keys = Keys(stack.prefix)
    r = stack.redis()
    try:
        r.hset(keys.routes, "xp-raw", json.dumps(raw))
        eventually(lambda: "Route/xp-raw" in r.hgetall(keys.refused), timeout=5)
        assert "credentials" in r.hget(keys.refused, "Route/xp-raw")
        with stack.client() as http:
            assert http.get("/xp/raw/a", headers={"cookie": "wg_session=x"}).status_code == 404
    finally:
        r.hdel(keys.routes, "xp-raw")
        r.close()


def compose_port(stack: Stack) -> int:
    """The compose listener's port, from Envoy's admin."""
    listeners = json.loads(stack.admin("/listeners?format=json"))["listener_statuses"]
    (found,) = [ls for ls in listeners if ls["name"] == "wardgate_compose"]
    return int(found["local_address"]["socket_address"]["port_value"])


def test_the_compose_listener_answers_only_wardgate(
    xp: tuple[Stack, int], keys: dict[str, str]
) -> None:
    """Anyone who reaches the compose port (bound beyond loopback in a container or a pod)
    must not get a backend's answer without the deployment's compose key."""
    stack, port = xp
    before = counts(port)
    base = f"http://127.0.0.1:{compose_port(stack)}"
    part = {"x-wardgate-part": "xp-dash/profile"}
    with httpx.Client(base_url=base, timeout=5) as http:
        assert http.get("/profile/victim", headers=part).status_code == 404
        forged = {**part, "x-wardgate-compose-key": "guess", "x-user-id": "victim"}
        assert http.get("/profile/victim", headers=forged).status_code == 404
    assert counts(port).get("/profile/victim", 0) == before.get("/profile/victim", 0)
    with httpx.Client(base_url=stack.base, timeout=15) as http:  # wardgate itself still can
        got = http.get("/xp/dash", headers={"x-api-key": keys["xpuser5"], "x-q": "1"})
    assert got.status_code == 200, got.text
    assert got.json()["profile"]["user"] == "xpuser5"
