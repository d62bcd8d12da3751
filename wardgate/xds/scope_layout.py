"""What every scope holds, kept up to date route by route (docs/DECISIONS.md records 20-21,
docs/ROUTING.md "Scopes").

- Depth 1 always: every request first looks in the bucket of its first segment
  (scope_key.py).
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

import bisect
import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from wardgate.domain.route_order import SortKey
from wardgate.xds.scope_envoy import route_config_name
from wardgate.xds.scope_key import BUCKETS, MAX_DEPTH, Pin, bucket

SPLIT_MIN = 64  # a first segment with fewer routes stays at depth 1
MARKER_KEY = -(2**63)  # sort-key head of the markers: first in their bucket
Slot = tuple[int, int]  # (depth, bucket): one scope


class Entry(NamedTuple):
    """What a bucket holds of a route (or a marker): where it sorts, and its bytes."""

    key: SortKey
    data: bytes


def _sort_key(entry: Entry) -> SortKey:
    return entry.key


@dataclasses.dataclass(frozen=True)
class Placed:
    """One route ready to place: its entry, what its path fixes and its bucket per depth
    (index depth - 1)."""

    entry: Entry
    pin: Pin
    buckets: tuple[int, ...]


class Move(NamedTuple):
    """A first segment's routes on their way to another depth (make before break)."""

    depth: int  # the depth they go to
    since: float  # when the move started (the caller's clock, e.g. time.monotonic())


class _Group:
    """The routes under one first segment, with what choosing its depth needs."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.loads: list[Counter[int]] = [Counter() for _ in range(MAX_DEPTH + 1)]
        self.spread = [0] * (MAX_DEPTH + 1)

    def count(self, placed: Placed, sign: int) -> None:
        for depth in range(2, MAX_DEPTH + 1):
            if placed.pin.placed(depth):
                b = placed.buckets[depth - 1]
                self.loads[depth][b] += sign
                if not self.loads[depth][b]:
                    del self.loads[depth][b]
            else:
                self.spread[depth] += sign

    def depth(self) -> int:
        """How many segments key its requests: the depth whose largest bucket (routes placed
        there plus routes copied everywhere) is smallest, if at most half the routes."""
        n = len(self.names)
        if n < SPLIT_MIN:
            return 1
        best, best_cost = 1, n
        for depth in range(2, MAX_DEPTH + 1):
            cost = max(self.loads[depth].values(), default=0) + self.spread[depth]
            if cost * 2 <= n and cost < best_cost:
                best, best_cost = depth, cost
        return best


class Layout:
    """What every scope holds, kept up to date route by route: a change moves the routes
    that changed, and only the scopes they touch are assembled again.

    When a first segment's depth changes, its routes move make-before-break: first they are
    placed at the new depth *as well*, while the markers still send requests to the old
    placement (``moving``); ``settle``, called once every Envoy has had time to take that,
    switches the markers and drops the old placement.

    ``marker`` gives the bytes of the marker route for (first segment, depth); ``assemble``
    turns a scope's route configuration name and route bytes into its configuration."""

    def __init__(
        self,
        marker: Callable[[str, int], bytes],
        assemble: Callable[[str, list[bytes]], bytes],
    ) -> None:
        self._marker = marker
        self._assemble = assemble
        self._routes: dict[str, Placed] = {}
        self._groups: dict[str, _Group] = {}
        self._spanning: set[str] = set()  # routes that fix no segment
        self.depths: dict[str, int] = {}  # what the markers say: depths other than 1
        self.moving: dict[str, Move] = {}  # first segment -> where its routes go
        self._buckets: dict[Slot, list[Entry]] = {
            (d, b): [] for d in range(1, MAX_DEPTH + 1) for b in range(BUCKETS)
        }
        self._configs: dict[Slot, bytes] = {}
        self._dirty: set[Slot] = set(self._buckets)

    # --- where routes go -----------------------------------------------------------------

    def _used(self) -> list[int]:
        return sorted({1, *self.depths.values(), *(m.depth for m in self.moving.values())})

    def _placements(self, segment: str) -> list[int]:
        """The depths where a first segment's routes are: one, two while it moves."""
        depth = self.depths.get(segment, 1)
        move = self.moving.get(segment)
        return [depth] if move is None else [depth, move.depth]

    def _slots(self, placed: Placed) -> list[Slot]:
        if not placed.pin.segments:
            return [(d, b) for d in self._used() for b in range(BUCKETS)]
        out: list[Slot] = []
        for depth in self._placements(placed.pin.segments[0]):
            if placed.pin.placed(depth):
                out.append((depth, placed.buckets[depth - 1]))
            else:
                out.extend((depth, b) for b in range(BUCKETS))
        return out

    # --- the buckets ---------------------------------------------------------------------

    def _insert(self, slots: Iterable[Slot], entry: Entry) -> None:
        for slot in slots:
            bisect.insort(self._buckets[slot], entry, key=_sort_key)
            self._dirty.add(slot)

    def _remove(self, slots: Iterable[Slot], key: SortKey) -> None:
        for slot in slots:
            entries = self._buckets[slot]
            i = bisect.bisect_left(entries, key, key=_sort_key)
            assert entries[i].key == key
            del entries[i]
            self._dirty.add(slot)

    def _set_marker(self, segment: str, depth: int) -> None:
        """Point the marker of ``segment`` at ``depth`` (1: no marker)."""
        slot, key = (1, bucket([segment], 1)), (MARKER_KEY, 0, 0, 0, segment)
        if self.depths.get(segment, 1) > 1:
            self._remove([slot], key)
        if depth > 1:
            self.depths[segment] = depth
            self._insert([slot], Entry(key, self._marker(segment, depth)))
        else:
            self.depths.pop(segment, None)

    def _lift(self, names: Iterable[str]) -> list[str]:
        """Take routes out of their slots, to put them back after the state changed."""
        lifted = []
        for name in names:
            if name in self._routes:
                placed = self._routes[name]
                self._remove(self._slots(placed), placed.entry.key)
                lifted.append(name)
        return lifted

    def _put_back(self, names: Iterable[str]) -> None:
        """Insert lifted routes again, into the slots the state now gives them."""
        for name in names:
            placed = self._routes[name]
            self._insert(self._slots(placed), placed.entry)

    def _respread(self, used_before: list[int]) -> None:
        """Routes that fix no segment are in every level in use: follow changes of it."""
        used = self._used()
        if used == used_before:
            return
        gone = [d for d in used_before if d not in used]
        new = [d for d in used if d not in used_before]
        for name in self._spanning:
            placed = self._routes[name]
            self._remove([(d, b) for d in gone for b in range(BUCKETS)], placed.entry.key)
            self._insert([(d, b) for d in new for b in range(BUCKETS)], placed.entry)

    # --- changes -------------------------------------------------------------------------

    def apply(
        self,
        removed: Iterable[str],
        added: Mapping[str, Placed],
        *,
        now: float = 0.0,
    ) -> None:
        """Routes ``removed`` (by name) leave, routes ``added`` come in (a changed route is
        in both). Sort keys must be unique (they end with the route's name)."""
        touched = self._take_out(removed) | self._count_in(added)
        used_before = self._used()
        lifted = self._regroup(touched, now)
        self._respread(used_before)
        self._put_back(lifted)
        for name, placed in added.items():
            self._routes[name] = placed
            if not placed.pin.segments:
                self._spanning.add(name)
            self._insert(self._slots(placed), placed.entry)

    def _take_out(self, names: Iterable[str]) -> set[str]:
        """Routes that leave go out of their slots and groups; returns the groups touched."""
        touched: set[str] = set()
        for name in list(names):
            placed = self._routes.pop(name)
            self._remove(self._slots(placed), placed.entry.key)
            if placed.pin.segments:
                seg = placed.pin.segments[0]
                group = self._groups[seg]
                group.names.discard(name)
                group.count(placed, -1)
                touched.add(seg)
            else:
                self._spanning.discard(name)
        return touched

    def _count_in(self, added: Mapping[str, Placed]) -> set[str]:
        """Routes that come in are counted in their groups (placed once depths are chosen);
        returns the groups touched."""
        touched: set[str] = set()
        for name, placed in added.items():
            if placed.pin.segments:
                seg = placed.pin.segments[0]
                group = self._groups.setdefault(seg, _Group())
                group.names.add(name)
                group.count(placed, +1)
                touched.add(seg)
        return touched

    def _regroup(self, touched: set[str], now: float) -> list[str]:
        """Each touched group gets the depth its routes call for: at once if none of them is
        placed yet, else by a move (a moving group waits for settle). Returns the routes
        lifted out of their slots, to put back."""
        lifted: list[str] = []
        for seg in sorted(touched - set(self.moving)):
            group = self._groups[seg]
            depth = group.depth() if group.names else 1
            if depth == self.depths.get(seg, 1):
                if not group.names:
                    del self._groups[seg]
                continue
            staying = [n for n in group.names if n in self._routes]
            moved = self._lift(staying)
            if moved:
                self.moving[seg] = Move(depth, now)  # both placements until settled
            else:
                self._set_marker(seg, depth)  # nothing served there yet: switch at once
            lifted += moved
            if not group.names:
                del self._groups[seg]
        return lifted

    def settle(self, *, now: float, after: float) -> bool:
        """Finish the moves started at least ``after`` seconds ago: the markers switch to
        the new depth and the old placement goes. Returns whether anything changed."""
        due = sorted(seg for seg, move in self.moving.items() if now - move.since >= after)
        for seg in due:
            self._finish_move(seg, now)
        return bool(due)

    def _finish_move(self, seg: str, now: float) -> None:
        used_before = self._used()
        group = self._groups.get(seg)
        names = sorted(group.names) if group is not None else []
        lifted = self._lift(names)
        depth = self.moving.pop(seg).depth
        self._set_marker(seg, depth if names else 1)
        if group is not None and not names:
            del self._groups[seg]
        self._respread(used_before)
        self._put_back(lifted)
        # Changes during the move may call for another depth: start that move now.
        if group is not None and names and group.depth() != depth:
            before = self._used()
            lifted = self._lift(names)
            self.moving[seg] = Move(group.depth(), now)
            self._respread(before)
            self._put_back(lifted)

    def configs(self) -> list[tuple[str, bytes]]:
        """Every scope's route configuration; only those that changed are assembled again."""
        for slot in self._dirty:
            name = route_config_name(*slot)
            self._configs[slot] = self._assemble(name, [e.data for e in self._buckets[slot]])
        self._dirty.clear()
        return [(route_config_name(*slot), self._configs[slot]) for slot in self._buckets]
