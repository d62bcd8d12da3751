"""Envoy messages from their JSON form, with bytes that depend only on their content.

``json_format.ParseDict`` packs every ``Any`` (typed configs: filters, per-route configs,
cluster options) with the default serialization, in which map entries (``context_extensions``,
``Struct`` fields) come out in an order that varies from one process to the next. Snapshot
versions are hashes of those bytes, so two workers or replicas would give the same documents
different versions, and an Envoy moving between them would be sent a "changed" listener.
``parse`` packs every ``Any`` deterministically, innermost first; ``canonicalize`` does the
same to a message built otherwise.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from wardgate.xds import pbencode

M = TypeVar("M", bound=Message)
_ANY = "google.protobuf.Any"
_classes: dict[str, type[Message]] = {}


def parse(entry: dict[str, Any], message: M) -> M:
    """``entry`` (Envoy's JSON form) parsed into ``message``, every ``Any`` in it packed
    deterministically (what ``json_format.ParseDict`` and then ``canonicalize`` give: written
    by ``pbencode``, several times faster, and read back)."""
    message.MergeFromString(pbencode.encode(entry, message.DESCRIPTOR))
    return message


def canonicalize(message: Message) -> None:
    """Repack every ``Any`` inside ``message`` deterministically (in place)."""
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            if entry.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                for item in value.values():
                    _visit(item)
        elif field.is_repeated:
            for item in value:
                _visit(item)
        else:
            _visit(value)


def _visit(message: Message) -> None:
    if message.DESCRIPTOR.full_name == _ANY:
        _repack(message)  # type: ignore[arg-type]
    else:
        canonicalize(message)


def _repack(packed: any_pb2.Any) -> None:
    if not packed.type_url:  # an empty Any (FilterConfig{config: {}}) has nothing inside
        return
    name = packed.type_url.rsplit("/", 1)[-1]
    cls = _classes.get(name)
    if cls is None:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
        cls = _classes[name] = message_factory.GetMessageClass(descriptor)
    inner = cls.FromString(packed.value)
    canonicalize(inner)
    packed.value = inner.SerializeToString(deterministic=True)
