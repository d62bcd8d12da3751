"""``fastpb`` builds the same bytes as ``json_format.ParseDict`` followed by repacking every
``Any`` deterministically, for every configuration wardgate writes, and refuses what
``ParseDict`` refuses."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message

from tests.unit.test_documents import PRODUCT_ROUTE, PRODUCT_SERVICE
from wardgate.xds import canonical, fastpb, pbencode
from wardgate.xds.build import SnapshotBuilder
from wardgate.xds.listener import build_listener
from wardgate.xds.translate import TranslateOptions

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _documents() -> dict[str, dict[str, str]]:
    docs: dict[str, dict[str, str]] = {"Route": {}, "Service": {}, "Issuer": {}, "Descriptor": {}}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]][doc["name"]] = json.dumps(doc)
    docs["Service"][PRODUCT_SERVICE["name"]] = json.dumps(PRODUCT_SERVICE)
    docs["Route"][PRODUCT_ROUTE["name"]] = json.dumps(PRODUCT_ROUTE)
    ring = {**PRODUCT_SERVICE, "name": "ring", "lb": "ring_hash"}
    docs["Service"]["ring"] = json.dumps(ring)
    hashed = {**PRODUCT_ROUTE, "name": "hashed", "backend": "ring"}
    hashed.pop("backends", None)
    docs["Route"]["hashed"] = json.dumps(hashed)
    return docs


def _recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, Any], type[Message]]]:
    seen: list[tuple[dict[str, Any], type[Message]]] = []
    real = pbencode.encode  # what every configuration goes through (canonical.parse too)

    def record(entry: Any, desc: Any) -> bytes:
        seen.append((copy.deepcopy(entry), message_factory.GetMessageClass(desc)))
        return real(entry, desc)

    monkeypatch.setattr(pbencode, "encode", record)
    builder = SnapshotBuilder(TranslateOptions())
    builder.build(builder.parse(_documents(), {}), {}, revision=1)
    build_listener("0.0.0.0", 10000, TranslateOptions())
    monkeypatch.undo()
    return seen


def test_the_bytes_are_those_of_json_format_repacked(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _recorded(monkeypatch)
    kinds = {cls.DESCRIPTOR.full_name for _, cls in seen}
    # Routes, clusters, endpoints, the listener, scopes, the transcoder: all of them.
    assert len(seen) > 30 and len(kinds) >= 6, kinds
    real = fastpb.parse
    for entry, cls in seen:
        reference = json_format.ParseDict(entry, cls())
        canonical.canonicalize(reference)
        fast = real(entry, cls())
        assert fast.SerializeToString(deterministic=True) == reference.SerializeToString(
            deterministic=True
        ), cls.DESCRIPTOR.full_name


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "r", "no_such_field": 1},
        {"name": 5},
        {"match": {"prefix": "/"}, "route": {"timeout": "five seconds"}},
        {"match": {"prefix": "/"}, "route": {"cluster_not_found_response_code": "NOPE"}},
        {"typed_per_filter_config": {"x": {"@type": "type.googleapis.com/no.such.Type"}}},
        {"typed_per_filter_config": {"x": {"value": 1}}},
        {"match": {"headers": "not a list"}},
        {"match": {"case_sensitive": "yes"}},
    ],
)
def test_what_json_format_refuses_is_refused(entry: dict[str, Any]) -> None:
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(entry, route_components_pb2.Route())
    with pytest.raises((fastpb.ParseError, ValueError)):
        fastpb.parse(entry, route_components_pb2.Route())
