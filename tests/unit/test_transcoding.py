"""Descriptors and transcoding routes, before Envoy sees them: what Envoy's transcoder would
refuse (taking every transcoding route down with it) is refused here, per descriptor or per
route, with the reason said."""

from __future__ import annotations

import base64
import functools
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, empty_pb2
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as FieldType

from tests import xds_views as views
from wardgate.cli.base import CliError
from wardgate.cli.descriptors import compile_proto, read_descriptor_set
from wardgate.domain import route_order, transcoding
from wardgate.domain.catalog import Catalog
from wardgate.domain.documents import parse_document
from wardgate.domain.grpc_api import combined_problem, merge, parse_descriptor_set
from wardgate.domain.http_template import parse_template
from wardgate.domain.route_order import RouteIndex, first_route
from wardgate.xds.assemble import build_base
from wardgate.xds.transcoder import TRANSCODER
from wardgate.xds.translate import TranslateOptions

DEMO_PB = Path(__file__).resolve().parents[2] / "wardgate" / "_proto" / "demo.pb"
OPTS = TranslateOptions(http_host="127.0.0.1")

HEADER = 'syntax = "proto3";\npackage {pkg};\nimport "google/api/annotations.proto";\n'
HEADER += 'import "google/api/httpbody.proto";\n'
HEADER += "message Req {{ string id = 1; Inner inner = 2; }}\n"
HEADER += "message Inner {{ string text = 1; }}\n"
HEADER += "message Resp {{ string id = 1; Inner inner = 2; google.api.HttpBody raw = 3; }}\n"


@functools.cache
def _compiled(pkg: str, service: str, tmp: str, name: str = "api.proto") -> bytes:
    path = Path(tmp) / name
    path.write_text(HEADER.format(pkg=pkg) + service)
    return compile_proto(path)


def _api_bytes(
    tmp_path: Path, service: str, *, pkg: str = "t.v1", name: str = "api.proto"
) -> bytes:
    return _compiled(pkg, service, str(tmp_path), name)


def _rpc(method: str, rule: str, returns: str = "Resp") -> str:
    option = f"option (google.api.http) = {{ {rule} }};"
    return f"rpc {method}(Req) returns ({returns}) {{ {option} }}\n"


@pytest.mark.parametrize(
    ("template", "pattern"),
    [
        ("/v1/items/{id}", "/v1/items/*"),
        ("/v1/{name=shelves/*/books/*}:archive", "/v1/shelves/*/books/*:archive"),
        ("/v1/files/{path=**}", "/v1/files/**"),
        ("/v1/{inner.text}", "/v1/*"),
        ("/", "/"),
        # Envoy takes literals after a **: /v1/a/b/blob matches with path a/b.
        ("/v1/{path=**}/blob", "/v1/**/blob"),
        ("/v1/**/x/y", "/v1/**/x/y"),
        ("/v1/{path=**}:get", "/v1/**:get"),
    ],
)
def test_templates_parse_to_the_pattern_envoy_registers(template: str, pattern: str) -> None:
    assert parse_template(template).pattern() == pattern


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("v1/items", "does not start with /"),
        ("/v1//items", "empty"),
        ("/v1/{id", "unbalanced"),
        ("/v1/id}", "unbalanced"),
        ("/v1/{1id}", "not a field path"),
        ("/v1/{a={b}}", "do not nest"),
        ("/v1/**/*", "only literal segments may follow"),
        ("/v1/{a=**}/{b}", "only literal segments may follow"),
        # Envoy's parser refuses these (its whole configuration with them):
        ("/:verb", "no segment before the verb"),
        ("/v1/{id=}", "nothing after '='"),
        ("", "does not start with /"),
        ("/v1/a b", "not allowed"),
        ("/v1/a\r\nx", "not allowed"),
        ("/" + "a" * 2000, "longer than"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(template: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_template(template)


def test_the_demo_descriptor_parses_with_its_bindings() -> None:
    api = parse_descriptor_set(DEMO_PB.read_bytes())
    bindings = {(m, b.verb, b.template) for m, b in api.bindings("wardgate.demo.v1.Greeter")}
    assert ("SayHello", "GET", "/v1/greeter/{name}") in bindings
    assert ("SayHello", "POST", "/v1/greeter") in bindings
    # No option: what Envoy's auto_mapping registers.
    assert ("Ping", "POST", "/wardgate.demo.v1.Greeter/Ping") in bindings


@pytest.mark.parametrize(
    ("service", "reason"),
    [
        # Envoy: "response_body is not supported yet for non-HttpBody fields".
        (_rpc("Get", 'get: "/v1/x/{id}" response_body: "inner"'), "google.api.HttpBody"),
        (_rpc("Get", 'get: "/v1/x/{id}" response_body: "nothing"'), "no such field"),
        (_rpc("Put", 'put: "/v1/x/{id}" body: "nothing"'), "body nothing: no such field"),
        (_rpc("Get", 'get: "/v1/x/{missing}"'), "path variable missing"),
        (_rpc("Get", 'get: "/v1/x/{inner.nope}"'), "path variable inner.nope"),
        (_rpc("Get", 'get: "/v1/x//y"'), "empty"),
        (_rpc("Get", 'custom: { kind: "GET POST" path: "/v1/x" }'), "HTTP method"),
        # One pattern twice in one service (variable names do not count): Envoy takes it and
        # answers 404 on that path for both.
        (_rpc("A", 'get: "/v1/x/{id}"') + _rpc("B", 'get: "/v1/x/{inner.text}"'), "bound by both"),
        # ... and so for one method binding it twice, or a custom verb that is a custom method.
        (_rpc("A", 'get: "/v1/x" additional_bindings { get: "/v1/x" }'), "bound twice by t.v1.S/A"),
        (
            _rpc("A", 'get: "/v1/x:go"') + _rpc("B", 'custom: { kind: "GETgo" path: "/v1/x" }'),
            "bound by both",
        ),
        # Envoy resolves the rule's body even when the rule binds no path.
        (_rpc("A", 'body: "nothing"'), "body nothing: no such field"),
        (_rpc("A", 'body: "nothing" additional_bindings { get: "/v1/x" }'), "body nothing"),
        # Templates Envoy's parser refuses, with the whole configuration.
        (_rpc("Get", 'get: "/:verb"'), "no segment before the verb"),
        (_rpc("Get", 'get: "/v1/{id=}"'), "nothing after '='"),
    ],
)
def test_what_envoy_would_refuse_is_refused_per_descriptor(
    tmp_path: Path, service: str, reason: str
) -> None:
    data = _api_bytes(tmp_path, f"service S {{\n{service}}}\n")
    with pytest.raises(ValueError, match=reason):
        parse_descriptor_set(data)


def test_a_body_may_name_a_field_by_its_json_name(tmp_path: Path) -> None:
    """Envoy's transcoder resolves ``body: "inner"`` and ``body: "innerText"`` alike (field
    name or JSON name): both are accepted."""
    rpc = _rpc("Post", 'post: "/v1/x/{id}" body: "inner"').replace("inner", "inner_note")
    service = "service S {\n" + rpc + "}\n"
    header = HEADER.replace("Inner inner = 2;", "Inner inner_note = 2;")
    path = tmp_path / "json.proto"
    path.write_text(header.format(pkg="j.v1") + service.replace('inner_note"', 'innerNote"'))
    api = parse_descriptor_set(compile_proto(path))
    assert list(api.services) == ["j.v1.S"]


def test_response_body_on_an_http_body_field_is_accepted(tmp_path: Path) -> None:
    service = "service S {\n" + _rpc("Get", 'get: "/v1/x/{id}" response_body: "raw"') + "}\n"
    api = parse_descriptor_set(_api_bytes(tmp_path, service))
    assert list(api.services) == ["t.v1.S"]


@pytest.mark.parametrize(
    "data", [b"", b"\xff\xfe not protobuf", b"\x0a\x03abc"], ids=["empty", "garbage", "truncated"]
)
def test_bytes_that_are_not_a_descriptor_set_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_descriptor_set(data)


def test_services_that_cannot_share_envoys_transcoder_are_found(tmp_path: Path) -> None:
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
    get = _rpc("Get", 'get: "/v1/x/{id}"')
    a = parse_descriptor_set(_api_bytes(tmp_path / "a", f"service A {{\n{get}}}\n"))
    # Another version of the same file (api.proto), another service in it.
    b = parse_descriptor_set(_api_bytes(tmp_path / "b", f"service B {{\n{get}}}\n"))
    # Another file and package, the same REST binding.
    c = parse_descriptor_set(
        _api_bytes(tmp_path / "c", f"service C {{\n{get}}}\n", pkg="u.v1", name="other.proto")
    )
    assert combined_problem({"t.v1.A": a}) is None
    assert "api.proto differs between descriptors" in str(
        combined_problem({"t.v1.A": a, "t.v1.B": b})
    )
    assert "bound by both t.v1.A/Get and u.v1.C/Get" in str(
        combined_problem({"t.v1.A": a, "u.v1.C": c})
    )


def _descriptor_doc(name: str, data: bytes) -> str:
    return json.dumps(
        {"kind": "Descriptor", "name": name, "descriptor_set": base64.b64encode(data).decode()}
    )


def _grpc_service(name: str) -> str:
    return json.dumps(
        {
            "kind": "Service",
            "name": name,
            "protocol": "grpc",
            "endpoints": [{"address": "10.0.0.1", "port": 50051}],
        }
    )


def _transcoding_route(name: str, prefix: str, descriptor: str, service: str) -> str:
    return json.dumps(
        {
            "kind": "Route",
            "name": name,
            "match": {"prefix": prefix},
            "backend": "g",
            "transcode": {"descriptor": descriptor, "services": [service]},
        }
    )


def _clashing_raw(tmp_path: Path) -> dict[str, dict[str, str]]:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = _api_bytes(tmp_path / "one", "service A {\n" + _rpc("Get", 'get: "/v1/x/{id}"') + "}\n")
    two = _api_bytes(
        tmp_path / "two",
        "service B {\n" + _rpc("Get", 'get: "/v1/x/{id}"') + "}\n",
        pkg="u.v1",
        name="other.proto",
    )
    return {
        "Descriptor": {"one": _descriptor_doc("one", one), "two": _descriptor_doc("two", two)},
        "Service": {"g": _grpc_service("g")},
        "Route": {
            # Different prefixes, one binding in both services; "a-new" sorts first by name.
            "z-old": _transcoding_route("z-old", "/v1", "one", "t.v1.A"),
            "a-new": _transcoding_route("a-new", "/v2", "two", "u.v1.B"),
        },
    }


def test_a_route_whose_binding_clashes_is_refused_and_the_served_one_kept(
    tmp_path: Path,
) -> None:
    raw = _clashing_raw(tmp_path)
    # Nothing served yet: by name.
    first = Catalog.from_raw(raw)
    assert "Route/z-old" in first.refused and "a-new" in first.routes
    # z-old was served as it is: the newcomer is refused, whatever its name.
    last_good = {"Route": {"z-old": raw["Route"]["z-old"]}}
    catalog = Catalog.from_raw(raw, last_good)
    assert "z-old" in catalog.routes
    reason = catalog.refused["Route/a-new"]
    assert reason.startswith("transcoder: ") and "bound by both" in reason


def test_only_routes_that_transcode_see_the_transcoder(tmp_path: Path) -> None:
    """The scope holding a transcoding route turns the transcoder off route by route; every
    other scope turns it off once, in its virtual host."""
    raw = {
        "Descriptor": {"demo": _descriptor_doc("demo", DEMO_PB.read_bytes())},
        "Service": {"g": _grpc_service("g")},
        "Route": {
            "rest": _transcoding_route("rest", "/v1", "demo", "wardgate.demo.v1.Greeter"),
            "plain": json.dumps(
                {
                    "kind": "Route",
                    "name": "plain",
                    "match": {"prefix": "/v1/greeter/plain"},
                    "backend": "g",
                }
            ),
            "elsewhere": json.dumps(
                {
                    "kind": "Route",
                    "name": "elsewhere",
                    "match": {"prefix": "/other"},
                    "backend": "g",
                }
            ),
        },
    }
    catalog = Catalog.from_raw(raw)
    assert not catalog.refused
    base = build_base(catalog, OPTS)

    def off(config: object) -> bool:
        per_filter = config.typed_per_filter_config  # type: ignore[attr-defined]
        if TRANSCODER not in per_filter:
            return False
        transcoder = transcoder_pb2.GrpcJsonTranscoder()
        assert per_filter[TRANSCODER].Unpack(transcoder)
        return not transcoder.services

    v1 = {r.name: r for r in views.routes_for(base, "/v1/greeter/plain")}
    assert not off(v1["rest"]) and off(v1["plain"])
    configs = views.route_configs(base)
    holding = [c for c in configs.values() if any(r.name == "rest" for r in _routes(c))]
    assert len(holding) == 1 and not off(holding[0].virtual_hosts[0])
    others = [c for c in configs.values() if c is not holding[0]]
    assert others and all(off(c.virtual_hosts[0]) for c in others)
    assert not any(off(r) for r in views.routes_for(base, "/other"))  # the vhost's is enough


def _routes(config: route_pb2.RouteConfiguration) -> list[object]:
    return list(config.virtual_hosts[0].routes)


def _import_chain(n: int) -> bytes:
    """A set of ``n`` files, each importing the next, listed dependents first."""
    fds = descriptor_pb2.FileDescriptorSet()
    for i in range(n):
        f = fds.file.add(name=f"f{i}.proto", package=f"p{i}", syntax="proto3")
        f.message_type.add(name="M")
        if i + 1 < n:
            f.dependency.append(f"f{i + 1}.proto")
    method = fds.file[0].service.add(name="S").method.add(name="A")
    method.input_type = method.output_type = ".p0.M"
    data: bytes = fds.SerializeToString()
    return data


def test_a_long_import_chain_is_checked_without_recursion() -> None:
    """Files are ordered by their imports in one linear pass: a chain of thousands of files
    (a few hundred KiB, well under the 4 MiB a descriptor may hold) neither exhausts
    Python's recursion limit nor costs a pass per file."""
    api = parse_descriptor_set(_import_chain(3000))
    assert combined_problem({"p0.S": api}) is None
    merged = descriptor_pb2.FileDescriptorSet.FromString(merge([api]))
    assert [f.name for f in merged.file][:2] == ["f2999.proto", "f2998.proto"]


def test_an_import_cycle_is_refused() -> None:
    fds = descriptor_pb2.FileDescriptorSet.FromString(_import_chain(3))
    fds.file[2].dependency.append("f0.proto")
    with pytest.raises(ValueError, match="imports itself"):
        parse_descriptor_set(fds.SerializeToString())


def _one_file_set(mutate: Callable[[descriptor_pb2.FileDescriptorProto], None]) -> bytes:
    fds = descriptor_pb2.FileDescriptorSet()
    f = fds.file.add(name="raw.proto", package="r.v1", syntax="proto3")
    f.dependency.append("google/protobuf/empty.proto")
    fds.file.insert(0, descriptor_pb2.FileDescriptorProto())
    empty_pb2.DESCRIPTOR.CopyToProto(fds.file[0])
    req = f.message_type.add(name="Req")
    req.field.add(name="id", number=1, type=FieldType.TYPE_STRING, json_name="id")
    req.field.add(name="note", number=2, type=FieldType.TYPE_STRING, json_name="note")
    enum = f.enum_type.add(name="E")
    enum.value.add(name="E_ZERO", number=0)
    enum.value.add(name="E_ONE", number=1)
    method = f.service.add(name="S").method.add(name="Get", input_type=".r.v1.Req")
    method.output_type = ".r.v1.Req"
    mutate(f)
    data: bytes = fds.SerializeToString()
    return data


def _note(f: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FieldDescriptorProto:
    return f.message_type[0].field[1]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: f.message_type[0].extension_range.add(start=100, end=200), "Extension ranges"),
        (lambda f: f.dependency.append(f.dependency[0]), "listed twice"),
        (lambda f: f.message_type[0].reserved_name.append("note"), "is reserved"),
        (lambda f: f.message_type[0].reserved_range.add(start=2, end=3), "reserved number"),
        (lambda f: setattr(f.enum_type[0].value[1], "number", 0), "allow_alias"),
        (lambda f: setattr(_note(f).options, "jstype", 2), "jstype"),
        (lambda f: setattr(_note(f).options, "lazy", True), "lazy"),
        (
            lambda f: (
                setattr(_note(f), "label", FieldType.LABEL_REPEATED),
                setattr(_note(f).options, "packed", True),
            ),
            "packed",
        ),
    ],
    ids=[
        "extension-range",
        "import-twice",
        "reserved-name",
        "reserved-number",
        "alias",
        "jstype",
        "lazy",
        "packed-string",
    ],
)
def test_what_only_envoys_protobuf_refuses_is_refused(
    mutate: Callable[[descriptor_pb2.FileDescriptorProto], None], reason: str
) -> None:
    """Python's protobuf (upb) builds these files; Envoy's C++ DescriptorPool does not, and
    a file it cannot build is a NACK of every transcoding route."""
    parse_descriptor_set(_one_file_set(lambda f: None))  # the same set, unchanged, is fine
    with pytest.raises(ValueError, match=f"Envoy's protobuf would refuse it: .*{reason}"):
        parse_descriptor_set(_one_file_set(mutate))


def test_a_proto_is_named_after_the_include_path_given(tmp_path: Path) -> None:
    """``descriptors put shop api/shop/v1/shop.proto -I api`` names the file as its imports
    name it, shop/v1/shop.proto, not after its own directory (shop.proto): two APIs whose
    files share a base name (service.proto) can then be transcoded together, and an API that
    imports this one holds the same file under the same name."""
    pkg = tmp_path / "api" / "shop" / "v1"
    pkg.mkdir(parents=True)
    (pkg / "types.proto").write_text(
        'syntax = "proto3";\npackage shop.v1;\nmessage T { string a = 1; }\n'
    )
    (pkg / "shop.proto").write_text(
        'syntax = "proto3";\npackage shop.v1;\nimport "shop/v1/types.proto";\n'
        "service Shop { rpc Get(T) returns (T); }\n"
    )
    data = compile_proto(pkg / "shop.proto", (str(tmp_path / "api"),))
    names = [f.name for f in descriptor_pb2.FileDescriptorSet.FromString(data).file]
    assert names == ["shop/v1/types.proto", "shop/v1/shop.proto"]


def test_a_descriptor_deleted_raw_while_used_is_kept_like_a_service() -> None:
    """HDEL of a descriptor a route transcodes with: refused like the CLI would refuse the
    delete, its last good version served, the route kept (as for a deleted service)."""
    served = {
        "Descriptor": {"demo": _descriptor_doc("demo", DEMO_PB.read_bytes())},
        "Service": {"g": _grpc_service("g")},
        "Route": {"r": _transcoding_route("r", "/v1", "demo", "wardgate.demo.v1.Greeter")},
    }
    assert not Catalog.from_raw(served).refused
    catalog = Catalog.from_raw({**served, "Descriptor": {}}, served)
    assert "r" in catalog.routes and "demo" in catalog.descriptors
    assert catalog.refused == {
        "Descriptor/demo": "deleted while route r uses it (still serving the last good version)"
    }
    # A route changed meanwhile is checked against the whole set again (not patched).
    changed = {**served, "Descriptor": {}}
    changed["Route"] = {**served["Route"], "plain": json.dumps(_plain_route("plain", "/x"))}
    assert Catalog.updated(catalog, {**served, "Descriptor": {}}, changed, served) is None


def _plain_route(name: str, prefix: str) -> dict[str, object]:
    return {"kind": "Route", "name": name, "match": {"prefix": prefix}, "backend": "g"}


def test_the_route_index_finds_the_first_route_as_a_scan_does() -> None:
    rng = random.Random(11)
    segments = ["v1", "v2", "greeter", "x", "a", "ab"]
    docs = []
    for i in range(300):
        path = "/" + "/".join(rng.choice(segments) for _ in range(rng.randint(1, 3)))
        kind = rng.choice(["prefix", "prefix/", "path", "regex", "root"])
        match: dict[str, object] = (
            {"prefix": path}
            if kind == "prefix"
            else {"prefix": path + "/"}
            if kind == "prefix/"
            else {"prefix": "/"}
            if kind == "root"
            else {"path": path}
            if kind == "path"
            else {"regex": path + "(/.*)?"}
        )
        if rng.random() < 0.3:
            match["methods"] = [rng.choice(["GET", "POST"])]
        if rng.random() < 0.05:
            match["headers"] = {"x-a": "1"}
        docs.append(
            {"kind": "Route", "name": f"r{i}", "match": match, "backend": "g", "priority": 0}
        )
    routes = {d["name"]: parse_document(d) for d in docs}
    live = dict(routes)
    index = RouteIndex(live)
    for n in rng.sample(sorted(live), 60):  # refused meanwhile: no longer counted
        del live[n]
    for _ in range(2000):
        path = "/" + "/".join(rng.choice(segments) for _ in range(rng.randint(1, 4)))
        method = rng.choice(["GET", "POST"])
        expected = first_route(live.values(), method, path)
        assert index.first(method, path) is expected, (method, path)


def test_binding_checks_do_not_scan_every_route_per_binding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A descriptor with 2,000 bindings and 1,000 other routes: each binding's first route is
    looked up, not found by trying every route (2 million tries: seconds, and minutes for a
    large API in a large catalog, on the event loop)."""
    fds = descriptor_pb2.FileDescriptorSet()
    empty = fds.file.add()
    annotations_pb2.DESCRIPTOR.CopyToProto(empty)
    for dep in annotations_pb2.DESCRIPTOR.dependencies:
        dep.CopyToProto(fds.file.add())
    f = fds.file.add(name="big.proto", package="b", syntax="proto3")
    f.dependency.append("google/api/annotations.proto")
    f.message_type.add(name="M").field.add(name="id", number=1, type=FieldType.TYPE_STRING)
    service = f.service.add(name="S")
    for i in range(2000):
        method = service.method.add(name=f"M{i}", input_type=".b.M", output_type=".b.M")
        method.options.Extensions[annotations_pb2.http].get = f"/b/m{i}/{{id}}"
    plain = {f"p{i}": json.dumps(_plain_route(f"p{i}", f"/plain/{i}")) for i in range(1000)}
    raw = {
        "Descriptor": {"big": _descriptor_doc("big", fds.SerializeToString())},
        "Service": {"g": _grpc_service("g")},
        "Route": {"t": _transcoding_route("t", "/", "big", "b.S"), **plain},
    }
    calls = 0
    real = route_order.matches

    def counting(*args: object) -> bool:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(route_order, "matches", counting)
    monkeypatch.setattr(transcoding, "matches", counting)
    catalog = Catalog.from_raw(raw)
    assert not catalog.refused and "t" in catalog.routes
    assert calls < 20_000


def test_a_proto_compiling_to_more_than_4_mib_is_refused_with_its_size(tmp_path: Path) -> None:
    values = "\n".join(f"  VALUE_{i:05d}_{'X' * 100} = {i};" for i in range(40_000))
    path = tmp_path / "huge.proto"
    path.write_text(f'syntax = "proto3";\npackage h;\nenum E {{\n{values}\n}}\n')
    with pytest.raises(CliError, match=r"huge.proto: compiled larger than 4 MiB \(\d+ bytes\)"):
        read_descriptor_set(str(path), ())
