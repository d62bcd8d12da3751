"""Envoy's JSON form straight to protobuf bytes, remembering the parts that repeat.

``fastpb`` sets a route's ~40 messages field by field on upb messages and serializes them:
most of a cold build of 100,000 routes, although nearly all of those messages are the same
from one route to the next (the guard's buckets and headers, the retry policy, whole
per-route filter configurations). ``encode`` writes the wire format from the dict itself,
field by field in field-number order as upb's deterministic serialization does (map entries
sorted by key, both key and value written; proto3 defaults left out unless the field has
presence; numbers packed), and remembers each message it wrote, per field, by the ``repr``
of its dict: a repeated one costs a ``repr`` and a lookup. The bytes are those of
``fastpb.parse`` and ``SerializeToString(deterministic=True)`` (``tests/unit/test_fastpb.py``
holds every configuration wardgate writes to that).

Only JSON values are taken: a message is a ``dict``, a repeated field a ``list``, leaves are
str, int, float, bool or None. So a ``repr`` says everything about the content, and a value
remembered was written in full once. A field whose messages rarely repeat (a route's name
and rule) stops remembering after a while; each field keeps at most ``MEMO_SIZE``.
Well-known types other than ``Duration``, ``Timestamp``, the wrappers and ``Any`` are
written by ``fastpb`` (``Struct`` and the like), remembered the same way.
"""

from __future__ import annotations

import base64
import copy
import struct
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from wardgate.xds import fastpb
from wardgate.xds.fastpb import ParseError

_F = FieldDescriptor
MEMO_SIZE = 2048  # messages remembered per field, at most
_JUDGE_EVERY = 1024  # a field's memo is judged after this many misses...
_MIN_HIT_RATE = 0.2  # ...and dropped when fewer of its lookups found something
_MAX_KEY = 8192  # a message whose repr is longer than this is not remembered
_ANY = "google.protobuf.Any"
_TIMES = {"google.protobuf.Duration", "google.protobuf.Timestamp"}

Encoder = Callable[[Any], bytes]  # a value -> a message's payload
Scalar = Callable[[Any, Any], tuple[bytes, bool]]  # (field, value) -> (bytes, is it the default)
Check = Callable[[Any, Any], int]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _length(payload: bytes) -> bytes:
    n = len(payload)
    return _SMALL[n] if n < 0x80 else _varint(n)


# --- parts shared by many configurations -----------------------------------------------------


def _read_only(*args: Any, **kwargs: Any) -> Any:
    raise TypeError("a part shared by many configurations is read-only (copy it to change it)")


class _SharedDict(dict[str, Any]):
    """A message shared by many configurations (``shared``): read-only, written once per field."""

    __slots__ = ("written",)
    written: dict[Any, bytes]

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v, memo) for k, v in self.items()}


class _SharedList(list[Any]):
    """A repeated field's values shared by many configurations (``shared``)."""

    __slots__ = ("written",)
    written: dict[Any, bytes]

    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = _read_only
    sort = reverse = __iadd__ = __imul__ = _read_only

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.deepcopy(v, memo) for v in self]


def shared(value: Any) -> Any:
    """``value`` (JSON: dicts, lists, scalars) as a read-only part that many configurations
    hold: equal to it, and written to bytes once per field it appears in, not once per
    configuration. Build it once (``functools.cache``) and put it in every configuration."""
    if isinstance(value, dict):
        out: Any = _SharedDict({k: shared(v) for k, v in value.items()})
    elif isinstance(value, list):
        out = _SharedList(shared(v) for v in value)
    else:
        return value
    out.written = {}
    return out


# --- scalars: a value -> its payload (varint, fixed or length-delimited), checked -----------


def _bad(field: Any, expected: str, value: Any) -> ParseError:
    return ParseError(f"{field.name}: expected {expected}, got {value!r}")


def _int_value(field: Any, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _bad(field, "an integer", value)
    return int(value)


def _ranged(low: int, high: int) -> Check:
    def check(field: Any, value: Any) -> int:
        n = _int_value(field, value)
        if not low <= n <= high:
            raise ParseError(f"{field.name}: {n} is out of range")
        return n

    return check


_I32 = _ranged(-(2**31), 2**31 - 1)
_I64 = _ranged(-(2**63), 2**63 - 1)
_U32 = _ranged(0, 2**32 - 1)
_U64 = _ranged(0, 2**64 - 1)
_MASK64 = 2**64 - 1


def _varint_of(check: Check) -> Scalar:
    def enc(field: Any, value: Any) -> tuple[bytes, bool]:
        n = check(field, value)
        return _varint(n & _MASK64), n == 0

    return enc


def _zigzag(bits: int, check: Check) -> Scalar:
    def enc(field: Any, value: Any) -> tuple[bytes, bool]:
        n = check(field, value)
        return _varint((n << 1) ^ (n >> (bits - 1))), n == 0

    return enc


def _fixed(fmt: str, check: Check) -> Scalar:
    def enc(field: Any, value: Any) -> tuple[bytes, bool]:
        n = check(field, value)
        return struct.pack(fmt, n), n == 0

    return enc


def _float(fmt: str) -> Scalar:
    def enc(field: Any, value: Any) -> tuple[bytes, bool]:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _bad(field, "a number", value)
        x = float(value)
        try:
            data = struct.pack(fmt, x)
        except OverflowError:  # a double too large for a float: upb stores infinity
            data = struct.pack(fmt, x * float("inf"))
        return data, data == bytes(len(data))  # -0.0 is not the default

    return enc


def _bool(field: Any, value: Any) -> tuple[bytes, bool]:
    if not isinstance(value, bool):
        raise _bad(field, "true or false", value)
    return (b"\x01", False) if value else (b"\x00", True)


def _enum(field: Any, value: Any) -> tuple[bytes, bool]:
    if isinstance(value, str):
        found = field.enum_type.values_by_name.get(value)
        if found is None:
            raise ParseError(f"{field.name}: no enum value {value!r}")
        n = found.number
    elif isinstance(value, int) and not isinstance(value, bool):
        n = _I32(field, value)
    else:
        raise _bad(field, "an enum name", value)
    return _varint(n & _MASK64), n == 0


def _string(field: Any, value: Any) -> tuple[bytes, bool]:
    if not isinstance(value, str):
        raise _bad(field, "a string", value)
    data = value.encode()
    return _length(data) + data, not data


def _bytes(field: Any, value: Any) -> tuple[bytes, bool]:
    if not isinstance(value, str):
        raise _bad(field, "base64", value)
    data = base64.b64decode(value, validate=True)
    return _length(data) + data, not data


# type -> (encoder, wire type); length-delimited encoders include the length.
_SCALARS: dict[int, tuple[Scalar, int]] = {
    _F.TYPE_INT32: (_varint_of(_I32), 0),
    _F.TYPE_INT64: (_varint_of(_I64), 0),
    _F.TYPE_UINT32: (_varint_of(_U32), 0),
    _F.TYPE_UINT64: (_varint_of(_U64), 0),
    _F.TYPE_SINT32: (_zigzag(32, _I32), 0),
    _F.TYPE_SINT64: (_zigzag(64, _I64), 0),
    _F.TYPE_FIXED32: (_fixed("<I", _U32), 5),
    _F.TYPE_FIXED64: (_fixed("<Q", _U64), 1),
    _F.TYPE_SFIXED32: (_fixed("<i", _I32), 5),
    _F.TYPE_SFIXED64: (_fixed("<q", _I64), 1),
    _F.TYPE_DOUBLE: (_float("<d"), 1),
    _F.TYPE_FLOAT: (_float("<f"), 5),
    _F.TYPE_BOOL: (_bool, 0),
    _F.TYPE_ENUM: (_enum, 0),
    _F.TYPE_STRING: (_string, 2),
    _F.TYPE_BYTES: (_bytes, 2),
}


# --- messages ---------------------------------------------------------------------------------


class _Memo:
    """A field's messages by the ``repr`` of their dict, while it pays."""

    __slots__ = ("found", "hits", "misses", "on")

    def __init__(self) -> None:
        self.found: dict[str, bytes] = {}
        self.hits = 0
        self.misses = 0
        self.on = True

    def miss(self, key: str, payload: bytes) -> None:
        self.misses += 1
        if self.misses % _JUDGE_EVERY == 0 and self.hits < _MIN_HIT_RATE * (
            self.hits + self.misses
        ):
            self.on = False
            self.found = {}
            return
        if len(self.found) >= MEMO_SIZE:
            self.found = {}
        if len(key) <= _MAX_KEY:
            self.found[key] = payload


class _Field:
    """How to write one field of a message: its number, and its value's bytes (tag
    included; empty for a proto3 default)."""

    __slots__ = ("descriptor", "memo", "number", "oneof", "payload", "write")

    def __init__(self, descriptor: Any) -> None:
        self.descriptor = descriptor
        self.number: int = descriptor.number
        oneof = descriptor.containing_oneof
        self.oneof: str | None = oneof.name if oneof is not None else None
        self.memo = _Memo()
        self.payload: Encoder | None = None  # a message field's type, once looked up
        self.write: Callable[[_Field, Any], bytes] = _writer(descriptor)

    def message(self, value: Any) -> bytes:
        """A message value's payload, remembered."""
        if type(value) is _SharedDict:
            found = value.written.get(self)
            if found is None:
                found = value.written[self] = (self.payload or self._payload())(value)
            return found
        memo = self.memo
        if memo.on:
            key = repr(value)
            found = memo.found.get(key)
            if found is not None:
                memo.hits += 1
                return found
            payload = (self.payload or self._payload())(value)
            memo.miss(key, payload)
            return payload
        return (self.payload or self._payload())(value)

    def _payload(self) -> Encoder:
        kind = self.descriptor.message_type
        if kind.GetOptions().map_entry:  # a map's values
            kind = kind.fields_by_name["value"].message_type
        enc = self.payload = _encoder(kind)
        return enc


def _writer(field: Any) -> Callable[[_Field, Any], bytes]:
    number = field.number
    if field.type == _F.TYPE_MESSAGE:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            return _map_writer(field, entry)
        tag = _tag(number, 2)
        if field.is_repeated:

            def repeated_messages(f: _Field, value: Any) -> bytes:
                if type(value) is _SharedList:
                    found = value.written.get(f)
                    if found is None:
                        found = value.written[f] = _messages(f, value)
                    return found
                if type(value) is not list:
                    raise _bad(field, "a list", value)
                return _messages(f, value)

            def _messages(f: _Field, value: list[Any]) -> bytes:
                out = []
                for item in value:
                    payload = f.message(item)
                    n = len(payload)
                    out.append(tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload)
                return b"".join(out)

            return repeated_messages

        def message(f: _Field, value: Any) -> bytes:
            payload = f.message(value)
            n = len(payload)
            return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload

        return message
    if field.type not in _SCALARS:

        def unsupported(f: _Field, value: Any) -> bytes:
            raise ParseError(f"{field.name}: unsupported field type {field.type}")

        return unsupported
    scalar, wire = _SCALARS[field.type]
    if field.is_repeated:
        if field.is_packed:
            packed_tag = _tag(number, 2)

            def packed(f: _Field, value: Any) -> bytes:
                if not isinstance(value, list):
                    raise _bad(field, "a list", value)
                if not value:
                    return b""
                payload = b"".join(scalar(field, v)[0] for v in value)
                return packed_tag + _length(payload) + payload

            return packed
        each_tag = _tag(number, wire)

        def repeated(f: _Field, value: Any) -> bytes:
            if not isinstance(value, list):
                raise _bad(field, "a list", value)
            return b"".join(each_tag + scalar(field, v)[0] for v in value)

        return repeated
    tag = _tag(number, wire)
    if field.type == _F.TYPE_STRING:
        return _string_writer(field, tag)
    if field.has_presence:

        def present(f: _Field, value: Any) -> bytes:
            return tag + scalar(field, value)[0]

        return present

    def implicit(f: _Field, value: Any) -> bytes:
        data, default = scalar(field, value)
        return b"" if default else tag + data

    return implicit


def _string_writer(field: Any, tag: bytes) -> Callable[[_Field, Any], bytes]:
    """A singular string field's writer (the commonest field, so written out)."""
    present = field.has_presence

    def string(f: _Field, value: Any) -> bytes:
        if not isinstance(value, str):
            raise _bad(field, "a string", value)
        if not value and not present:
            return b""
        data = value.encode()
        n = len(data)
        return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + data

    return string


def _map_writer(field: Any, entry: Any) -> Callable[[_Field, Any], bytes]:
    tag = _tag(field.number, 2)
    key_field = entry.fields_by_name["key"]
    value_field = entry.fields_by_name["value"]
    key_scalar, key_wire = _SCALARS[key_field.type]
    key_tag = _tag(1, key_wire)
    value_tag = _tag(2, 2 if value_field.type == _F.TYPE_MESSAGE else _SCALARS[value_field.type][1])
    value_scalar = None if value_field.type == _F.TYPE_MESSAGE else _SCALARS[value_field.type][0]
    strings = key_field.type == _F.TYPE_STRING

    def write(f: _Field, value: Any) -> bytes:
        if type(value) is _SharedDict:
            found = value.written.get(f)
            if found is None:
                found = value.written[f] = entries(f, value)
            return found
        if type(value) is not dict:
            raise _bad(field, "an object", value)
        return entries(f, value)

    def entries(f: _Field, value: dict[Any, Any]) -> bytes:
        items = []
        for k, v in value.items():
            key_data = key_tag + key_scalar(key_field, k)[0]
            if value_scalar is None:
                payload = f.message(v)
                value_data = value_tag + _length(payload) + payload
            else:
                value_data = value_tag + value_scalar(value_field, v)[0]
            body = key_data + value_data
            items.append((k.encode() + b"\xff" if strings else int(k) & _MASK64, body))
        # upb's order: strings by their bytes, but a key after the keys it is a prefix of
        # (0xff is in no UTF-8 string); numbers and bools from the largest down (as unsigned).
        items.sort(key=lambda kv: kv[0], reverse=not strings)
        return b"".join(tag + _length(body) + body for _, body in items)

    return write


_Spec = tuple[int, Callable[[_Field, Any], bytes], _Field, "str | None"]


class _Message:
    """How to write one message type from its dict."""

    __slots__ = ("aliases", "fields", "full_name", "plans", "specs")

    def __init__(self, desc: Descriptor) -> None:
        self.full_name = desc.full_name
        self.fields: dict[str, _Field] = {f.name: _Field(f) for f in desc.fields}
        # by name: (number, writer, field, oneof), what the loop below needs at hand
        self.specs: dict[str, _Spec] = {
            name: (f.number, f.write, f, f.oneof) for name, f in self.fields.items()
        }
        self.aliases: dict[str, _Spec] = {
            f.json_name: self.specs[f.name] for f in desc.fields if f.json_name != f.name
        }
        # Per sequence of keys (most dicts of a type come with the same ones): the fields in
        # number order, or None where two keys might name one field or two of a oneof.
        self.plans: dict[tuple[str, ...], list[tuple[str, Any, _Field]] | None] = {}

    def __call__(self, value: Any) -> bytes:
        if not isinstance(value, dict):
            raise ParseError(f"{self.full_name}: expected an object, got {value!r}")
        keys = tuple(value)
        try:
            plan = self.plans[keys]
        except KeyError:
            plan = self._plan(keys)
        if plan is None:
            return self._checked(value)
        out = []
        for key, write, f in plan:
            item = value[key]
            if item is not None:
                out.append(write(f, item))
        return b"".join(out)

    def _plan(self, keys: tuple[str, ...]) -> list[tuple[str, Any, _Field]] | None:
        specs = []
        for key in keys:
            spec = self.specs.get(key) or self.aliases.get(key)
            if spec is None:
                raise ParseError(f"{self.full_name} has no field {key!r}")
            specs.append((key, spec))
        oneofs = [spec[3] for _, spec in specs if spec[3] is not None]
        numbers = [spec[0] for _, spec in specs]
        plan = None
        if len(set(oneofs)) == len(oneofs) and len(set(numbers)) == len(numbers):
            ordered = sorted(specs, key=lambda ks: ks[1][0])
            plan = [(key, spec[1], spec[2]) for key, spec in ordered]
        if len(self.plans) >= 256:
            self.plans.clear()
        self.plans[keys] = plan
        return plan

    def _checked(self, value: dict[str, Any]) -> bytes:
        """``value`` written with its keys checked one by one (two keys might clash)."""
        parts: list[tuple[int, bytes]] = []
        oneofs: list[str] | None = None
        aliased = False
        specs = self.specs
        for key, item in value.items():
            if item is None:
                continue
            spec = specs.get(key)
            if spec is None:
                spec = self.aliases.get(key)
                if spec is None:
                    raise ParseError(f"{self.full_name} has no field {key!r}")
                aliased = True  # the same field may come under both its names
            number, write, f, oneof = spec
            if oneof is not None:
                if oneofs is None:
                    oneofs = [oneof]
                elif oneof in oneofs:
                    raise ParseError(f"{self.full_name}: more than one of {oneof!r}")
                else:
                    oneofs.append(oneof)
            parts.append((number, write(f, item)))
        if aliased and len({n for n, _ in parts}) < len(parts):
            raise ParseError(f"{self.full_name}: a field given twice")
        parts.sort()
        return b"".join([data for _, data in parts])


_encoders: dict[str, Encoder] = {}
_classes: dict[str, Any] = {}


def _encoder(desc: Descriptor) -> Encoder:
    """The payload writer for a message type (well-known types included)."""
    found = _encoders.get(desc.full_name)
    if found is not None:
        return found
    full = desc.full_name
    enc: Encoder
    if full == _ANY:
        enc = _any
    elif full in _TIMES:
        enc = _time_writer(desc)
    elif full in fastpb.WRAPPERS:
        enc = _wrapper_writer(desc)
    elif full.startswith("google.protobuf.") and full != "google.protobuf.Empty":
        enc = _fallback_writer(desc)
    else:
        enc = _Message(desc)
    _encoders[full] = enc
    return enc


def _wrapper_writer(desc: Descriptor) -> Encoder:
    field = desc.fields_by_name["value"]
    scalar, wire = _SCALARS[field.type]
    tag = _tag(1, wire)

    def write(value: Any) -> bytes:
        data, default = scalar(field, value)
        return b"" if default else tag + data

    return write


def _time_writer(desc: Descriptor) -> Encoder:
    cls = message_factory.GetMessageClass(desc)
    seen: dict[str, bytes] = {}

    def write(value: Any) -> bytes:
        found = seen.get(value) if isinstance(value, str) else None
        if found is None:
            if not isinstance(value, str):
                raise ParseError(f"{desc.full_name}: expected a string, got {value!r}")
            msg = cls()
            msg.FromJsonString(value)  # type: ignore[attr-defined]
            found = msg.SerializeToString(deterministic=True)
            if len(seen) >= MEMO_SIZE:
                seen.clear()
            seen[value] = found
        return found

    return write


def _fallback_writer(desc: Descriptor) -> Encoder:
    cls = message_factory.GetMessageClass(desc)

    def write(value: Any) -> bytes:
        msg = cls()
        fastpb.parse(value, msg)
        return msg.SerializeToString(deterministic=True)

    return write


def _any(value: Any) -> bytes:
    if not isinstance(value, dict):
        raise ParseError(f"Any: expected an object, got {value!r}")
    if not value:
        return b""  # an empty Any (FilterConfig{config: {}}) holds nothing
    type_url = value.get("@type")
    if not isinstance(type_url, str):
        raise ParseError("Any without @type")
    desc = _message_type(type_url)
    body = {k: v for k, v in value.items() if k != "@type"}
    if desc.full_name.startswith("google.protobuf."):
        if "value" not in body:
            raise ParseError(f"Any of {desc.full_name}: expected a 'value'")
        inner = _encoder(desc)(body["value"])
    else:
        inner = _encoder(desc)(body)
    url = type_url.encode()
    out = b"\x0a" + _length(url) + url
    if inner:
        out += b"\x12" + _length(inner) + inner
    return out


def _message_type(type_url: str) -> Descriptor:
    name = type_url.rsplit("/", 1)[-1]
    found = _classes.get(name)
    if found is None:
        try:
            found = _classes[name] = descriptor_pool.Default().FindMessageTypeByName(name)
        except KeyError:
            raise ParseError(f"unknown type {type_url!r}") from None
    return found


def encode(entry: dict[str, Any], desc: Any) -> bytes:
    """``entry`` (Envoy's JSON form of a ``desc`` message) serialized: the bytes of
    ``fastpb.parse`` into a new message, serialized deterministically."""
    return _encoder(desc)(entry)


def forget() -> None:
    """Drop every remembered message (and each field's judgement of its memo)."""
    for enc in _encoders.values():
        if isinstance(enc, _Message):
            for f in enc.fields.values():
                f.memo = _Memo()
