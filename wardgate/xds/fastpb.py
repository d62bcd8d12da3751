"""Envoy's JSON form into protobuf messages, fast, with every ``Any`` packed deterministically.

``json_format.ParseDict`` is general and slow (about a millisecond for one route with a local
rate limit: most of a cold build of 100,000 routes). The configurations wardgate writes use a
small part of the JSON mapping: messages, repeated fields, maps, enums by name, ``Any`` with
``@type``, ``Duration`` strings, wrappers and ``Struct``. This walks the dict and sets fields on
the (upb) message directly, and packs each ``Any`` from its inner message serialized
deterministically, so bytes depend only on content (``canonical.py``). Anything it does not
handle it hands to ``json_format`` (``Value``, ``ListValue``, ``FieldMask``, ...), and a name it
does not know is an error, as with ``ParseDict``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_F = FieldDescriptor
_INTS = {
    _F.TYPE_INT32,
    _F.TYPE_INT64,
    _F.TYPE_UINT32,
    _F.TYPE_UINT64,
    _F.TYPE_SINT32,
    _F.TYPE_SINT64,
    _F.TYPE_FIXED32,
    _F.TYPE_FIXED64,
    _F.TYPE_SFIXED32,
    _F.TYPE_SFIXED64,
}
_FLOATS = {_F.TYPE_DOUBLE, _F.TYPE_FLOAT}
WRAPPERS = {
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}
_TIMES = {"google.protobuf.Duration", "google.protobuf.Timestamp"}
_classes: dict[str, type[Message]] = {}
_fields: dict[str, dict[str, Any]] = {}  # a message's fields by name and JSON name


class ParseError(ValueError):
    pass


def parse(entry: Mapping[str, Any], message: Message) -> Message:
    """``entry`` set into ``message`` (which it returns)."""
    _message(message, entry)
    return message


def _by_name(desc: Any) -> dict[str, Any]:
    found = _fields.get(desc.full_name)
    if found is None:
        found = dict(desc.fields_by_name)
        for f in desc.fields:
            found.setdefault(f.json_name, f)
        _fields[desc.full_name] = found
    return found


def _class(type_url: str) -> type[Message]:
    name = type_url.rsplit("/", 1)[-1]
    cls = _classes.get(name)
    if cls is None:
        try:
            desc = descriptor_pool.Default().FindMessageTypeByName(name)
        except KeyError:
            raise ParseError(f"unknown type {type_url!r}") from None
        cls = _classes[name] = message_factory.GetMessageClass(desc)
    return cls


def _message(msg: Message, value: Any) -> None:
    desc: Any = msg.DESCRIPTOR
    full = desc.full_name
    if full == "google.protobuf.Any":
        _any(msg, value)
        return
    if full in _TIMES:
        if not isinstance(value, str):
            raise ParseError(f"{full}: expected a string, got {value!r}")
        msg.FromJsonString(value)  # type: ignore[attr-defined]
        return
    if full in WRAPPERS:
        field = desc.fields_by_name["value"]
        msg.value = _scalar(field, value)  # type: ignore[attr-defined]
        return
    if full == "google.protobuf.Struct":
        if not isinstance(value, Mapping):
            raise ParseError(f"Struct: expected an object, got {value!r}")
        msg.update(value)  # type: ignore[attr-defined]
        return
    if full.startswith("google.protobuf.") and full != "google.protobuf.Empty":
        json_format.ParseDict(value, msg)
        return
    if not isinstance(value, Mapping):
        raise ParseError(f"{full}: expected an object, got {value!r}")
    msg.SetInParent()
    fields = _by_name(desc)
    for key, item in value.items():
        if item is None:
            continue
        field = fields.get(key)
        if field is None:
            raise ParseError(f"{full} has no field {key!r}")
        _field(msg, field, item)


def _field(msg: Message, field: Any, value: Any) -> None:
    name = field.name
    if field.type == _F.TYPE_MESSAGE:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            if not isinstance(value, Mapping):
                raise ParseError(f"{name}: expected an object, got {value!r}")
            target = getattr(msg, name)
            key_field = entry.fields_by_name["key"]
            value_field = entry.fields_by_name["value"]
            for k, v in value.items():
                key = _scalar(key_field, k)
                if value_field.type == _F.TYPE_MESSAGE:
                    _message(target[key], v)
                else:
                    target[key] = _scalar(value_field, v)
            return
        if field.is_repeated:
            if not isinstance(value, list):
                raise ParseError(f"{name}: expected a list, got {value!r}")
            target = getattr(msg, name)
            for v in value:
                _message(target.add(), v)
            return
        _message(getattr(msg, name), value)
        return
    if field.is_repeated:
        if not isinstance(value, list):
            raise ParseError(f"{name}: expected a list, got {value!r}")
        getattr(msg, name).extend(_scalar(field, v) for v in value)
        return
    setattr(msg, name, _scalar(field, value))


def _scalar(field: Any, value: Any) -> Any:
    t = field.type
    if t == _F.TYPE_STRING:
        if not isinstance(value, str):
            raise ParseError(f"{field.name}: expected a string, got {value!r}")
        return value
    if t in _INTS:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ParseError(f"{field.name}: expected an integer, got {value!r}")
        return int(value)
    if t == _F.TYPE_BOOL:
        if not isinstance(value, bool):
            raise ParseError(f"{field.name}: expected true or false, got {value!r}")
        return value
    if t == _F.TYPE_ENUM:
        if isinstance(value, str):
            found = field.enum_type.values_by_name.get(value)
            if found is None:
                raise ParseError(f"{field.name}: no enum value {value!r}")
            return found.number
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParseError(f"{field.name}: expected an enum name, got {value!r}")
    if t in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ParseError(f"{field.name}: expected a number, got {value!r}")
        return float(value)
    if t == _F.TYPE_BYTES:
        if not isinstance(value, str):
            raise ParseError(f"{field.name}: expected base64, got {value!r}")
        return base64.b64decode(value, validate=True)
    raise ParseError(f"{field.name}: unsupported field type {t}")


def _any(msg: Message, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise ParseError(f"Any: expected an object, got {value!r}")
    msg.SetInParent()
    if not value:
        return  # an empty Any (FilterConfig{config: {}}) holds nothing
    type_url = value.get("@type")
    if not isinstance(type_url, str):
        raise ParseError("Any without @type")
    inner = _class(type_url)()
    body = {k: v for k, v in value.items() if k != "@type"}
    full = inner.DESCRIPTOR.full_name
    if full in _TIMES or full in WRAPPERS or full.startswith("google.protobuf."):
        if "value" not in body:
            raise ParseError(f"Any of {full}: expected a 'value'")
        _message(inner, body["value"])
    else:
        _message(inner, body)
    msg.type_url = type_url  # type: ignore[attr-defined]
    msg.value = inner.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
