"""The Descriptor document: a compiled gRPC API (a ``FileDescriptorSet``) that routes with
``transcode`` expose over REST/JSON (``domain/grpc_api.py``, docs/TRANSCODING.md).

Stored like every document, as JSON, the set base64-encoded: ``wardgate descriptors put``
writes it from a ``.pb`` file or a ``.proto`` it compiles; a raw ``HSET`` works too.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from wardgate.domain.doc_base import Name, _Doc
from wardgate.domain.grpc_api import (
    MAX_DESCRIPTOR_BYTES,
    GrpcApi,
    check_ahead,
    parse_descriptor_set,
)


class Descriptor(_Doc):
    """A compiled gRPC API, for gRPC-JSON transcoding."""

    kind: Literal["Descriptor"] = Field(
        default="Descriptor", description="Document kind: Descriptor."
    )
    name: Name = Field(
        description=(
            "Unique descriptor name (same rules as a route name); routes name it in "
            "transcode.descriptor."
        )
    )
    descriptor_set: str = Field(
        max_length=(MAX_DESCRIPTOR_BYTES * 4) // 3 + 4,
        description=(
            "A FileDescriptorSet (protoc --include_imports --descriptor_set_out), base64 "
            "(standard alphabet, padded), at most 4 MiB decoded; it must define at least one "
            "service, and every type it uses."
        ),
    )
    _api: GrpcApi | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _parses(self) -> Descriptor:
        try:
            data = base64.b64decode(self.descriptor_set, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("descriptor_set is not base64") from None
        try:
            self._api = parse_descriptor_set(data)
        except ValueError as exc:
            raise ValueError(f"descriptor_set: {exc}") from None
        return self

    @property
    def api(self) -> GrpcApi:
        assert self._api is not None  # set by validation
        return self._api

    @property
    def size(self) -> int:
        """The set's size in bytes."""
        return len(self.descriptor_set) * 3 // 4 - self.descriptor_set[-2:].count("=")


def check_stored_ahead(texts: Iterable[str]) -> None:
    """``check_ahead`` for stored Descriptor documents (their JSON text): whatever does not
    decode is left for the parse to refuse."""
    for text in texts:
        try:
            encoded = json.loads(text).get("descriptor_set")
            if isinstance(encoded, str) and len(encoded) <= (MAX_DESCRIPTOR_BYTES * 4) // 3 + 4:
                check_ahead(base64.b64decode(encoded, validate=True))
        except (ValueError, AttributeError, binascii.Error):
            continue
