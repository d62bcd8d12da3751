"""The transcoder configuration wardgate sends, checked by Envoy itself (``envoy --mode
validate`` builds every filter's configuration, the transcoder's descriptor pool and path
matcher included): what wardgate's checks accept, Envoy accepts; and the cases they refuse
are ones Envoy would refuse, with every transcoding route (docs/TRANSCODING.md, section 5)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from google.protobuf import descriptor_pb2, json_format

from wardgate.cli.descriptors import compile_proto
from wardgate.domain.catalog import Catalog
from wardgate.domain.grpc_api import GrpcApi, parse_descriptor_set
from wardgate.envoy_proc import find_envoy
from wardgate.xds.assemble import build_base
from wardgate.xds.transcoder import TRANSCODER, transcoder_config
from wardgate.xds.translate import TranslateOptions

pytestmark = pytest.mark.integration

DEMO_PB = Path(__file__).resolve().parents[2] / "wardgate" / "_proto" / "demo.pb"
HEADER = 'syntax = "proto3";\npackage {pkg};\nimport "google/api/annotations.proto";\n'
HEADER += (
    "message Req {{ string id = 1; Inner inner = 2; }}\nmessage Inner {{ string text = 1; }}\n"
)


def _envoy_accepts(transcoder: dict[str, Any], tmp_path: Path) -> tuple[bool, str]:
    """Whether Envoy takes a listener whose HTTP filters are this transcoder and a router."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "t",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"]}]},
        "http_filters": [
            {"name": TRANSCODER, "typed_config": transcoder},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    path = tmp_path / f"validate-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps({"static_resources": {"listeners": [listener]}}))
    done = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "-l", "critical"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode == 0, (done.stdout + done.stderr)[-400:]


def _compiled(tmp_path: Path, pkg: str, files: dict[str, str]) -> bytes:
    """``files`` under ``pkg/``, compiled from ``pkg/api.proto`` (named so in the set)."""
    root = tmp_path / "protos"
    for name, text in files.items():
        (root / pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (root / pkg / name).write_text(text)
    return compile_proto(root / pkg / "api.proto", (str(root),))


def _api(pkg: str, service: str) -> str:
    return HEADER.format(pkg=pkg) + service


def _doc(kind: str, name: str, **fields: Any) -> str:
    return json.dumps({"kind": kind, "name": name, **fields})


# Descriptors wardgate accepts that exercise what Envoy's parsers are strict about: each in a
# package and under paths of its own, so that all of them share one transcoder.
ACCEPTED = {
    "wildcards": (
        "service S { rpc A(Req) returns (Req) { option (google.api.http) = {\n"
        '  get: "/w/{id=**}/blob" additional_bindings { get: "/w2/**:peek" }\n'
        '  additional_bindings { post: "/w3/{inner.text=shelves/*}:archive" body: "*" } }; }\n'
        "  rpc B(Req) returns (Req) { option (google.api.http) = {\n"
        '  custom: { kind: "HEAD" path: "/w4/{id}" } body: "inner" }; } }\n'
    ),
    "unbound": (
        "service S { rpc A(Req) returns (Req); }\n"  # auto-mapped: POST /unbound.S/A
    ),
    "bodyonly": (  # a rule with a body and no pattern: Envoy resolves the body, binds nothing
        'service S { rpc A(Req) returns (Req) { option (google.api.http) = { body: "inner" }; } }\n'
    ),
}


def test_what_wardgate_accepts_envoy_accepts(tmp_path: Path) -> None:
    """Every descriptor above, the demo one, and one that defines google.rpc.Status in a
    file of its own, served by routes of one catalog: the transcoder's ECDS resource that
    wardgate builds from them is one Envoy takes."""
    sets = {
        name: _compiled(tmp_path, name, {"api.proto": _api(name, svc)})
        for name, svc in ACCEPTED.items()
    }
    sets["demo"] = DEMO_PB.read_bytes()
    sets["ownstatus"] = _compiled(
        tmp_path,
        "ownstatus",
        {
            "vendor/status.proto": (
                'syntax = "proto3";\npackage google.rpc;\n'
                "message Status { int32 code = 1; string message = 2; }\n"
            ),
            "api.proto": _api("ownstatus", "")
            .replace("message Req {", 'import "ownstatus/vendor/status.proto";\nmessage Req {')
            .replace("Inner inner = 2;", "Inner inner = 2; google.rpc.Status status = 3;")
            + "service S { rpc A(Req) returns (Req) {\n"
            + '  option (google.api.http) = { get: "/s/{id}" }; } }\n',
        },
    )
    services = {
        name: [s for s in parse_descriptor_set(data).services] for name, data in sets.items()
    }
    raw = {
        "Descriptor": {
            n: _doc("Descriptor", n, descriptor_set=base64.b64encode(d).decode())
            for n, d in sets.items()
        },
        "Service": {
            "g": _doc(
                "Service", "g", protocol="grpc", endpoints=[{"address": "10.0.0.1", "port": 1}]
            )
        },
        "Route": {
            n: _doc(
                "Route",
                n,
                match={"prefix": f"/r-{n}"},
                backend="g",
                transcode={"descriptor": n, "services": services[n]},
            )
            for n in sets
        },
    }
    catalog = Catalog.from_raw(raw)
    assert not catalog.refused
    extensions = dict(build_base(catalog, TranslateOptions(http_host="127.0.0.1")).extension_bytes)
    resource = extension_pb2.TypedExtensionConfig.FromString(extensions[TRANSCODER])
    config = transcoder_pb2.GrpcJsonTranscoder()
    assert resource.typed_config.Unpack(config)
    assert len(config.services) == sum(len(s) for s in services.values())
    as_json = json_format.MessageToDict(config)
    ok, output = _envoy_accepts({"@type": resource.typed_config.type_url, **as_json}, tmp_path)
    assert ok, output


def _unchecked(data: bytes, services: list[str]) -> dict[str, Any]:
    """The transcoder configuration for ``data`` as is, without wardgate's checks."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    return transcoder_config([GrpcApi(tuple(fds.file), {})], services)


@pytest.mark.parametrize(
    ("service", "envoy_says"),
    [
        ('get: "/:verb"', "to path matcher"),
        ('get: "/v1/{id=}"', "to path matcher"),
        ('body: "nothing"', 'Could not find field "nothing"'),
    ],
)
def test_rules_wardgate_refuses_are_ones_envoy_refuses(
    tmp_path: Path, service: str, envoy_says: str
) -> None:
    option = f"option (google.api.http) = {{ {service} }};"
    rpc = f"service S {{ rpc A(Req) returns (Req) {{ {option} }} }}\n"
    data = _compiled(tmp_path, "bad", {"api.proto": _api("bad", rpc)})
    with pytest.raises(ValueError):
        parse_descriptor_set(data)
    ok, output = _envoy_accepts(_unchecked(data, ["bad.S"]), tmp_path)
    assert not ok and envoy_says in output


def test_a_set_only_cpp_protobuf_refuses_is_refused_by_envoy_too(tmp_path: Path) -> None:
    """Extension ranges in proto3: Python's protobuf builds the file, Envoy's does not."""
    data = _compiled(
        tmp_path, "ext", {"api.proto": _api("ext", "service S { rpc A(Req) returns (Req); }\n")}
    )
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    [mine] = [f for f in fds.file if f.name == "ext/api.proto"]
    mine.message_type[0].extension_range.add(start=100, end=200)
    with pytest.raises(ValueError, match="Extension ranges"):
        parse_descriptor_set(fds.SerializeToString())
    ok, output = _envoy_accepts(_unchecked(fds.SerializeToString(), ["ext.S"]), tmp_path)
    assert not ok and "Unable to build proto descriptor pool" in output


def test_a_set_defining_googles_any_elsewhere_is_refused_for_envoy(tmp_path: Path) -> None:
    """google.protobuf.Any defined in a file of another name: Envoy's transcoder cannot add
    google.rpc.Status (its error bodies) to it; a route using it is refused."""
    data = _compiled(
        tmp_path,
        "ownany",
        {
            "my/any.proto": (
                'syntax = "proto3";\npackage google.protobuf;\n'
                "message Any { string type_url = 1; bytes value = 2; }\n"
            ),
            "api.proto": _api("ownany", "")
            .replace("message Req {", 'import "ownany/my/any.proto";\nmessage Req {')
            .replace("Inner inner = 2;", "Inner inner = 2; google.protobuf.Any any = 3;")
            + "service S { rpc A(Req) returns (Req); }\n",
        },
    )
    parse_descriptor_set(data)  # alone, it is a fine descriptor
    raw = {
        "Descriptor": {
            "d": _doc("Descriptor", "d", descriptor_set=base64.b64encode(data).decode())
        },
        "Service": {
            "g": _doc(
                "Service", "g", protocol="grpc", endpoints=[{"address": "10.0.0.1", "port": 1}]
            )
        },
        "Route": {
            "r": _doc(
                "Route",
                "r",
                match={"prefix": "/r"},
                backend="g",
                transcode={"descriptor": "d", "services": ["ownany.S"]},
            )
        },
    }
    assert "google/rpc/status.proto" in Catalog.from_raw(raw).refused["Route/r"]
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    bare = {  # what wardgate used to send: the set merged with google.rpc's files
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3"
        ".GrpcJsonTranscoder",
        "proto_descriptor_bin": base64.b64encode(fds.SerializeToString()).decode(),
        "services": ["ownany.S"],
        "convert_grpc_status": True,
    }
    ok, output = _envoy_accepts(bare, tmp_path)
    assert not ok and "Unable to build proto descriptor pool" in output
