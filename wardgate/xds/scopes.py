"""Scoped routes: the route table split by the request path, so that a change rebuilds a
small part of it (docs/DECISIONS.md record 20, docs/ROUTING.md "Scopes").

Envoy picks a scope (a RouteConfiguration of its own) from a key in a request header; the
first HTTP filter, a Lua script, computes that key from the path, so a client cannot choose
it. A key is a depth and a bucket: the bucket is a hash of the path's first ``depth``
segments (query string dropped, missing segments empty), ``BUCKETS`` buckets per depth.

- Depth 1 always: every request first looks in the bucket of its first segment.
- A first segment with many routes under it may go deeper (2 or 3 segments). Its depth-1
  bucket then holds a *marker* route for it, whose metadata tells the script the depth; the
  script recomputes the key with that many segments and Envoy routes again, once.
- A route goes into the one bucket its own path fixes, when it fixes enough segments: an exact
  path, or a prefix or regex whose leading segments are literal. A route that does not (a
  prefix '/', a regex with no literal segment, a prefix shorter than its first segment's
  depth) is copied into every bucket a request it matches may look in.
- In every bucket the routes keep the global order (docs/ROUTING.md); markers come first.

Every route that can match a request is in the bucket that request ends in, in the same order
as in the whole table: scopes change how much Envoy rebuilds, never which route answers.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

BUCKETS = 67  # prime: a polynomial hash spreads evenly over a prime count
MAX_DEPTH = 3
SPLIT_MIN = 64  # a first segment with fewer routes stays at depth 1
SCOPE_HEADER = "x-wardgate-scope"
F_SCOPE = "wardgate.scope"  # the Lua filter's name; the markers' metadata is under it
SCOPED_ROUTES_NAME = "wardgate_scopes"
_HASH_MOD = 1_000_003  # (h * 31 + byte) stays an exact integer in Lua's doubles
_REGEX_META = frozenset("\\.^$|?*+()[]{}")


def bucket(text: str) -> int:
    """The bucket of a key text; the Lua script computes the same number."""
    h = 0
    for byte in text.encode():
        h = (h * 31 + byte) % _HASH_MOD
    return h % BUCKETS


def key_text(segments: Sequence[str], depth: int) -> str:
    """The first ``depth`` segments joined by '/', missing ones empty."""
    return "/".join(segments[i] if i < len(segments) else "" for i in range(depth))


def scope_key(depth: int, segments: Sequence[str]) -> str:
    return f"{depth}:{bucket(key_text(segments, depth))}"


def route_config_name(depth: int, b: int) -> str:
    return f"wardgate_routes_{depth}_{b}"


def scope_name(depth: int, b: int) -> str:
    return f"wardgate_scope_{depth}_{b}"


def request_segments(path: str) -> list[str]:
    """A request path's segments, as the Lua script splits them."""
    for stop in "?#":
        path = path.split(stop, 1)[0]
    return [s for s in path.split("/") if s]


def regex_segments(regex: str) -> tuple[str, ...]:
    """The complete path segments every match of ``regex`` starts with (maybe none)."""
    depth, i, in_class = 0, 0, False
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return ()  # alternatives at the top: no common prefix
        i += 1
    text = regex[1:] if regex.startswith("^") else regex
    literal: list[str] = []
    for c in text:
        if c in _REGEX_META:
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


def choose_depth(pins: Sequence[tuple[Pin, Sequence[int]]]) -> int:
    """How many segments key the requests under one first segment: the depth whose largest
    bucket (routes placed there plus routes copied everywhere) is smallest, if it is at most
    half the routes; 1 otherwise. ``pins``: each route's pin and its bucket per depth."""
    n = len(pins)
    if n < SPLIT_MIN:
        return 1
    best, best_cost = 1, n
    for depth in range(2, MAX_DEPTH + 1):
        loads: Counter[int] = Counter()
        spread = 0
        for pin, buckets in pins:
            if pin.placed(depth):
                loads[buckets[depth - 1]] += 1
            else:
                spread += 1
        cost = (max(loads.values()) if loads else 0) + spread
        if cost * 2 <= n and cost < best_cost:
            best, best_cost = depth, cost
    return best


def pin_buckets(pin: Pin) -> tuple[int, ...]:
    """A pin's bucket at each depth (index depth - 1)."""
    return tuple(bucket(key_text(pin.segments, d)) for d in range(1, MAX_DEPTH + 1))


@dataclasses.dataclass(frozen=True)
class Placed:
    """One route ready to place: its pin, its buckets per depth and its serialized form."""

    pin: Pin
    buckets: tuple[int, ...]
    data: bytes


def place(
    routes: Iterable[Placed], marker: Callable[[str, int], bytes]
) -> tuple[dict[tuple[int, int], list[bytes]], dict[str, int]]:
    """Bucket contents: (depth, bucket) -> route bytes in order, and the depth of each first
    segment that goes deeper than 1. ``routes`` come in the global order; ``marker`` gives
    the bytes of the marker route for (first segment, depth), built by the caller."""
    routes = list(routes)
    groups: dict[str, list[tuple[Pin, Sequence[int]]]] = {}
    for r in routes:
        if r.pin.segments:
            groups.setdefault(r.pin.segments[0], []).append((r.pin, r.buckets))
    depths = {seg: d for seg, pins in groups.items() if (d := choose_depth(pins)) > 1}
    used = sorted({1, *depths.values()})
    out: dict[tuple[int, int], list[bytes]] = {
        (d, b): [] for d in range(1, MAX_DEPTH + 1) for b in range(BUCKETS)
    }
    for seg, d in sorted(depths.items()):
        out[(1, bucket(seg))].append(marker(seg, d))
    for r in routes:
        if not r.pin.segments:
            for d in used:
                for b in range(BUCKETS):
                    out[(d, b)].append(r.data)
            continue
        d = depths.get(r.pin.segments[0], 1)
        if r.pin.placed(d):
            out[(d, r.buckets[d - 1])].append(r.data)
        else:
            for b in range(BUCKETS):
                out[(d, b)].append(r.data)
    return out, depths


def marker_route(segment: str, depth: int) -> dict[str, object]:
    """The route that sends requests under ``/segment`` ``depth`` segments deep. Never
    answers when the script works; if it did, a 404."""
    return {
        "name": f"wardgate.scope/{segment}",
        "match": {"path_separated_prefix": f"/{segment}"},
        "metadata": {"filter_metadata": {F_SCOPE: {"depth": depth}}},
        "direct_response": {"status": 404},
    }


def scope_resources() -> list[dict[str, object]]:
    """Every scope, fixed: MAX_DEPTH x BUCKETS, each with its route configuration."""
    return [
        {
            "name": scope_name(d, b),
            "route_configuration_name": route_config_name(d, b),
            "key": {"fragments": [{"string_key": f"{d}:{b}"}]},
        }
        for d in range(1, MAX_DEPTH + 1)
        for b in range(BUCKETS)
    ]


def scope_lua() -> str:
    """The first HTTP filter: sets the scope key from the path; goes deeper once if the
    route found says so. The key is overwritten first, so an error leaves no client value
    (and no scope: 404)."""
    return f"""
local HEADER = {json.dumps(SCOPE_HEADER)}
local BUCKETS = {BUCKETS}
local MAX_DEPTH = {MAX_DEPTH}
local function key(segs, depth)
  local h = 0
  for i = 1, depth do
    local s = segs[i] or ""
    if i > 1 then h = (h * 31 + 47) % {_HASH_MOD} end
    for j = 1, #s do h = (h * 31 + string.byte(s, j)) % {_HASH_MOD} end
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
