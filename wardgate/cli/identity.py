"""``wardgate users``, ``wardgate sessions`` and ``wardgate keys``: who may sign in, their live
sessions, and API keys."""

from __future__ import annotations

import asyncio
import re
import sys
import time

import click

from wardgate.cli.base import CliError, redis_for, run_async
from wardgate.domain.doc_base import ROLE_PATTERN
from wardgate.domain.durations import parse_duration
from wardgate.domain.passwords import hash_password
from wardgate.domain.ports import ApiKeyRecord, UserRecord
from wardgate.domain.sessions import MAX_PASSWORD, MAX_USERNAME
from wardgate.domain.tokens import hash_api_key, new_api_key
from wardgate.store.redis_store import RedisApiKeyStore, RedisSessionStore, RedisUserStore

USERNAME_RE = re.compile(rf"^[A-Za-z0-9._@-]{{1,{MAX_USERNAME}}}$")
ROLE_RE = re.compile(ROLE_PATTERN)


@click.group()
def users() -> None:
    """Manage the users who sign in with a password."""


@users.command("add")
@click.argument("name")
@click.option("--role", "roles", multiple=True, help="A role; repeat for several.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
@run_async
async def users_add(
    ctx: click.Context, name: str, roles: tuple[str, ...], password_stdin: bool
) -> None:
    """Create or replace user NAME."""
    if not USERNAME_RE.fullmatch(name):
        raise CliError(f"user name {name!r}: 1-{MAX_USERNAME} of letters, digits, . _ @ -")
    bad = [r for r in roles if not ROLE_RE.fullmatch(r)]
    if bad:
        raise CliError(f"role {bad[0]!r}: 1-64 of letters, digits, . _ : -")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    if not 8 <= len(password) <= MAX_PASSWORD:
        raise CliError(f"the password must have 8 to {MAX_PASSWORD} characters")
    async with redis_for(ctx) as (redis, keys):
        store = RedisUserStore(redis=redis, keys=keys)
        existed = await store.get_user(name) is not None
        digest = await asyncio.to_thread(hash_password, password)
        await store.put_user(UserRecord(name, digest, tuple(dict.fromkeys(roles))))
        if existed:
            # New credentials or roles: end the sessions that carried the old ones.
            await RedisSessionStore(redis=redis, keys=keys).delete_user_sessions(name)
    click.echo(f"user/{name} {'configured' if existed else 'created'}")


@users.command("list")
@click.pass_context
@run_async
async def users_list(ctx: click.Context) -> None:
    """List users and their roles."""
    async with redis_for(ctx) as (redis, keys):
        rows = await RedisUserStore(redis=redis, keys=keys).list_users()
    for u in rows:
        click.echo(f"{u.name}  {','.join(u.roles) or '-'}")


@users.command("delete")
@click.argument("name")
@click.pass_context
@run_async
async def users_delete(ctx: click.Context, name: str) -> None:
    """Delete user NAME and end their sessions."""
    async with redis_for(ctx) as (redis, keys):
        if not await RedisUserStore(redis=redis, keys=keys).delete_user(name):
            raise CliError(f"user/{name} not found")
        ended = await RedisSessionStore(redis=redis, keys=keys).delete_user_sessions(name)
    click.echo(f"user/{name} deleted ({ended} sessions ended)")


@click.group()
def sessions() -> None:
    """List and revoke sessions."""


@sessions.command("list")
@click.option("--user", default=None)
@click.pass_context
@run_async
async def sessions_list(ctx: click.Context, user: str | None) -> None:
    """List live sessions (ID is a prefix of the hash of the session id)."""
    async with redis_for(ctx) as (redis, keys):
        rows = await RedisSessionStore(redis=redis, keys=keys).list_sessions(user)
    click.echo("ID                USER  CREATED              EXPIRES")
    for s in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created_at))
        expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.expires_at))
        click.echo(f"{s.id_hash[:16]}  {s.user}  {created}  {expires}")


@sessions.command("revoke")
@click.argument("session_id", required=False)
@click.option("--user", default=None, help="Revoke every session of this user.")
@click.pass_context
@run_async
async def sessions_revoke(ctx: click.Context, session_id: str | None, user: str | None) -> None:
    """Revoke one session (ID from 'sessions list') or all of a user's (--user)."""
    if (session_id is None) == (user is None):
        raise CliError("give a session ID or --user NAME (one of them)")
    async with redis_for(ctx) as (redis, keys):
        store = RedisSessionStore(redis=redis, keys=keys)
        if user is not None:
            click.echo(f"{await store.delete_user_sessions(user)} sessions of {user} revoked")
            return
        assert session_id is not None
        if not re.fullmatch(r"[0-9a-f]{8,64}", session_id):
            raise CliError("a session ID is 8 to 64 hex digits, as 'sessions list' shows")
        matches = [s for s in await store.list_sessions() if s.id_hash.startswith(session_id)]
        if not matches:
            raise CliError(f"no session {session_id}")
        if len(matches) > 1:
            raise CliError(f"{session_id} matches {len(matches)} sessions; give more digits")
        await store.delete_session(matches[0].id_hash)
        click.echo(f"session {session_id} revoked")


NAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (sent by clients as x-api-key)."""


@keys.command("create")
@click.option("--name", required=True, help="Unique name; upstreams see it as x-user-id.")
@click.option("--role", "roles", multiple=True, help="A role; repeat for several.")
@click.option("--tier", default="", help="A tier, for rate limits per tier.")
@click.option("--expires", default=None, help="Lifetime such as 30d or 12h (default: never).")
@click.pass_context
@run_async
async def keys_create(
    ctx: click.Context, name: str, roles: tuple[str, ...], tier: str, expires: str | None
) -> None:
    """Create a key and print it, once: only its hash is stored."""
    if not NAME_RE.fullmatch(name):
        raise CliError(f"key name {name!r}: 1-128 of letters, digits, . _ @ -")
    bad = [r for r in (*roles, *([tier] if tier else [])) if not ROLE_RE.fullmatch(r)]
    if bad:
        raise CliError(f"{bad[0]!r}: roles and tiers are 1-64 of letters, digits, . _ : -")
    lifetime = 0.0
    if expires is not None:
        try:
            lifetime = (
                parse_duration(expires) if expires[-1] != "d" else float(expires[:-1]) * 86400
            )
        except (ValueError, IndexError):
            raise CliError(f"--expires {expires!r}: write it like 30d, 12h or 90m") from None
        if lifetime <= 0:
            raise CliError("--expires must be more than 0")
    async with redis_for(ctx) as (redis, keys):
        store = RedisApiKeyStore(redis=redis, keys=keys)
        if await redis.hexists(keys.api_key_names, name):
            raise CliError(f"key {name} exists; revoke it first")
        key = new_api_key()
        now = time.time()
        record = ApiKeyRecord(
            name, tuple(dict.fromkeys(roles)), tier, now, now + lifetime if lifetime else 0
        )
        await store.put_key(hash_api_key(key), record)
    click.echo(key)
    click.echo(f"key/{name} created; this is the only time the key is shown", err=True)


@keys.command("list")
@click.pass_context
@run_async
async def keys_list(ctx: click.Context) -> None:
    """List keys: name, roles, tier, expiry (never the keys)."""
    async with redis_for(ctx) as (redis, keys):
        rows = await RedisApiKeyStore(redis=redis, keys=keys).list_keys()
    for k in rows:
        expires = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(k.expires_at))
            if k.expires_at
            else "never"
        )
        click.echo(
            f"{k.name}  roles={','.join(k.roles) or '-'}  tier={k.tier or '-'}  expires={expires}"
        )


@keys.command("revoke")
@click.argument("name")
@click.pass_context
@run_async
async def keys_revoke(ctx: click.Context, name: str) -> None:
    """Revoke key NAME; effective on the next request."""
    async with redis_for(ctx) as (redis, keys):
        if not await RedisApiKeyStore(redis=redis, keys=keys).delete_key(name):
            raise CliError(f"key/{name} not found")
    click.echo(f"key/{name} revoked")
