"""``pbencode`` writes the bytes ``fastpb`` and a deterministic serialization give, for every
configuration wardgate writes, whether it remembers the parts or not, and with parts shared
between configurations; it refuses what ``json_format.ParseDict`` refuses."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_documents_fuzz import routes as route_documents
from tests.unit.test_fastpb import _documents
from wardgate.domain.documents import DocumentError, Route, parse_document
from wardgate.xds import fastpb, pbencode
from wardgate.xds.build import SnapshotBuilder
from wardgate.xds.listener import build_listener
from wardgate.xds.local_guard import GuardOptions
from wardgate.xds.routes import route_entry
from wardgate.xds.translate import TranslateOptions

ROUTE = route_components_pb2.Route.DESCRIPTOR


def _maps() -> Any:
    """A message with a map of each key type (Envoy's maps are all keyed by strings)."""
    fd = descriptor_pb2.FileDescriptorProto(
        name="wardgate_test_maps.proto", package="wardgate_test_maps", syntax="proto3"
    )
    top = fd.message_type.add(name="Maps")
    kinds = {"i32": 5, "i64": 3, "u32": 13, "u64": 4, "s32": 17, "b": 8, "s": 9, "f32": 7}
    for number, (name, kind) in enumerate(kinds.items(), 1):
        entry = top.nested_type.add(name=f"{name.capitalize()}Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=kind, label=1)  # type: ignore[arg-type]
        entry.field.add(name="value", number=2, type=5, label=1)  # type: ignore[arg-type]
        top.field.add(
            name=name,
            number=number,
            type=11,  # type: ignore[arg-type]
            label=3,  # type: ignore[arg-type]
            type_name=f".wardgate_test_maps.Maps.{name.capitalize()}Entry",
        )
    pool = descriptor_pool.Default()
    try:
        return pool.FindMessageTypeByName("wardgate_test_maps.Maps")
    except KeyError:
        pool.Add(fd)
        return pool.FindMessageTypeByName("wardgate_test_maps.Maps")


@pytest.fixture(autouse=True)
def _forgetting() -> Iterator[None]:
    pbencode.forget()
    yield
    pbencode.forget()


def _reference(entry: dict[str, Any], cls: type[Message]) -> bytes:
    return fastpb.parse(entry, cls()).SerializeToString(deterministic=True)


def _recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, Any], type[Message]]]:
    """Every configuration a build and the listener write, as JSON and its message type."""
    seen: list[tuple[dict[str, Any], type[Message]]] = []
    parse, encode = fastpb.parse, pbencode.encode

    def record_parse(entry: Any, message: Message) -> Message:
        seen.append((copy.deepcopy(entry), type(message)))
        return parse(entry, message)

    def record_encode(entry: Any, desc: Any) -> bytes:
        seen.append((copy.deepcopy(entry), message_factory.GetMessageClass(desc)))
        return encode(entry, desc)

    monkeypatch.setattr(fastpb, "parse", record_parse)
    monkeypatch.setattr(pbencode, "encode", record_encode)
    opts = TranslateOptions(guard=GuardOptions(burst=2.0))
    builder = SnapshotBuilder(opts)
    builder.build(builder.parse(_documents(), {}), {}, revision=1)
    build_listener("0.0.0.0", 10000, opts)
    monkeypatch.undo()
    return seen


def test_the_bytes_are_those_of_fastpb_remembered_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _recorded(monkeypatch)
    kinds = {cls.DESCRIPTOR.full_name for _, cls in seen}
    assert "envoy.config.route.v3.Route" in kinds and len(kinds) >= 6, kinds
    for _ in range(3):  # first written, then remembered
        for entry, cls in seen:
            assert pbencode.encode(entry, cls.DESCRIPTOR) == _reference(entry, cls), entry


def test_parts_shared_between_configurations_give_the_same_bytes() -> None:
    headers = [{"header": {"key": "retry-after", "value": "1"}}]
    common = pbencode.shared({"max_tokens": 5, "tokens_per_fill": 1, "fill_interval": "1s"})
    shared_headers = pbencode.shared(headers)
    for name in ("a", "b", "a"):
        entry = {
            "name": name,
            "match": {"prefix": "/"},
            "response_headers_to_add": shared_headers,
            "typed_per_filter_config": {
                "guard": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http."
                    "local_ratelimit.v3.LocalRateLimit",
                    "stat_prefix": name,
                    "token_bucket": common,
                }
            },
        }
        plain = copy.deepcopy(entry)
        assert type(plain["response_headers_to_add"]) is list
        assert plain == entry
        cls = route_components_pb2.Route
        assert pbencode.encode(entry, ROUTE) == _reference(plain, cls)
        assert pbencode.encode(plain, ROUTE) == _reference(plain, cls)


def test_a_shared_part_is_read_only_and_its_copies_are_not() -> None:
    part = pbencode.shared({"a": [{"b": 1}]})
    with pytest.raises(TypeError):
        part["a"] = []
    with pytest.raises(TypeError):
        part["a"].append({})
    with pytest.raises(TypeError):
        part["a"][0]["b"] = 2
    mine = copy.deepcopy(part)
    mine["a"][0]["b"] = 2
    assert part == {"a": [{"b": 1}]} and mine == {"a": [{"b": 2}]}
    assert copy.copy(part) == part


def test_each_field_remembers_a_bounded_number_and_stops_when_nothing_repeats() -> None:
    def entry(i: int) -> dict[str, Any]:
        return {"name": "r", "match": {"prefix": f"/{i}/"}, "route": {"cluster": "c"}}

    for i in range(pbencode.MEMO_SIZE + 10):
        data = pbencode.encode(entry(i), ROUTE)
        assert data == _reference(entry(i), route_components_pb2.Route)
    match = pbencode._encoder(ROUTE).fields["match"].memo  # type: ignore[attr-defined]
    assert not match.on and not match.found  # nothing repeated: it stopped remembering
    route = pbencode._encoder(ROUTE).fields["route"].memo  # type: ignore[attr-defined]
    assert route.on and len(route.found) == 1 and route.hits > 0


_KEYS = st.text(alphabet="ab\x00\u00e9\u20ac", max_size=4)
_INTS = st.integers(-(2**31), 2**31 - 1)


@settings(max_examples=300, deadline=None)
@given(st.sets(_KEYS, max_size=6), st.sets(_INTS, max_size=6), st.sets(st.booleans()))
def test_map_entries_come_in_upbs_order(keys: set[str], ints: set[int], bools: set[bool]) -> None:
    desc = _maps()
    cls = message_factory.GetMessageClass(desc)
    values: dict[str, dict[Any, int]] = {
        "s": dict.fromkeys(keys, 1),
        "i32": dict.fromkeys(ints, 2),
        "i64": dict.fromkeys(ints, 3),
        "s32": dict.fromkeys(ints, 4),
        "u32": {n % 2**32: 5 for n in ints},
        "u64": {n % 2**32: 6 for n in ints},
        "f32": {n % 2**32: 7 for n in ints},
        "b": dict.fromkeys(bools, 8),
    }
    expected = cls()
    for name, entries in values.items():
        getattr(expected, name).update(entries)
    assert pbencode.encode(values, desc) == expected.SerializeToString(deterministic=True)


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
        {"match": {"prefix": "/", "path": "/a"}},  # two of a oneof
        {"per_request_buffer_limit_bytes": -1},
        {"per_request_buffer_limit_bytes": 2**32},
    ],
)
def test_what_json_format_refuses_is_refused(entry: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        pbencode.encode(entry, ROUTE)
    with pytest.raises(ValueError):
        pbencode.encode(entry, ROUTE)  # and not remembered as if it were fine


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(route_documents, st.booleans())
def test_any_route_document_gives_the_bytes_of_fastpb(raw: dict[str, Any], hashing: bool) -> None:
    try:
        doc = parse_document(raw)
    except DocumentError:
        return
    assert isinstance(doc, Route)
    entry = route_entry(doc, hashing=hashing)
    for _ in range(2):
        expected = _reference(copy.deepcopy(entry), route_components_pb2.Route)
        assert pbencode.encode(entry, ROUTE) == expected


def test_keys_left_none_are_not_written_whatever_else_the_dict_holds() -> None:
    for entry in (
        {"match": {"prefix": "/", "path": None}, "name": "a"},
        {"match": {"path": None, "prefix": "/"}, "name": None},
        {"match": {"prefix": "/", "path_separated_prefix": None}, "name": "b"},
    ):
        for _ in range(2):  # a planned sequence of keys the second time
            expected = _reference(entry, route_components_pb2.Route)
            assert pbencode.encode(entry, ROUTE) == expected
