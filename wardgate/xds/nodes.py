"""What each connected Envoy has been sent and has ACKed or NACKed, kept in memory.

The ADS servicer writes here; a status reporter copies it to Redis for ``wardgate status``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from wardgate.xds.typeurls import short_name


@dataclasses.dataclass
class TypeState:
    sent_version: str = ""
    acked_version: str = ""
    nacked_version: str = ""
    nack_error: str = ""
    nack_time: float = 0.0


@dataclasses.dataclass
class NodeState:
    node_id: str
    cluster: str
    stream: int
    mode: str  # sotw | delta
    connected_at: float = dataclasses.field(default_factory=time.time)
    types: dict[str, TypeState] = dataclasses.field(default_factory=dict)

    def type(self, type_url: str) -> TypeState:
        return self.types.setdefault(type_url, TypeState())

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "cluster": self.cluster,
            "mode": self.mode,
            "connected_at": self.connected_at,
            "types": {short_name(t): dataclasses.asdict(s) for t, s in sorted(self.types.items())},
        }


class NodeRegistry:
    def __init__(self) -> None:
        self._nodes: dict[int, NodeState] = {}
        self.dirty = True

    def connect(self, state: NodeState) -> None:
        self._nodes[state.stream] = state
        self.dirty = True

    def disconnect(self, stream: int) -> None:
        self._nodes.pop(stream, None)
        self.dirty = True

    def touch(self) -> None:
        self.dirty = True

    def __len__(self) -> int:
        return len(self._nodes)

    def snapshot(self) -> list[dict[str, Any]]:
        return [n.to_json() for n in self._nodes.values()]
