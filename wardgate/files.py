"""Reading files that documents name (an Issuer's ``jwks_file``), safely.

A document can name any path, and wardgate runs with the service's rights, so a path must
never be able to stall or exhaust the service: only regular files are read (a FIFO would block
the reader forever, ``/dev/zero`` would never end), at most ``limit`` bytes, opened without
waiting for a writer. Callers run it in a thread, off the event loop.
"""

from __future__ import annotations

import os
import stat

MAX_FILE_BYTES = 1 << 20  # 1 MiB: a key set is a few KiB


def read_bounded_file(path: str, *, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``; ``ValueError``/``OSError`` saying why
    not (not a regular file, larger than ``limit`` bytes, not UTF-8, unreadable)."""
    # Looked at before it is opened: opening some devices already does something.
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError("not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > limit:
            raise ValueError(f"larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ValueError(f"larger than {limit} bytes")
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text: {exc}") from None
