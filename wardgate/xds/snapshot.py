"""Versioned, in-memory snapshots of Envoy resources: the only thing the ADS servicer reads.

A snapshot holds, per resource type, the resources by name and a version computed from their
content, so every wardgate replica gives the same documents the same version. The listener
depends on the Envoy's node group (where it listens), so it is built per group on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message

from wardgate.xds.typeurls import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_EXTENSION_CONFIG,
    TYPE_LISTENER,
    TYPE_ROUTE,
    TYPE_SCOPED_ROUTE,
    TYPE_SECRET,
)

# Make before break: clusters (and their endpoints) before the listeners and routes using them.
PUSH_ORDER = (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_SECRET,  # the listener's certificate (SDS): a TLS listener warms until it has it
    TYPE_LISTENER,
    TYPE_EXTENSION_CONFIG,  # filter configs the listener's filters discover (ECDS)
    TYPE_SCOPED_ROUTE,
    TYPE_ROUTE,
)
# Types whose state-of-the-world responses carry every resource (a missing one is removed).
WILDCARD_TYPES = frozenset({TYPE_CLUSTER, TYPE_LISTENER, TYPE_SCOPED_ROUTE})


class Packed(Mapping[str, any_pb2.Any]):
    """Serialized messages of one type, each packed into an ``Any`` when asked for: the
    snapshot holds each resource's bytes once (packing them ahead doubled the memory of a
    100,000-route table), and a response packs only what it sends."""

    __slots__ = ("_raw", "_type_url")

    def __init__(self, type_url: str, raw: dict[str, bytes]) -> None:
        self._type_url = type_url
        self._raw = raw

    def __getitem__(self, name: str) -> any_pb2.Any:
        return any_pb2.Any(type_url=self._type_url, value=self._raw[name])

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


@dataclasses.dataclass(frozen=True)
class Resources:
    items: Mapping[str, any_pb2.Any]
    version: str
    known_versions: dict[str, str] | None = None
    # The serialized messages as given (``resources_from_bytes``): a later snapshot holding
    # the very same bytes object reuses the packed message and its version.
    raw: dict[str, bytes] = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def versions(self) -> dict[str, str]:
        """Per resource: a version from its content (for incremental xDS)."""
        if self.known_versions is not None:
            return self.known_versions
        return {name: _version(name, item.value) for name, item in self.items.items()}

    @classmethod
    def of(cls, messages: Iterable[Message], name: Callable[[Any], str]) -> Resources:
        items: dict[str, any_pb2.Any] = {}
        digest = hashlib.sha256()
        for msg in sorted(messages, key=name):
            packed = any_pb2.Any()
            packed.Pack(msg, deterministic=True)
            items[name(msg)] = packed
            digest.update(name(msg).encode() + b"\0" + packed.value + b"\0")
        return cls(items, digest.hexdigest()[:16])


def _version(name: str, data: bytes) -> str:
    return hashlib.sha256(name.encode() + b"\0" + data).hexdigest()[:16]


def resources_from_bytes(
    type_url: str, items: list[tuple[str, bytes]], previous: Resources | None = None
) -> Resources:
    """Resources from already serialized (deterministic) messages of one type. Resources
    whose bytes are the same object as in ``previous`` are not hashed again."""
    versions: dict[str, str] = {}
    raw: dict[str, bytes] = {}
    for name, data in sorted(items):
        if previous is not None and previous.raw.get(name) is data:
            versions[name] = previous.versions[name]
        else:
            versions[name] = _version(name, data)
        raw[name] = data
    digest = hashlib.sha256("\0".join(f"{n}:{v}" for n, v in versions.items()).encode())
    packed = Packed(type_url, raw)
    return Resources(packed, digest.hexdigest()[:16], known_versions=versions, raw=raw)


EMPTY = Resources({}, "empty")


@dataclasses.dataclass(frozen=True)
class NodeGroup:
    """What makes two Envoys need different resources: where their listeners bind (the
    gateway's, and the compose listener's when the bootstrap gives it a port)."""

    listen_address: str
    listen_port: int
    compose_address: str = "127.0.0.1"
    compose_port: int = 0  # 0: no compose listener


@dataclasses.dataclass(frozen=True)
class Snapshot:
    resources: dict[str, Resources]
    revision: int = 0  # the document revision it was built from (for status), not its version
    # The clusters the route configurations refer to: a cluster an Envoy's routes still use
    # is removed only after it has accepted routes that no longer do (make before break).
    route_clusters: frozenset[str] = frozenset()

    def get(self, type_url: str) -> Resources:
        return self.resources.get(type_url, EMPTY)


ListenerFactory = Callable[[NodeGroup], Message | list[Message]]


class SnapshotCache:
    """Holds the latest base snapshot (from the documents, its filter configurations
    included), the filter configurations that other sources publish beside it
    (``set_extension``: ECDS, e.g. the ban list), and a listener per node group; streams wait
    on ``wait_changed`` for a newer generation."""

    def __init__(self, *, listener_factory: ListenerFactory) -> None:
        self._listener_factory = listener_factory
        self._base: Snapshot | None = None
        self._listeners: dict[NodeGroup, Resources] = {}
        self._extensions: dict[str, bytes] = {}  # name -> serialized TypedExtensionConfig
        self._ecds: Resources = resources_from_bytes(TYPE_EXTENSION_CONFIG, [])
        self._published_secrets: dict[str, bytes] = {}  # name -> serialized Secret (files)
        self._secrets: Resources = resources_from_bytes(TYPE_SECRET, [])
        self._generation = 0
        self._changed = asyncio.Event()
        # Set by the composition root to the document watcher's check (replicas.py).
        self.freshness: Callable[[float], Awaitable[bool]] | None = None

    async def ensure_current(self, since: float) -> bool:
        """Whether the snapshot is at least as new as the store was at ``since``."""
        return True if self.freshness is None else await self.freshness(since)

    @property
    def ready(self) -> bool:
        return self._base is not None

    @property
    def generation(self) -> int:
        return self._generation

    def set_base(self, snapshot: Snapshot) -> bool:
        """Publish ``snapshot``; returns whether any resource changed."""
        old = self._base
        if old is not None and all(
            old.get(t).version == snapshot.get(t).version for t in PUSH_ORDER
        ):
            self._base = snapshot  # same content, maybe a newer revision number
            return False
        self._base = snapshot
        self._merge_extensions()
        self._merge_secrets()
        self._bump()
        return True

    def set_extension(self, name: str, config: bytes) -> bool:
        """Publish the filter configuration ``name`` (a serialized, deterministic
        ``TypedExtensionConfig``); returns whether it changed."""
        if self._extensions.get(name) == config:
            return False
        self._extensions[name] = config
        self._merge_extensions()
        if self._base is not None:
            self._bump()
        return True

    def set_secret(self, name: str, secret: bytes) -> bool:
        """Publish the TLS secret ``name`` (a serialized, deterministic ``Secret``, served
        over SDS); returns whether it changed."""
        if self._published_secrets.get(name) == secret:
            return False
        self._published_secrets[name] = secret
        self._merge_secrets()
        if self._base is not None:
            self._bump()
        return True

    def _merge_secrets(self) -> None:
        """The base's secrets (Secret documents) and the published ones, as one set; a
        published one (the listener's certificate files) wins over a document of its name."""
        own = self._base.get(TYPE_SECRET).raw if self._base is not None else {}
        merged = {**own, **self._published_secrets}
        self._secrets = resources_from_bytes(TYPE_SECRET, list(merged.items()), self._secrets)

    def has_secret(self, name: str) -> bool:
        return name in self._secrets.items

    def _merge_extensions(self) -> None:
        """The base's filter configurations and the published ones, as one resource set."""
        own = self._base.get(TYPE_EXTENSION_CONFIG).raw if self._base is not None else {}
        self._ecds = resources_from_bytes(
            TYPE_EXTENSION_CONFIG, [*own.items(), *self._extensions.items()], self._ecds
        )

    def _bump(self) -> None:
        self._generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def snapshot_for(self, group: NodeGroup) -> Snapshot | None:
        if self._base is None:
            return None
        listener = self._listeners.get(group)
        if listener is None:
            made = self._listener_factory(group)
            listener = Resources.of(made if isinstance(made, list) else [made], lambda m: m.name)
            self._listeners[group] = listener
        resources = {
            **self._base.resources,
            TYPE_LISTENER: listener,
            TYPE_EXTENSION_CONFIG: self._ecds,
            TYPE_SECRET: self._secrets,
        }
        return dataclasses.replace(self._base, resources=resources)

    async def wait_changed(self, generation: int, timeout: float | None = None) -> None:
        """Return when the generation is past ``generation`` (or after ``timeout``)."""
        if self._generation != generation:
            return
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
