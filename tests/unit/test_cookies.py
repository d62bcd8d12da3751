"""Reading and removing the session cookie however the Cookie header(s) come: the Python
strip (ext_authz) and the Lua strip Envoy runs on every route, held to the same cases."""

from __future__ import annotations

import re
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.lua_envoy import lua_runtime, sent_script
from wardgate.domain.cookies import (
    MAX_COOKIE_HEADER,
    cookie_name,
    read_cookie,
    strip_cookie,
)
from wardgate.xds.translate import F_LUA, TranslateOptions

NAME = "wg_session"
SID = "S" * 43

# --- the Lua twin, with a fake of Envoy's header map ---------------------------------------
# Envoy keeps each Cookie header as its own entry: getNumValues counts them, getAtIndex reads
# one (from 0), get joins them with ",", add appends one, remove drops them all.

_HARNESS = """
function(values)
  local list = {}
  for i = 1, #values do list[i] = values[i] end
  local headers = {}
  function headers:getNumValues(name) assert(name == "cookie"); return #list end
  function headers:getAtIndex(name, i)
    assert(name == "cookie")
    if i < 0 or i >= #list then return nil end
    return list[i + 1]
  end
  function headers:get(name)
    assert(name == "cookie")
    if #list == 0 then return nil end
    return table.concat(list, ",")
  end
  function headers:remove(name) assert(name == "cookie"); list = {} end
  function headers:add(name, value) assert(name == "cookie"); list[#list + 1] = value end
  function headers:replace(name, value) assert(name == "cookie"); list = {value} end
  local handle = {}
  function handle:headers() return headers end
  envoy_on_request(handle)
  return list
end
"""


class CookieLua:
    def __init__(self, name: str = NAME) -> None:
        self.runtime = lua_runtime()
        self.runtime.execute(sent_script(F_LUA, TranslateOptions(session_cookie=name)))
        self._run = self.runtime.eval(_HARNESS)

    def request(self, *values: str) -> list[str]:
        """The Cookie headers an upstream gets for a request that carried ``values``."""
        out = self._run(self.runtime.table_from(list(values)))
        return [str(v) for v in out.values()]


@pytest.fixture(scope="module")
def lua() -> CookieLua:
    return CookieLua()


def one_header_after(header: str) -> list[str]:
    """What the Lua leaves of one Cookie header: Python's strip, the header gone if emptied."""
    stripped = strip_cookie(header, NAME)
    return [stripped] if stripped or stripped == header else []


def named(header: str, name: str = NAME) -> bool:
    """Whether any piece of ``header``, split on ';' and ',', is cookie ``name``."""
    return any(cookie_name(p) == name for p in re.split("[;,]", header))


# --- one Cookie header: both strips give the same answer -----------------------------------

ONE_HEADER = [
    ("theme=dark; wg_session=S; lang=en", "theme=dark; lang=en"),
    ("wg_session=S", ""),
    ("wg_session=S;theme=dark", "theme=dark"),
    ("theme=dark;wg_session=S;lang=en", "theme=dark; lang=en"),
    ("wg_session=S; wg_session=T", ""),
    # Two Cookie headers over HTTP/1.1, as ext_authz and Lua's get() see them.
    ("a=1,wg_session=S", "a=1"),
    ("wg_session=S,a=1", "a=1"),
    ("a=1, wg_session=S", "a=1"),
    ("a=1; b=2,wg_session=S,c=3", "a=1; b=2,c=3"),
    ("a=1, wg_session=S, b=2", "a=1, b=2"),
    # A comma inside another cookie's value is kept as it is.
    ("a=x,y; wg_session=S", "a=x,y"),
    ("exp=Mon, 01 Jan 2024 00:00:00 GMT; wg_session=S", "exp=Mon, 01 Jan 2024 00:00:00 GMT"),
    # HTTP/2: Envoy joins the cookie entries with "; ".
    ("a=1; wg_session=S; b=2", "a=1; b=2"),
    # The name with whitespace, quotes, tabs or control characters around it.
    (" wg_session=S", ""),
    ("a=1;  wg_session =S", "a=1"),
    ("a=1;\twg_session\t=S", "a=1"),
    ('a=1; "wg_session"=S', "a=1"),
    ("a=1; \x00wg_session\x7f=S", "a=1"),
    ("a=1; \u00a0wg_session=S", "a=1"),
    # Not the session cookie: another name, no '=', the name inside a value.
    ("wg_session_old=1; wg_sessionx=1; Wg_Session=1",) * 2,
    ("wg_session; a=1", "wg_session; a=1"),
    ("a=wg_session=S", "a=wg_session=S"),
    ("theme=dark", "theme=dark"),
    ("", ""),
    # Empty parts go when something is removed; untouched headers stay as they are.
    ("a=1;; wg_session=S;;b=2", "a=1; b=2"),
    ("a=1;;b=2", "a=1;;b=2"),
]


@pytest.mark.parametrize(("header", "expected"), ONE_HEADER)
def test_python_and_lua_strip_agree_on_one_header(
    lua: CookieLua, header: str, expected: str
) -> None:
    assert strip_cookie(header, NAME) == expected
    assert lua.request(header) == one_header_after(header)


# --- several Cookie headers --------------------------------------------------------------

SEVERAL = [
    (["a=1", "wg_session=S"], ["a=1"]),
    (["wg_session=S", "a=1"], ["a=1"]),
    (["a=1; wg_session=S", "wg_session=T; b=2"], ["a=1", "b=2"]),
    (["a=x,y", "b=2"], ["a=x,y", "b=2"]),  # untouched: as many headers as were sent
    (["a=x,y", "wg_session=S"], ["a=x,y"]),
    (["wg_session=S", "wg_session=T"], []),
]


@pytest.mark.parametrize(("values", "expected"), SEVERAL)
def test_each_cookie_header_is_stripped_in_lua_and_the_joined_one_in_python(
    lua: CookieLua, values: list[str], expected: list[str]
) -> None:
    assert lua.request(*values) == expected
    # ext_authz sees HTTP/1.1 headers joined with ","; HTTP/2 arrives joined with "; ".
    for joined in (",".join(values), "; ".join(values)):
        stripped = strip_cookie(joined, NAME)
        assert not named(stripped)
        kept = [p.strip() for v in expected for p in re.split("[;,]", v) if p.strip()]
        assert [p.strip() for p in re.split("[;,]", stripped) if p.strip()] == kept


def test_no_cookie_header_is_left_alone(lua: CookieLua) -> None:
    assert lua.request() == []


def test_another_configured_name_is_the_one_removed() -> None:
    other = CookieLua("__Host-sid")
    assert other.request("wg_session=S; __Host-sid=X, a=1") == ["wg_session=S; a=1"]
    assert strip_cookie("wg_session=S; __Host-sid=X, a=1", "__Host-sid") == "wg_session=S; a=1"


# --- properties ------------------------------------------------------------------------

_sep = st.sampled_from([";", "; ", ",", ", ", " ;", " , ", ";;", ",,"])
_ws = st.sampled_from(["", " ", "\t", "  ", '"', "\x0b", "\u00a0", "\x00"])
_other_name = st.sampled_from(
    ["a", "theme", "wg_sessio", "wg_sessionx", "xwg_session", "Wg_session", "wg-session", ""]
)
# Values of other cookies: lower-case letters, digits, whitespace, commas, '=' and quotes;
# never 'S', the letter of the session ids, so that any 'S' left over is a leak.
_other_value = st.text(
    alphabet=string.ascii_lowercase + string.digits + " =,-._~/\t\"'", max_size=10
)
_session_piece = st.builds(
    lambda before, after, value: f"{before}{NAME}{after}={value}",
    _ws,
    _ws,
    st.sampled_from([SID, f'"{SID}"', f" {SID} ", "SSS", ""]),
)
_other_piece = st.one_of(
    st.builds("{}={}".format, _other_name, _other_value),
    _other_value,  # no '=': a value alone, or nothing
)


@st.composite
def _headers(draw: st.DrawFn) -> str:
    pieces = draw(st.lists(st.one_of(_session_piece, _other_piece), max_size=10))
    out = ""
    for i, piece in enumerate(pieces):
        out += (draw(_sep) if i else draw(st.sampled_from(["", " "]))) + piece
    return out


@settings(max_examples=400, deadline=None)
@given(header=_headers())
def test_no_strip_ever_leaves_the_session_cookie(lua: CookieLua, header: str) -> None:
    stripped = strip_cookie(header, NAME)
    assert not named(stripped)
    assert "S" not in stripped  # nor any part of its value
    assert read_cookie(stripped, NAME) is None
    # The Lua strip, which Envoy runs on every route, gives the same answer.
    assert lua.request(header) == one_header_after(header)


@settings(max_examples=200, deadline=None)
@given(header=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=80))
def test_the_strips_agree_on_any_text(lua: CookieLua, header: str) -> None:
    stripped = strip_cookie(header, NAME)
    assert not named(stripped)
    assert lua.request(header) == one_header_after(header)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(_headers(), min_size=1, max_size=4))
def test_several_headers_never_keep_the_session_cookie(lua: CookieLua, values: list[str]) -> None:
    for out in lua.request(*values):
        assert not named(out) and "S" not in out
    assert not named(strip_cookie(",".join(values), NAME))


@given(header=_headers())
def test_other_cookies_survive_the_strip(header: str) -> None:
    def others(text: str) -> list[str]:
        pieces = [p for part in text.split(";") for p in part.split(",")]
        return [p.strip(" \t") for p in pieces if cookie_name(p) != NAME and p.strip(" \t")]

    stripped = strip_cookie(header, NAME)
    assert others(stripped) == others(header)
    if not named(header):
        assert stripped == header


# --- reading the session cookie ----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (f"{NAME}={SID}", SID),
        (f"a=1; {NAME}={SID}", SID),
        (f"a=1,{NAME}={SID}", SID),  # two HTTP/1.1 headers, as ext_authz sees them
        (f"a=x,y; {NAME}={SID}", SID),
        (f' {NAME} = "{SID}" ', SID),
        (f"{NAME}={SID}; {NAME}={SID}", SID),  # the same value twice
        (f"{NAME}={SID},{NAME}=other", None),  # two values: neither is chosen
        (f"{NAME}=other; a=1; {NAME}={SID}", None),
        ("a=1", None),
        (f"{NAME}x={SID}", None),
        (f"a={NAME}={SID}", None),
        (f"{NAME}", None),
        (None, None),
        ("", None),
        (f"a=1; {NAME}={SID}; " + "x" * MAX_COOKIE_HEADER, None),  # too large: not read
    ],
)
def test_read_cookie(header: str | None, value: str | None) -> None:
    assert read_cookie(header, NAME) == value


@given(header=_headers())
def test_what_is_read_is_always_stripped(header: str) -> None:
    if read_cookie(header, NAME) is not None:
        assert strip_cookie(header, NAME) != header


@given(st.one_of(st.none(), st.text(max_size=300)))
def test_read_cookie_never_raises(header: str | None) -> None:
    value = read_cookie(header, NAME)
    assert value is None or isinstance(value, str)


def _names(values: Any) -> list[str | None]:
    return [cookie_name(v) for v in values]


def test_cookie_name() -> None:
    assert _names(["a=1", " a =1", '"a"=1', "a", "=1", "a b=1", "a=b=c"]) == [
        "a",
        "a",
        "a",
        None,
        "",
        "a b",
        "a",
    ]
