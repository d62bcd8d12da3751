"""ParseMemo: a stored text already parsed is not parsed again, whether it was read again (an
equal string, another object) or alternates with its last good version; what it holds is the
latest copy of each text, at most two per document."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wardgate.domain import catalog
from wardgate.domain.catalog import Catalog, ParseMemo
from wardgate.errors import DocumentError


def _route(name: str, prefix: str = "/") -> str:
    return json.dumps({"kind": "Route", "name": name, "match": {"prefix": prefix}, "backend": "s"})


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = catalog.parse_stored

    def counting(kind: str, name: str, text: str) -> Any:
        seen.append(text)
        return real(kind, name, text)

    monkeypatch.setattr(catalog, "parse_stored", counting)
    return seen


def _copy(text: str) -> str:
    return "".join(list(text))  # equal, another object


def test_a_text_read_again_is_not_parsed_again_and_the_latest_copy_is_kept(
    parses: list[str],
) -> None:
    memo = ParseMemo()
    first = _route("r")
    doc = memo.parse("Route", "r", first)
    again = _copy(first)
    assert again is not first
    assert memo.parse("Route", "r", again) is doc
    assert parses == [first]
    held = memo._kinds["Route"]
    assert held.text["r"] is again and not held.older


def test_a_refused_text_and_its_last_good_version_are_each_parsed_once(
    parses: list[str],
) -> None:
    memo = ParseMemo()
    good, bad = _route("r"), '{"kind": "Route", "name": "r", "match": 5}'
    for _ in range(3):
        with pytest.raises(DocumentError, match="match"):
            memo.parse("Route", "r", bad)
        assert memo.parse("Route", "r", good).name == "r"
    assert parses == [bad, good]
    third = _route("r", "/x")
    memo.parse("Route", "r", third)
    memo.parse("Route", "r", good)
    with pytest.raises(DocumentError):
        memo.parse("Route", "r", bad)  # the oldest of three: forgotten, parsed again
    assert parses == [bad, good, third, bad]


def test_the_memo_answers_as_a_fresh_parse_and_forgets_all_when_full(parses: list[str]) -> None:
    memo = ParseMemo(max_entries=3)
    raw: dict[str, dict[str, str]] = {
        "Route": {f"r{i}": _route(f"r{i}", f"/{i}") for i in range(3)}
    }
    raw["Route"]["bad"] = _route("other")
    raw["Service"] = {"s": json.dumps({"kind": "Service", "name": "s", "discovery": "registry"})}
    first = Catalog.from_raw(raw, memo=memo)
    assert first.refused == {"Route/bad": "stored under field 'bad' but named 'other'"}
    second = Catalog.from_raw(raw, memo=memo)
    assert (second.routes, second.refused) == (first.routes, first.refused)
    assert len(parses) > 4  # four names, room for three: some were parsed again
