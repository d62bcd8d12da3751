"""The published JSON Schema (docs/schema/) is what the models say, header patterns included."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from wardgate.domain.doc_base import HEADER_VALUE_PATTERN, TOKEN_PATTERN

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("schema_generate", SCHEMA_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _published(file_name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMA_DIR / file_name).read_text())
    return data


def test_the_published_schemas_are_up_to_date() -> None:
    """Run ``python docs/schema/generate.py`` when this fails."""
    gen = _generator()
    for model, file_name in gen.MODELS:
        assert _published(file_name) == gen.schema_of(model, file_name), file_name


def test_the_route_schema_carries_the_header_patterns() -> None:
    defs = _published("route.schema.json")["$defs"]
    cors = defs["Cors"]["properties"]
    for field in ("allow_headers", "expose_headers", "allow_methods"):
        assert cors[field]["anyOf"][0]["items"]["pattern"] == TOKEN_PATTERN
    headers = defs["Match"]["properties"]["headers"]["anyOf"][0]
    assert headers["propertyNames"] == {"pattern": TOKEN_PATTERN}
    assert headers["additionalProperties"]["pattern"] == HEADER_VALUE_PATTERN
