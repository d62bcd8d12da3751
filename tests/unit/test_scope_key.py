"""The scope key: which segments a route's path fixes, how a request's path is keyed, and
that the Lua script Envoy runs keys it as wardgate does (without Envoy)."""

from __future__ import annotations

import itertools
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.lua_envoy import lua_runtime, sent_script
from wardgate.xds import scope_key as sk
from wardgate.xds.scope_envoy import F_SCOPE


@pytest.mark.parametrize(
    ("regex", "segments"),
    [
        ("/api/v[0-9]+/users", ("api",)),
        ("^/api/users/[0-9]+", ("api", "users")),
        ("/api/users?", ("api",)),  # the "s" is optional: "users" is not a whole segment
        ("/api/users/x*", ("api", "users")),
        ("/(api|x)/z", ()),
        ("/api/a|/b/c", ()),
        ("/api/(a|b)/c", ()),  # any '|' gives none: RE2's syntax is not parsed for it
        ("^/api/x[](]|/shop/y", ()),  # a ']' first in a class, then a top-level '|'
        ("^/api/x[[:alpha:](]|/shop/y", ()),
        ("^/api/x\\Q(\\E/shop/y", ("api",)),
        ("^/a#b/k1/.*", ()),  # '#' is no path character: never part of a segment
        ("^/caf%C3%A9/x/[0-9]+", ("caf%C3%A9", "x")),
        (".*\\.png", ()),
        ("/a.b/c", ()),
        ("(?i)/api/x", ()),
        ("/api/[/]x", ("api",)),
    ],
)
def test_regex_segments_are_only_what_every_match_starts_with(
    regex: str, segments: tuple[str, ...]
) -> None:
    assert sk.regex_segments(regex) == segments


def test_request_segments_drop_the_query_and_empty_segments() -> None:
    assert sk.request_segments("/api/users?next=/a/b") == ["api", "users"]
    assert sk.request_segments("/") == []
    assert sk.request_segments("/api/#frag") == ["api"]
    assert sk.bucket(["api"], 2) == sk.bucket(["api", ""], 2)
    assert sk.scope_key(2, ["api"]) == f"2:{sk.bucket(['api'], 2)}"
    # Only a segment's first bytes count: a long segment costs the script no more.
    long = "x" * sk.SEGMENT_HASH_BYTES
    assert sk.bucket([long + "a"], 1) == sk.bucket([long + "b"], 1)


# --- the Lua twin -------------------------------------------------------------------------
# The script Envoy runs (taken from the listener wardgate sends) is run here in an embedded
# Lua, LuaJIT as in Envoy when lupa has it, with a small fake of Envoy's stream handle: the
# key it sets must be Python's, at every depth the marker route can ask for.

_HARNESS = """
function(path, marker_key, marker_depth)
  local values = {[":path"] = path}
  local replaced, cleared = {}, {}
  local headers = {}
  function headers:get(name) return values[name] end
  function headers:replace(name, value)
    values[name] = value
    replaced[#replaced + 1] = name .. "=" .. value
  end
  local handle = {}
  function handle:headers() return headers end
  function handle:clearRouteCache() cleared[#cleared + 1] = values[HEADER] end
  function handle:metadata()
    -- The metadata of the route Envoy finds with the key as it is now: the first
    -- segment's marker, in the depth-1 scope of a first segment keyed deeper.
    local found = nil
    if values[HEADER] == marker_key then found = marker_depth end
    return {get = function(_, key) if key == "depth" then return found end end}
  end
  envoy_on_request(handle)
  return values[HEADER], cleared, replaced
end
"""


class EnvoyLua:
    """The sent script in an embedded Lua, with the fake handle around it."""

    def __init__(self) -> None:
        self.runtime = lua_runtime()
        self.runtime.execute(sent_script(F_SCOPE))
        self.runtime.globals().HEADER = sk.SCOPE_HEADER
        self._run = self.runtime.eval(_HARNESS)

    def request(
        self, path: str | None, marker_key: str | None = None, marker_depth: int | None = None
    ) -> tuple[str, list[str], list[str]]:
        """(The key the script sets, the keys Envoy routed with, every header it replaced),
        where the route found with ``marker_key`` is a marker for ``marker_depth``."""
        key, cleared, replaced = self._run(path, marker_key, marker_depth)
        return key, list(cleared.values()), list(replaced.values())


@pytest.fixture(scope="module")
def envoy_lua() -> EnvoyLua:
    return EnvoyLua()


_PCHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@[]"
_piece = st.one_of(
    st.text(alphabet=_PCHARS, min_size=1, max_size=24),
    st.builds("%{}{}".format, st.sampled_from(string.hexdigits), st.sampled_from(string.hexdigits)),
    st.characters(min_codepoint=0x80, exclude_categories=("Cs",)),  # raw UTF-8, 2-4 bytes
)
_segment = st.one_of(
    st.lists(_piece, max_size=2).map("".join),  # may be empty: '//'
    # Over 64 bytes mostly, the cut falling in plain characters, '%XX' or a UTF-8 sequence.
    st.builds(
        str.__add__,
        st.text(alphabet=_PCHARS, min_size=50, max_size=70),
        st.lists(_piece, min_size=1, max_size=4).map("".join),
    ),
)
_tail = st.text(alphabet=_PCHARS + "/?#%", max_size=12)


@st.composite
def _paths(draw: st.DrawFn) -> str:
    path = draw(st.sampled_from(["/", "//", ""])) + "/".join(draw(st.lists(_segment, max_size=5)))
    path += draw(st.sampled_from(["", "/"]))
    if draw(st.booleans()):
        path += "?" + draw(_tail)
    if draw(st.booleans()):
        path += "#" + draw(_tail)
    return path


@settings(max_examples=500, deadline=None)
@given(path=_paths(), marker=st.sampled_from([None, 1, 2, 3, 0, 4]))
def test_the_lua_script_sets_the_key_python_computes(
    envoy_lua: EnvoyLua, path: str, marker: int | None
) -> None:
    """At depth 1, then (if the route found there is a marker for 2 or 3) at that depth."""
    segments = sk.request_segments(path)
    first = sk.scope_key(1, segments)
    depth = marker if marker in (2, 3) else 1
    key, cleared, replaced = envoy_lua.request(path, first, marker)
    assert key == sk.scope_key(depth, segments)
    assert cleared == ([first] if depth == 1 else [first, key])
    # Whatever the client sent is overwritten before anything else.
    assert replaced[0] == f"{sk.SCOPE_HEADER}=none"


def test_a_request_without_a_path_is_keyed_as_the_root(envoy_lua: EnvoyLua) -> None:
    key, _, _ = envoy_lua.request(None)
    assert key == sk.scope_key(1, sk.request_segments("/"))


def _running_hash(text: str, h: int = 0) -> int:
    """The hash before ``% BUCKETS`` (what ``bucket`` and the script compute per byte)."""
    for byte in text.encode():
        h = (h * 31 + byte) % sk.HASH_MOD
    return h


def _segment_reaching(h: int) -> str:
    """A segment of path characters whose running hash is ``h`` after its last one."""
    for i in itertools.count():
        prefix = f"p{i}"
        start = _running_hash(prefix)
        for c in _PCHARS:
            if (start * 31 + ord(c)) % sk.HASH_MOD == h:
                return prefix + c
    raise AssertionError  # pragma: no cover


def test_the_hash_stays_exact_in_luas_doubles(envoy_lua: EnvoyLua) -> None:
    """LuaJIT computes in doubles, exact for integers below 2**53: the largest value the
    hash ever holds, (HASH_MOD - 1) * 31 + a byte, is far below that, and the script gives
    Python's key for paths that take the hash through it."""
    if envoy_lua.runtime.lua_implementation.startswith("LuaJIT"):
        # Doubles: an integer past 2**53 is rounded (Lua 5.3+ would keep it exact).
        assert envoy_lua.runtime.eval("9007199254740993 == 9007199254740992") is True
    assert (sk.HASH_MOD - 1) * 31 + 255 < 2**53
    top = _segment_reaching(sk.HASH_MOD - 1)
    assert _running_hash(top) == sk.HASH_MOD - 1
    assert sk.bucket([top], 1) == (sk.HASH_MOD - 1) % sk.BUCKETS
    for path in (f"/{top}~", f"/{top}\U0010ffff", f"/{top}/x/y", f"/a/{top}/z"):
        segments = sk.request_segments(path)
        for depth in (1, 2, 3):
            key, _, _ = envoy_lua.request(path, sk.scope_key(1, segments), depth)
            assert key == sk.scope_key(depth, segments), (path, depth)
