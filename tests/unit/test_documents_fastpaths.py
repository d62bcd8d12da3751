"""The shortcuts of document parsing answer as the long way does: the one regex over a path
(``check_path_chars``), the one search of a stored JSON text for control characters, and the
parts that documents written alike share. Each is checked against the long way on hostile
and random input: what one refuses the other refuses, with the same reason."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wardgate.domain import doc_base
from wardgate.domain.catalog import parse_stored
from wardgate.domain.doc_base import unprintable
from wardgate.domain.doc_match import check_path_chars
from wardgate.domain.documents import (
    _text_suspect,
    _unprintable_string,
    parse_clean_json,
    parse_document,
    to_json_dict,
)
from wardgate.errors import DocumentError

PROPERTY = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- match.prefix and match.path -------------------------------------------------------------

_PCHAR = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/\[\]]|%[0-9A-Fa-f]{2})*")
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%\[\]]")
_DECODED = re.compile(r"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DdEeFf]|5[CcFf]|7[Ee])")


def _slow_path_ok(value: str) -> bool:
    """The checks of ``check_path_chars`` without its shortcut."""
    if any(not _PLAIN.fullmatch(c) for c in value):
        return False
    return bool(_PCHAR.fullmatch(value)) and not _DECODED.search(value)


def _path_ok(value: str) -> bool:
    try:
        check_path_chars(value, "match.prefix")
    except ValueError:
        return False
    return True


PATHS = st.text(alphabet=st.sampled_from("/aZ09-._~!$&'()*+,;=:@[]%2fFeE7 ?#\n\x00é|\u2028"))


@PROPERTY
@given(PATHS)
def test_a_path_passes_the_shortcut_only_if_it_passes_every_check(value: str) -> None:
    assert _path_ok(value) == _slow_path_ok(value)


# --- control characters in a stored JSON text -----------------------------------------------


def test_every_character_a_document_refuses_makes_its_json_text_suspect() -> None:
    refused = [chr(c) for c in range(0x110000) if unprintable(chr(c))]
    assert len(refused) == 0x20 + 0x21 + 2 + 0x800  # C0, DEL and C1, U+2028/9, surrogates
    for char in refused:
        for ensure_ascii in (True, False):
            text = json.dumps({"name": f"a{char}b"}, ensure_ascii=ensure_ascii)
            assert _text_suspect(text), (char, text)
        assert _text_suspect(json.dumps({f"k{char}": 1}))
    # JSON's other ways of writing some: upper-case hex, the short escapes.
    for escape in ("\\u001F", "\\u007F", "\\u009f", "\\u2028", "\\uD800", "\\uDfFf"):
        assert _text_suspect(f'{{"a": "x{escape}"}}')
    for escape in "bfnrt":
        text = f'{{"a": "x\\{escape}"}}'
        assert unprintable(json.loads(text)["a"]) and _text_suspect(text)


def test_a_text_with_no_control_character_is_not_suspect() -> None:
    text = json.dumps(
        {"name": "café ☃ 😀", "path": "/a\\b\\\\n", "regex": "^/x\\d+$"}, ensure_ascii=False
    )
    assert not _text_suspect(text)
    assert not _text_suspect(json.dumps({"name": "café ☃"}, indent=2))


HOSTILE_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from('\x00\t\n\r\x1f\x7f\x85\x9f\xa0\u2028\u2029\ud800\udc00\\"u/bfnrt0a'),
        st.characters(codec="utf-8"),
        st.characters(),
    ),
    max_size=12,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=4),
    max_leaves=12,
)


@PROPERTY
@given(JSON_VALUES, st.booleans(), st.sampled_from([None, 2]))
def test_a_text_that_is_not_suspect_holds_no_control_character(
    value: Any, ensure_ascii: bool, indent: int | None
) -> None:
    text = json.dumps(
        {"kind": "Route", "name": "r", "x": value}, ensure_ascii=ensure_ascii, indent=indent
    )
    if not _text_suspect(text):
        assert _unprintable_string(json.loads(text)) is None


def _outcome(call: Any) -> str:
    try:
        return repr(call())
    except DocumentError as exc:
        return f"refused: {exc.reason}"


@PROPERTY
@given(JSON_VALUES, st.sampled_from(["Route", "Service", "Secret"]), st.booleans())
def test_a_document_read_with_its_text_is_refused_or_accepted_as_without(
    value: Any, kind: str, as_name: bool
) -> None:
    raw = {"kind": kind, "name": value if as_name else "r", "x": value}
    text = json.dumps(raw, ensure_ascii=False)
    data = json.loads(text)
    with_text = _outcome(lambda: parse_document(data, expect_kind=kind, source=text))
    assert with_text == _outcome(lambda: parse_document(data, expect_kind=kind))


def test_a_stored_route_with_a_control_character_is_refused_for_it() -> None:
    text = json.dumps({"kind": "Route", "name": "r", "match": {"prefix": "/a\u2028"}})
    with pytest.raises(DocumentError, match=r"match.prefix: '/a\\u2028' holds the control"):
        parse_stored("Route", "r", text)


# --- parts written alike are validated once and shared --------------------------------------

ROUTE = {
    "kind": "Route",
    "name": "r0",
    "match": {"prefix": "/r/0", "methods": ["get", "POST"]},
    "backend": "s0",
    "timeout": "5s",
    "auth": {"require": "session", "roles": ["admin"]},
    "rate_limits": [{"by": ["ip", "header:X-Tenant"], "requests": 10, "per": "minute"}],
}


def test_routes_written_alike_share_their_parts_and_keep_their_own_fields() -> None:
    first = parse_document(ROUTE)
    second = parse_document({**ROUTE, "name": "r1", "match": {**ROUTE["match"], "prefix": "/b"}})
    assert second.auth is first.auth
    assert second.rate_limits is first.rate_limits
    assert second.match.methods is first.match.methods == ["GET", "POST"]
    assert second.match.prefix == "/b"
    assert to_json_dict(second)["match"] == {"prefix": "/b", "methods": ["GET", "POST"]}
    bare = parse_document({"kind": "Route", "name": "r2", "match": {"prefix": "/"}, "backend": "s"})
    assert to_json_dict(bare) == {
        "kind": "Route",
        "name": "r2",
        "match": {"prefix": "/"},
        "backend": "s",
    }


def test_a_part_refused_once_is_refused_every_time_and_a_shared_one_does_not_hide_it() -> None:
    good = parse_document(ROUTE)
    bad = {**ROUTE, "rate_limits": [{"by": ["ip", "ip"], "requests": 10, "per": "minute"}]}
    for _ in range(2):
        with pytest.raises(DocumentError, match=r"rate_limits\.0\.by: rate_limits\.by names a dim"):
            parse_document(bad)
    # The same values with other types are other inputs: true is not 1, "10" is not 10.
    for requests in (True, "10", 10.0):
        rules = [{"by": ["ip", "header:X-Tenant"], "requests": requests, "per": "minute"}]
        doc = parse_document({**ROUTE, "rate_limits": rules})
        assert doc.rate_limits is not good.rate_limits
    assert (
        parse_document({**ROUTE, "rate_limits": ROUTE["rate_limits"]}).rate_limits
        is good.rate_limits
    )
    with pytest.raises(DocumentError, match=r"auth: auth\.roles needs auth\.require"):
        parse_document({**ROUTE, "auth": {"require": "none", "roles": ["admin"]}})


PART_VALUES = {
    "auth": [
        {"require": "none"},
        {"require": "session", "roles": ["a"]},
        {"require": "none", "roles": ["a"]},
        {"require": "jwt", "roles": []},
        {"require": "nobody"},
        {"require": "jwt", "roles": ["a b"]},
    ],
    "rate_limits": [
        [],
        [{"by": "ip", "requests": 1, "per": "second"}],
        [{"by": "IP", "requests": True, "per": "minute"}],
        [{"by": ["user"], "requests": 5, "per": "30s", "enforce": "quota"}],
        [{"by": ["ip"], "requests": 5, "per": "30s", "enforce": "quota"}],
        [{"by": "ip", "requests": 5, "per": "1.5s"}],
        [{"by": "ip", "requests": 0, "per": "minute", "tiers": {"gold": 1}}],
        [{"by": "ip", "requests": 2, "per": "minute", "shadow": 1}],
        [{"by": "ip", "requests": 2, "per": "minute", "shadow": True}],
    ],
    "retries": [None, {"attempts": 2}, {"attempts": 2, "on": ["5xx"]}, {"attempts": 11}],
    "ip_allow": [None, ["10.0.0.0/8"], ["10.0.0.0/33"], []],
    "match": [
        {"prefix": "/a", "methods": ["get"]},
        {"prefix": "/a", "methods": ["GET"]},
        {"prefix": "/a", "methods": ["FETCH"]},
        {"path": "/a", "headers": {"X-A": "1"}},
        {"path": "/a", "headers": {"x-user-id": "1"}},
        {"regex": "^/a$", "hosts": ["Example.com", "*.b.org"]},
        {"prefix": "/a", "hosts": ["a b"]},
    ],
}


@PROPERTY
@given(st.lists(st.fixed_dictionaries({k: st.sampled_from(v) for k, v in PART_VALUES.items()})))
def test_documents_parsed_in_a_row_answer_as_each_parsed_alone(parts: list[dict[str, Any]]) -> None:
    docs = []
    for i, chosen in enumerate(parts):
        raw = {"kind": "Route", "name": f"r{i}", "backend": "s"}
        raw.update({k: v for k, v in chosen.items() if v is not None})
        docs.append(raw)
    in_a_row = [_outcome(lambda raw=raw: to_json_dict(parse_document(raw))) for raw in docs]
    alone = []
    for raw in docs:
        doc_base._SHARED.clear()
        alone.append(_outcome(lambda raw=raw: to_json_dict(parse_document(raw))))
    assert in_a_row == alone


def test_documents_that_set_the_same_fields_share_the_set_and_a_copy_changes_only_its_own() -> None:
    first = parse_document(ROUTE)
    second = parse_document({**ROUTE, "name": "r1"})
    assert first.model_fields_set is second.model_fields_set
    changed = first.model_copy(update={"priority": 5})
    assert to_json_dict(changed)["priority"] == 5
    assert "priority" not in to_json_dict(second)
    assert "priority" not in to_json_dict(parse_document({**ROUTE, "name": "r2"}))


def test_routes_without_auth_or_rate_limits_share_the_defaults_and_store_neither() -> None:
    bare = {"kind": "Route", "match": {"prefix": "/"}, "backend": "s"}
    first = parse_document({**bare, "name": "a"})
    second = parse_document({**bare, "name": "b"})
    assert first.auth is second.auth and first.auth.require == "none"
    assert first.rate_limits is second.rate_limits == []
    assert to_json_dict(second) == {**bare, "name": "b"}


# --- a stored document validated straight from its JSON text --------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEEDS: list[dict[str, Any]] = [
    doc
    for file in ("demo.yaml", "greeter-descriptor.yaml")
    for doc in yaml.safe_load_all((EXAMPLES / file).read_text())
    if doc
] + [
    ROUTE,
    {"kind": "Service", "name": "s", "endpoints": [{"address": "10.0.0.1", "port": 80}]},
    {
        "kind": "Issuer",
        "name": "i",
        "issuer": "https://idp",
        "audiences": ["api"],
        "hs256_secret_env": "K",
    },
    {"kind": "Secret", "name": "gw", "certificate": "AAAA", "private_key": "AAAA"},
]
ODD_VALUES = st.one_of(
    st.sampled_from(
        [1, 0, -1, 1.0, 1.5, -0.0, 1e2, 1e30, float("inf"), float("nan"), 10**30, True, False]
    ),
    st.sampled_from(["", "1", "1.0", "true", "yes", "none", "GET", "/", "5s", "ip", "s", "r0"]),
    JSON_VALUES,
)


def _mutated(seed: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    doc = json.loads(json.dumps(seed))
    for _ in range(data.draw(st.integers(0, 3))):
        place: Any = doc
        while isinstance(place, dict | list) and place and data.draw(st.booleans()):
            keys = list(place) if isinstance(place, dict) else list(range(len(place)))
            inner = place[data.draw(st.sampled_from(keys))]
            if not isinstance(inner, dict | list) or not inner:
                break
            place = inner
        if isinstance(place, list) and place:
            place[data.draw(st.integers(0, len(place) - 1))] = data.draw(ODD_VALUES)
        elif isinstance(place, dict):
            key = data.draw(st.sampled_from([*place, "extra"]))
            if data.draw(st.integers(0, 4)) == 0:
                place.pop(key, None)
            else:
                place[key] = data.draw(ODD_VALUES)
    return doc


def _reference_parse(kind: str, name: str, text: str) -> str:
    """``parse_stored`` the long way: the JSON parsed to a dict, every string walked."""
    try:
        data = json.loads(text)
    except ValueError:
        return "not JSON"
    try:
        doc = parse_document(data, expect_kind=kind)
    except DocumentError as exc:
        return f"refused: {exc.reason}"
    if doc.name != name:
        return "misnamed"
    return _shown(doc)


def _shown(doc: Any) -> str:
    return repr((type(doc), doc.model_dump(), sorted(doc.model_fields_set), to_json_dict(doc)))


@PROPERTY
@given(st.sampled_from(SEEDS), st.data(), st.booleans())
def test_a_stored_document_read_straight_from_its_text_is_the_one_the_long_way_reads(
    seed: dict[str, Any], data: st.DataObject, duplicate: bool
) -> None:
    doc = _mutated(seed, data)
    kind = seed["kind"]
    text = json.dumps(doc)
    if duplicate and isinstance(doc, dict) and doc:
        key = data.draw(st.sampled_from(list(doc)))
        text = "{" + json.dumps(key) + ": " + json.dumps(data.draw(ODD_VALUES)) + ", " + text[1:]
    name = seed["name"]
    expected = _reference_parse(kind, name, text)
    quick = parse_clean_json(text, kind=kind)
    if quick is not None:
        assert expected == _shown(quick) or (expected == "misnamed" and quick.name != name)
    try:
        got = _shown(parse_stored(kind, name, text))
    except DocumentError as exc:
        got = "not JSON" if exc.reason.startswith("not valid JSON") else f"refused: {exc.reason}"
        if exc.reason.startswith("stored under field"):
            got = "misnamed"
    assert got == expected


def test_a_valid_stored_document_takes_the_straight_path_and_a_suspect_one_does_not() -> None:
    assert parse_clean_json(json.dumps(ROUTE), kind="Route") == parse_document(ROUTE)
    assert parse_clean_json(json.dumps({**ROUTE, "backend": "s\n"}), kind="Route") is None
    assert parse_clean_json(json.dumps({**ROUTE, "backend": "S"}), kind="Route") is None
    assert (
        parse_clean_json(json.dumps({k: v for k, v in ROUTE.items() if k != "kind"}), kind="Route")
        is None
    )
    assert parse_clean_json(json.dumps(ROUTE), kind="Bogus") is None
