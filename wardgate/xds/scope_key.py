"""The scope key: the scope Envoy routes a request in, computed from the request's path.

A key is a depth and a bucket, ``"<depth>:<bucket>"``, sent in the header ``SCOPE_HEADER``:
the bucket is a hash of the path's first ``depth`` segments (query string dropped, missing
segments empty, each segment cut to its first ``SEGMENT_HASH_BYTES`` bytes), ``BUCKETS``
buckets per depth. Every request is keyed at depth 1 first; a first segment keyed deeper has a
marker route there that says how deep (scope_envoy.py, scope_layout.py).

The key is computed twice, and both must agree: inside Envoy by a Lua script (``scope_lua``,
the first HTTP filter, so that a client cannot choose its scope), and in wardgate when routes
are placed (``bucket``, ``Pin``). They sit side by side here; tests/unit/test_scope_key.py
runs the script against the Python for generated paths.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

BUCKETS = 251  # prime: a polynomial hash spreads evenly over a prime count
MAX_DEPTH = 3
SCOPE_HEADER = "x-wardgate-scope"
SEGMENT_HASH_BYTES = 64  # only a segment's first bytes are hashed: long paths cost no more
HASH_MOD = 1_000_003  # (h * 31 + byte) stays an exact integer in Lua's doubles
_REGEX_META = frozenset("\\.^$|?*+()[]{}")
# Characters a request path holds as they are (RFC 3986 pchar, '/', '[' and ']'): a literal
# stops at anything else, so a segment taken from a regex is always a valid path prefix.
_PATH_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/%[]"
)


def bucket(segments: Sequence[str], depth: int) -> int:
    """The bucket of a request's first ``depth`` segments (missing ones empty): a hash of
    them joined by '/', each cut to its first SEGMENT_HASH_BYTES bytes. The Lua script
    computes the same number."""
    h = 0
    for i in range(depth):
        if i:
            h = (h * 31 + 47) % HASH_MOD  # the '/' between segments
        seg = segments[i].encode()[:SEGMENT_HASH_BYTES] if i < len(segments) else b""
        for byte in seg:
            h = (h * 31 + byte) % HASH_MOD
    return h % BUCKETS


def scope_key(depth: int, segments: Sequence[str]) -> str:
    return f"{depth}:{bucket(segments, depth)}"


def request_segments(path: str) -> list[str]:
    """A request path's segments, as the Lua script splits them."""
    for stop in "?#":
        path = path.split(stop, 1)[0]
    return [s for s in path.split("/") if s]


def scope_lua() -> str:
    """The first HTTP filter: sets the scope key from the path; goes deeper once if the
    route found says so. The key is overwritten first, so an error leaves no client value
    (and no scope: 404). ``handle:metadata()`` is the found route's metadata under the
    filter's own name, where a marker route puts ``depth`` (scope_envoy.py)."""
    return f"""
local HEADER = {json.dumps(SCOPE_HEADER)}
local BUCKETS = {BUCKETS}
local MAX_DEPTH = {MAX_DEPTH}
local function key(segs, depth)
  local h = 0
  for i = 1, depth do
    local s = segs[i] or ""
    if i > 1 then h = (h * 31 + 47) % {HASH_MOD} end
    for j = 1, math.min(#s, {SEGMENT_HASH_BYTES}) do
      h = (h * 31 + string.byte(s, j)) % {HASH_MOD}
    end
  end
  return depth .. ":" .. (h % BUCKETS)
end
function envoy_on_request(handle)
  local headers = handle:headers()
  headers:replace(HEADER, "none")
  local path = headers:get(":path") or "/"
  local stop = string.find(path, "[?#]")
  if stop then path = string.sub(path, 1, stop - 1) end
  local segs = {{}}
  for seg in string.gmatch(path, "[^/]+") do
    segs[#segs + 1] = seg
    if #segs >= MAX_DEPTH then break end
  end
  headers:replace(HEADER, key(segs, 1))
  handle:clearRouteCache()
  local depth = handle:metadata():get("depth")
  if depth and depth > 1 and depth <= MAX_DEPTH then
    headers:replace(HEADER, key(segs, depth))
    handle:clearRouteCache()
  end
end
"""


def regex_segments(regex: str) -> tuple[str, ...]:
    """The complete path segments every match of ``regex`` starts with (maybe none): the
    literal text before the first regex operator, cut at its last '/'. Any '|' gives none
    (no need to parse RE2's groups, classes and quoting to find the top-level ones)."""
    if "|" in regex:
        return ()
    text = regex[1:] if regex.startswith("^") else regex
    literal: list[str] = []
    for c in text:
        if c in _REGEX_META or c not in _PATH_CHARS:
            if c in "?*{" and literal:
                literal.pop()  # the character before may be absent
            break
        literal.append(c)
    parts = "".join(literal).split("/")
    if len(parts) < 2 or parts[0] != "":
        return ()
    out: list[str] = []
    for seg in parts[1:-1]:  # the last part is not known to end there
        if not seg:
            break
        out.append(seg)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Pin:
    """What a route's path fixes: its leading segments, and whether it matches only paths of
    exactly those segments (an exact path)."""

    segments: tuple[str, ...]
    exact: bool = False

    @classmethod
    def of(cls, *, prefix: str | None, path: str | None, regex: str | None) -> Pin:
        if path is not None:
            return cls(tuple(request_segments(path)), exact=True)
        if regex is not None:
            return cls(regex_segments(regex))
        # '/api/users' (path_separated_prefix) and '/api/users/' both fix api, users.
        return cls(tuple(s for s in (prefix or "/").split("/") if s))

    def placed(self, depth: int) -> bool:
        """Whether at ``depth`` this route lives in one bucket (else in all of them)."""
        return self.exact or len(self.segments) >= depth


def pin_buckets(pin: Pin) -> tuple[int, ...]:
    """A pin's bucket at each depth (index depth - 1)."""
    return tuple(bucket(pin.segments, d) for d in range(1, MAX_DEPTH + 1))
