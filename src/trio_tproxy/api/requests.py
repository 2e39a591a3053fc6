"""Small pieces every handler uses: mihomo's stock answers, body and query parsing."""

from __future__ import annotations

import json
from typing import Any

from .http import Reply, message

NOT_FOUND = message(404, "Resource not found")
BAD_REQUEST = message(400, "Body invalid")
NO_CONTENT = Reply(204)


def json_object(body: bytes) -> dict[str, Any] | None:
    """A request body that must be a JSON object (an empty body is ``{}``)."""
    try:
        parsed = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def positive_int(text: str, limit: int) -> int | None:
    """A query number in 1..limit (mihomo's ``timeout`` and ``interval``, milliseconds)."""
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value <= limit else None
