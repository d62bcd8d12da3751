"""The one place where Redis's exceptions become wardgate's ``StoreError``.

Every store method runs its Redis commands inside ``redis_errors()``, as httpx maps its
transport's exceptions in one context manager: callers above the store see only
``StoreError`` (``wardgate.errors``), whatever the client library raised. A connection that
times out or is refused, a command Redis rejects, and an answer that cannot be decoded all
mean the same thing to the domain: the store could not answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import RedisClusterException, RedisError

from wardgate.errors import StoreError

# What a Redis round trip can raise: the client's own errors, the socket failing under it, and
# a stored value that is not UTF-8 where text is expected (documents are read as bytes and
# refused one by one instead: ``store.documents.decode_documents``). A cluster client raises
# RedisClusterException, which is no RedisError, when it reaches no node at all.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    UnicodeError,
)


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Run Redis commands; any failure of the store leaves as ``StoreError``."""
    try:
        yield
    except TRANSPORT_ERRORS as exc:
        raise StoreError(f"redis: {exc}") from exc
