"""The ``wardgate`` command (console script ``wardgate = "wardgate.cli:main"``, and
``python -m wardgate``).

``base`` holds the group and what every command shares; each area has its own module:
``documents`` (apply, validate, get, delete, history, rollback, status), ``identity`` (users,
sessions, keys), ``registry`` (register), ``bans``, ``descriptors``, ``stats`` (usage, top)
and ``stack`` (up, serve, bootstrap). This module only adds their commands to the group.
Every command exits non-zero with a one-line reason on bad input or when Redis cannot be
reached.
"""

from __future__ import annotations

from wardgate.cli.bans import bans
from wardgate.cli.base import cli, main
from wardgate.cli.cache import cache
from wardgate.cli.descriptors import descriptors
from wardgate.cli.documents import apply, delete, get, history, rollback, status, validate
from wardgate.cli.identity import keys, sessions, users
from wardgate.cli.registry import register
from wardgate.cli.secrets import secrets
from wardgate.cli.stack import bootstrap, seed_demo, serve, up
from wardgate.cli.stats import top, usage

__all__ = ["cli", "main"]

for _command in (
    apply,
    validate,
    get,
    delete,
    history,
    rollback,
    status,
    bootstrap,
    serve,
    register,
    keys,
    users,
    sessions,
    up,
    bans,
    descriptors,
    usage,
    top,
    cache,
    seed_demo,
    secrets,
):
    cli.add_command(_command)
