"""The JSON error body every reply the gateway makes itself carries."""

from __future__ import annotations

import json


def error_body(code: str, message: str, request_id: str) -> str:
    return json.dumps({"error": code, "message": message, "request_id": request_id})
