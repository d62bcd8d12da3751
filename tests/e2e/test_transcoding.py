"""gRPC-JSON transcoding through a real Envoy and a real gRPC server (issue 11): descriptors
stored like documents, REST/JSON per the google.api.http options, errors, and changes live
without a listener drain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Stack, eventually, route
from wardgate import devstack

pytestmark = pytest.mark.e2e

DEMO_PB = Path(__file__).resolve().parents[2] / "wardgate" / "_proto" / "demo.pb"
DEMO_PROTO = Path(__file__).resolve().parents[2] / "protos" / "wardgate" / "demo" / "v1"
GREETER = "wardgate.demo.v1.Greeter"


@pytest.fixture(scope="module")
def grpc_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = devstack.free_port()
    proc = devstack.start_upstream(
        port, "greeter", tmp_path_factory.mktemp("grpc") / "greeter.log", grpc=True
    )
    try:
        yield port
    finally:
        devstack.stop(proc)


@pytest.fixture(scope="module")
def greeter(stack: Stack, grpc_port: int) -> Iterator[Stack]:
    put = stack.cli("descriptors", "put", "demo", str(DEMO_PB))
    assert put.returncode == 0, put.stderr
    stack.apply(
        {
            "kind": "Service",
            "name": "greeter",
            "protocol": "grpc",
            "endpoints": [{"address": "127.0.0.1", "port": grpc_port}],
        },
        route(
            "greeter-rest",
            "/v1",
            "greeter",
            transcode={"descriptor": "demo", "services": [GREETER]},
        ),
        route(
            "greeter-rpc",
            f"/{GREETER}",
            "greeter",
            transcode={"descriptor": "demo", "services": [GREETER]},
        ),
    )
    with stack.client() as http:
        eventually(lambda: http.get("/v1/greeter/warm").status_code == 200, timeout=5)
    yield stack
    # The stack is shared: leave nothing behind (routes first, then what they use).
    for name in ("greeter-rest", "greeter-rpc", "greeter-notes", "plain-under-v1"):
        stack.cli("delete", "route", name)
    for kind, name in (("service", "greeter"), ("descriptor", "demo"), ("descriptor", "demo2")):
        stack.cli("delete", kind, name)


def test_path_templates_query_parameters_and_bodies(greeter: Stack) -> None:
    with greeter.client() as http:
        got = http.get("/v1/greeter/ada", params={"greeting": "hi"})
        assert got.status_code == 200 and got.headers["content-type"] == "application/json"
        assert got.json()["message"] == "hi, ada"
        assert "grpc-status" not in got.headers  # the REST answer carries no gRPC headers
        posted = http.post("/v1/greeter", json={"name": "bob", "greeting": "hey"})
        assert posted.json()["message"] == "hey, bob"
        # No google.api.http option: POST /package.Service/Method with a JSON body.
        ping = http.post(f"/{GREETER}/Ping", json={"payload": "p"})
        assert ping.json() == {"payload": "p"}


def test_server_streaming_is_a_json_array(greeter: Stack) -> None:
    with greeter.client() as http:
        got = http.get("/v1/greeter/ada/many", params={"count": 3})
    assert got.status_code == 200
    assert [m["message"] for m in got.json()] == [
        "hello #1, ada",
        "hello #2, ada",
        "hello #3, ada",
    ]


def test_a_stream_failing_midway_looks_complete_over_http1(greeter: Stack) -> None:
    """What docs/TRANSCODING.md says of it: the 200 and the first messages are sent, and the
    transcoder closes the array all the same; the failure is only in the HTTP/2 trailers
    (grpc-status, grpc-message), which HTTP/1.1 does not carry."""
    with greeter.client() as http:
        got = http.get("/v1/greeter/fail-midway/many", params={"count": 3})
    assert got.status_code == 200
    assert [m["message"] for m in got.json()] == ["hello #1, fail-midway"]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("NOT_FOUND", 404),
        ("INVALID_ARGUMENT", 400),
        ("UNAVAILABLE", 503),
        ("PERMISSION_DENIED", 403),
    ],
)
def test_grpc_errors_become_http_statuses_with_a_json_body(
    greeter: Stack, code: str, status: int
) -> None:
    with greeter.client() as http:
        got = http.get(f"/v1/fail/{code}")
    assert got.status_code == status
    body = got.json()
    assert body["message"] == f"failing with {code} as asked"
    assert "grpc-status" not in got.headers


def test_bad_requests_are_json_and_never_hang(greeter: Stack) -> None:
    with greeter.client() as http:
        malformed = http.post(
            "/v1/greeter", content=b'{"name": ', headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 400
        assert malformed.json()["error"] == "bad_request"
        unknown = http.get("/v1/greeter/ada/nothing/here")
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "not_found"
        wrong_method = http.delete("/v1/greeter/ada")
        assert wrong_method.status_code == 404


def test_auth_limits_and_identity_headers_apply_as_on_any_route(greeter: Stack) -> None:
    """A transcoding route for the notes, more specific than the public /v1 one: session
    required, four requests per hour per user, the user passed on (the server stores it)."""
    s = greeter
    added = s.cli("users", "add", "tc-user", "--password-stdin", stdin="tc-password-1\n")
    assert added.returncode == 0, added.stderr
    s.apply(
        route(
            "greeter-notes",
            "/v1/notes",
            "greeter",
            transcode={"descriptor": "demo", "services": [GREETER]},
            auth={"require": "session"},
            rate_limits=[{"by": "user", "requests": 4, "per": "hour"}],
        )
    )
    note = {"text": "buy milk", "tags": ["home"]}
    with s.client() as http:
        eventually(lambda: http.put("/v1/notes/n1", json=note).status_code == 401, timeout=5)
        login = http.post("/auth/login", json={"username": "tc-user", "password": "tc-password-1"})
        assert login.status_code == 200
        spoofed = {"x-user-id": "mallory"}
        put = http.put("/v1/notes/n1", json=note, headers=spoofed)
        assert put.status_code == 200, put.text
        assert put.json() == {"id": "n1", "note": note, "author": "tc-user"}
        assert put.headers["x-ratelimit-limit"].startswith("4")
        assert http.get("/v1/notes/n1").json() == put.json()
        text = http.get("/v1/notes/n1/text")  # a google.api.HttpBody answer: as it is
        assert text.status_code == 200 and text.text == "buy milk"
        assert text.headers["content-type"].startswith("text/plain")
        missing = http.get("/v1/notes/none-such")  # NOT_FOUND from the server
        assert missing.status_code == 404 and "none-such" in missing.json()["message"]
        assert http.put("/v1/notes/n1", json=note).status_code == 429


def _status(stack: Stack) -> dict[str, Any]:
    result = stack.cli("status", "-o", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _listener_stats(stack: Stack) -> dict[str, int]:
    wanted = ("listener_manager.listener_modified", "listener_manager.total_listeners_draining")
    out = {}
    for line in stack.admin("/stats").splitlines():
        name, _, value = line.partition(": ")
        if name in wanted:
            out[name] = int(value)
    return out


def test_a_route_that_does_not_transcode_is_never_transcoded(greeter: Stack) -> None:
    """An HTTP route under /v1, in the same scope as the transcoding one and taking a path a
    binding matches: its requests reach its backend as they were sent, whatever scope key the
    client forges (Envoy decides per-route filter switches from the client's headers)."""
    greeter.apply(route("plain-under-v1", "/v1/greeter/plain", "echo"))
    with greeter.client() as http:
        got = eventually(
            lambda: (r := http.get("/v1/greeter/plain")).status_code == 200 and r, timeout=5
        )
        assert got.json()["path"] == "/v1/greeter/plain"  # the echo backend, not gRPC
        for forged in ("1:0", "1:1", "2:7", "garbage"):
            again = http.get("/v1/greeter/plain", headers={"x-wardgate-scope": forged})
            assert again.status_code == 200 and again.json()["path"] == "/v1/greeter/plain"
            rest = http.get("/v1/greeter/ada", headers={"x-wardgate-scope": forged})
            assert rest.status_code == 200 and rest.json()["message"] == "hello, ada"
    assert greeter.cli("delete", "route", "plain-under-v1").returncode == 0


def test_descriptor_changes_are_live_without_a_listener_drain(
    greeter: Stack, tmp_path: Path
) -> None:
    """A new version of the descriptor (one more binding) is served within a second, as one
    ECDS update: the listener is not modified, nothing drains."""
    proto = tmp_path / "wardgate" / "demo" / "v1" / "greeter.proto"
    proto.parent.mkdir(parents=True)
    text = (DEMO_PROTO / "greeter.proto").read_text()
    changed = text.replace(
        'additional_bindings { post: "/v1/greeter" body: "*" }',
        'additional_bindings { post: "/v1/greeter" body: "*" }\n'
        '      additional_bindings { get: "/v1/hi/{name}" }',
    )
    assert changed != text
    proto.write_text(changed)
    before = _listener_stats(greeter)
    put = greeter.cli("descriptors", "put", "demo", str(proto), "-I", str(tmp_path))
    assert put.returncode == 0, put.stderr
    try:
        with greeter.client() as http:
            got = eventually(
                lambda: (r := http.get("/v1/hi/eve")).status_code == 200 and r, timeout=3
            )
            assert got.json()["message"] == "hello, eve"
        after = _listener_stats(greeter)
        assert (
            after["listener_manager.listener_modified"]
            == (before["listener_manager.listener_modified"])
        )
        assert after["listener_manager.total_listeners_draining"] == 0
    finally:
        back = greeter.cli("descriptors", "put", "demo", str(DEMO_PB))
        assert back.returncode == 0, back.stderr
    with greeter.client() as http:
        eventually(lambda: http.get("/v1/hi/eve").status_code == 404, timeout=3)


def test_a_broken_descriptor_is_refused_and_the_last_good_one_served(greeter: Stack) -> None:
    r = greeter.redis()
    key = f"{greeter.prefix}descriptors"
    good = r.hget(key, "demo")
    assert good is not None
    broken = json.dumps(
        {"kind": "Descriptor", "name": "demo", "descriptor_set": "bm90IGEgZGVzY3JpcHRvcg=="}
    )
    r.hset(key, "demo", broken)
    try:
        refused = eventually(lambda: _status(greeter)["refused"].get("Descriptor/demo"), timeout=5)
        assert "FileDescriptorSet" in refused or "descriptor" in refused
        with greeter.client() as http:
            assert http.get("/v1/greeter/still").json()["message"] == "hello, still"
    finally:
        r.hset(key, "demo", good)
    eventually(lambda: "Descriptor/demo" not in _status(greeter)["refused"], timeout=5)


def test_a_descriptor_in_use_cannot_be_deleted(greeter: Stack) -> None:
    deleted = greeter.cli("delete", "descriptor", "demo")
    assert deleted.returncode != 0
    assert "still uses it" in deleted.stderr
    assert "demo" in greeter.cli("descriptors", "list").stdout


def test_envoy_limits_are_refused_before_envoy_sees_them(greeter: Stack, tmp_path: Path) -> None:
    """What Envoy's transcoder would refuse, taking every transcoding route down with it, is
    refused by wardgate: response_body on a non-HttpBody field (one descriptor), and a second
    descriptor whose binding another route's service already has (one route)."""
    proto = tmp_path / "bad.proto"
    proto.write_text(
        'syntax = "proto3";\npackage tc.bad;\nimport "google/api/annotations.proto";\n'
        "message M { string a = 1; M inner = 2; }\n"
        "service S { rpc Get(M) returns (M) {\n"
        '  option (google.api.http) = { get: "/v1/greeter/{a}" response_body: "inner" }; } }\n'
    )
    put = greeter.cli("descriptors", "put", "bad", str(proto))
    assert put.returncode != 0 and "response_body" in put.stderr
    proto.write_text(proto.read_text().replace(' response_body: "inner"', ""))
    put = greeter.cli("descriptors", "put", "demo2", str(proto))
    assert put.returncode == 0, put.stderr
    clash = route(
        "greeter-clash",
        "/v1/clash",
        "greeter",
        transcode={"descriptor": "demo2", "services": ["tc.bad.S"]},
    )
    path = tmp_path / "clash.yaml"
    path.write_text(json.dumps(clash))
    applied = greeter.cli("apply", "-f", str(path))
    assert applied.returncode != 0
    assert "GET /v1/greeter/{" in applied.stderr, applied.stderr
    # Written straight to Redis, it is refused alone; the routes already served stay.
    greeter.redis().hset(f"{greeter.prefix}routes", "greeter-clash", json.dumps(clash))
    try:
        reason = eventually(
            lambda: _status(greeter)["refused"].get("Route/greeter-clash"), timeout=5
        )
        assert "bound by both" in reason
        assert "Route/greeter-rest" not in _status(greeter)["refused"]
    finally:
        greeter.redis().hdel(f"{greeter.prefix}routes", "greeter-clash")
    with greeter.client() as http:
        assert http.get("/v1/greeter/fine").status_code == 200


def test_descriptors_are_in_history_and_rollback(greeter: Stack, tmp_path: Path) -> None:
    history = json.loads(greeter.cli("history", "-o", "json", "-n", "1").stdout)
    before = history[0]["revision"]
    proto = tmp_path / "solo.proto"
    proto.write_text(
        'syntax = "proto3";\npackage tc.solo;\nmessage M { string a = 1; }\n'
        "service Solo { rpc Echo(M) returns (M); }\n"
    )
    put = greeter.cli("descriptors", "put", "solo", str(proto))
    assert put.returncode == 0, put.stderr
    listed = greeter.cli("descriptors", "list").stdout
    assert "solo" in listed and "tc.solo.Solo" in listed
    latest = json.loads(greeter.cli("history", "-o", "json", "-n", "1").stdout)[0]
    assert {"kind": "Descriptor", "name": "solo", "action": "created"}.items() <= (
        latest["changes"][0].items()
    )
    back = greeter.cli("rollback", str(before))
    assert back.returncode == 0, back.stderr
    assert "solo" not in greeter.cli("descriptors", "list").stdout


def test_a_transcoding_route_carries_only_its_own_services(
    private_stack: Stack, grpc_port: int, tmp_path: Path
) -> None:
    """Envoy's one transcoder holds every transcoding route's services. A public route that
    transcodes another service, under /v1, on the same gRPC server, must not carry the
    Greeter's PUT /v1/notes/{id} (which no route for the Greeter takes) to that server: only
    the Greeter's own route, with its session check, may."""
    s = private_stack
    other = tmp_path / "other.proto"
    other.write_text(
        'syntax = "proto3";\npackage tc.other;\nimport "google/api/annotations.proto";\n'
        "message M { string a = 1; }\n"
        "service Other { rpc Get(M) returns (M) {\n"
        '  option (google.api.http) = { get: "/v1/other/{a}" }; } }\n'
    )
    for name, file in (("demo", str(DEMO_PB)), ("other", str(other))):
        put = s.cli("descriptors", "put", name, file)
        assert put.returncode == 0, put.stderr
    applied = s.apply(
        {
            "kind": "Service",
            "name": "greeter",
            "protocol": "grpc",
            "endpoints": [{"address": "127.0.0.1", "port": grpc_port}],
        },
        route(
            "greeter-private",
            "/v1/greeter",
            "greeter",
            auth={"require": "session"},
            transcode={"descriptor": "demo", "services": [GREETER]},
        ),
        route(
            "other-public",
            "/v1",
            "greeter",
            transcode={"descriptor": "other", "services": ["tc.other.Other"]},
        ),
    )
    assert applied.returncode == 0, applied.stderr
    with s.client() as http:
        eventually(lambda: http.get("/v1/greeter/ada").status_code == 401, timeout=5)
        note = http.put("/v1/notes/planted-x", json={"text": "planted"})
        assert note.status_code == 404, note.text
        assert note.json()["error"] == "not_found"
        assert http.get("/v1/notes/planted-x").status_code == 404
        # The route's own service is transcoded and reaches the server (which does not
        # implement it: UNIMPLEMENTED, 501).
        own = http.get("/v1/other/x")
        assert own.status_code == 501, own.text
    # Nothing reached the Greeter: with the Greeter's own route public, the note is not there.
    exposed = s.apply(
        route(
            "greeter-private",
            "/v1/greeter",
            "greeter",
            transcode={"descriptor": "demo", "services": [GREETER]},
        ),
        route(
            "greeter-notes",
            "/v1/notes",
            "greeter",
            transcode={"descriptor": "demo", "services": [GREETER]},
        ),
    )
    assert exposed.returncode == 0, exposed.stderr
    with s.client() as http:
        eventually(lambda: http.get("/v1/greeter/ada").status_code == 200, timeout=5)
        assert http.get("/v1/notes/planted-x").status_code == 404  # NOT_FOUND from the server
        assert "planted-x" in http.get("/v1/notes/planted-x").json()["message"]
