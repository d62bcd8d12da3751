"""``wardgate apply``, ``validate``, ``get``, ``delete``, ``history``, ``rollback`` and
``status``: the documents in Redis, and reading document files (``read_documents``, which
``wardgate up`` also uses to load the demo documents)."""

from __future__ import annotations

import difflib
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import click
import yaml

from wardgate.cli.base import CliError, redis_for, run_async
from wardgate.domain.catalog import Change, parse_stored, plan_apply, plan_delete, plan_restore
from wardgate.domain.doc_base import printable
from wardgate.domain.doc_secret import pem_text
from wardgate.domain.documents import Document, Secret, parse_document
from wardgate.domain.tls_material import only_certificates
from wardgate.errors import DocumentError
from wardgate.store.documents import RedisDocumentStore
from wardgate.store.status import RedisStatusStore

KIND_NAMES = {
    "route": "Route",
    "routes": "Route",
    "service": "Service",
    "services": "Service",
    "issuer": "Issuer",
    "issuers": "Issuer",
    "descriptor": "Descriptor",
    "descriptors": "Descriptor",
    "secret": "Secret",
    "secrets": "Secret",
}


class NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases (``*name``): a few lines of nested aliases expand into billions
    of nodes once the document is written out as JSON."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


def read_documents(paths: tuple[str, ...]) -> list[Document]:
    """Every document in the files (YAML or JSON, multi-document) or directories given."""
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files += sorted(
                f for f in path.iterdir() if f.suffix in (".yaml", ".yml", ".json") and f.is_file()
            )
        elif path.is_file():
            files.append(path)
        else:
            raise CliError(f"{p}: no such file or directory")
    docs: list[Document] = []
    errors: list[str] = []
    for f in files:
        try:
            loaded = [d for d in yaml.load_all(f.read_text(), NoAliasLoader) if d is not None]
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"{f}: cannot read: {exc}") from None
        except RecursionError:
            raise CliError(f"{f}: not valid YAML: nested too deeply") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise CliError(f"{f}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        for i, raw in enumerate(loaded, 1):
            try:
                docs.append(parse_document(raw))
            except DocumentError as exc:
                errors.append(f"{f} (document {i}): {exc}")
    if errors:
        raise CliError("\n".join(errors))
    if not docs:
        raise CliError("no documents found in " + ", ".join(paths))
    return docs


def _as_yaml(text: str | None, kind: str) -> list[str]:
    if text is None:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        if kind == "Secret":  # whatever it is, it may hold a key
            return [_digest(text) + "\n"]
        return text.splitlines(keepends=True)
    return yaml.safe_dump(redacted(data, kind), sort_keys=True).splitlines(keepends=True)


def _redacted_text(text: str, kind: str) -> str:
    """The JSON text of a stored document as the CLI may print it (``redacted``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _digest(text) if kind == "Secret" else text
    return json.dumps(redacted(data, kind))


def _digest(value: str) -> str:
    return f"(redacted, sha256 {hashlib.sha256(value.encode()).hexdigest()[:12]})"


def redacted(doc: Any, kind: str) -> Any:
    """A document of ``kind`` as the CLI may print it. Of a Secret only the kind, the name and
    a certificate that holds certificates alone are shown; anything else it holds (its key, a
    field a raw write added, a value that is not a mapping) is replaced by a digest, so a change
    still shows and a key never does. The kind comes from where the document is stored, never
    from its text: a raw ``HSET`` may leave ``kind`` out (parsing fills it in)."""
    if kind != "Secret" and not (isinstance(doc, dict) and doc.get("kind") == "Secret"):
        return doc
    if not isinstance(doc, dict):
        return _digest(json.dumps(doc, sort_keys=True))
    return {
        key: value if _shown_in_secret(key, value) else _digest(json.dumps(value, sort_keys=True))
        for key, value in doc.items()
    }


def _shown_in_secret(key: Any, value: Any) -> bool:
    if key in ("kind", "name"):
        return isinstance(value, str)
    if key == "certificate" and isinstance(value, str):
        try:
            return only_certificates(pem_text(value, "certificate"))
        except ValueError:
            return False
    return False


def print_changes(changes: list[Change], *, dry_run: bool, revision: int | None = None) -> None:
    suffix = " (dry run)" if dry_run else ""
    for c in changes:
        click.echo(f"{c}{suffix}")
        if dry_run and c.action != "unchanged":
            where = f"{c.kind.lower()}/{c.name}"
            diff = difflib.unified_diff(
                _as_yaml(c.before, c.kind),
                _as_yaml(c.value, c.kind),
                f"{where} (now)",
                f"{where} (after)",
            )
            for line in diff:
                click.echo("    " + line.rstrip("\n"))
    if revision is not None and any(c.action != "unchanged" for c in changes):
        click.echo(f"revision {revision}")


@click.command()
@click.option("-f", "--filename", "paths", multiple=True, required=True, help="File or directory.")
@click.option("--dry-run", is_flag=True, help="Validate and show what would change; write nothing.")
@click.pass_context
@run_async
async def apply(ctx: click.Context, paths: tuple[str, ...], dry_run: bool) -> None:
    """Validate every document, then apply all of them or none."""
    await store_documents(ctx, read_documents(paths), dry_run=dry_run)


async def store_documents(ctx: click.Context, docs: list[Document], *, dry_run: bool) -> None:
    """Apply ``docs`` in one commit (or, with ``dry_run``, show what that would change), and
    print the changes: ``apply``, ``descriptors put``, ``secrets put``."""
    async with redis_for(ctx) as (redis, keys):
        store = RedisDocumentStore(redis=redis, keys=keys)
        if dry_run:
            print_changes(plan_apply(await store.load(), docs), dry_run=True)
            return
        revision, changes = await store.commit(lambda current: plan_apply(current, docs))
    print_changes(changes, dry_run=False, revision=revision)


async def delete_document(ctx: click.Context, kind: str, name: str) -> None:
    """Delete one document in one commit (refused while others use it) and print it."""
    async with redis_for(ctx) as (redis, keys):
        store = RedisDocumentStore(redis=redis, keys=keys)
        revision, changes = await store.commit(lambda current: [plan_delete(current, kind, name)])
    print_changes(changes, dry_run=False, revision=revision)


@click.command()
@click.option("-f", "--filename", "paths", multiple=True, required=True, help="File or directory.")
def validate(paths: tuple[str, ...]) -> None:
    """Check documents against the schema without touching Redis."""
    docs = read_documents(paths)
    for d in docs:
        click.echo(f"{d.kind.lower()}/{d.name} valid")


def _kind(word: str) -> str:
    kind = KIND_NAMES.get(word.lower())
    if kind is None:
        raise CliError(
            f"unknown kind {word!r}: use routes, services, issuers, descriptors or secrets"
        )
    return kind


def _shown(kind: str, name: str, text: str) -> dict[str, Any]:
    """A stored document as it is shown: as stored when valid; otherwise its kind, name,
    why it is refused and its text (bytes that are not UTF-8 as ``\\x`` escapes)."""
    try:
        parsed = parse_stored(kind, name, text)
        shown: dict[str, Any] = redacted(json.loads(text), kind)
        if isinstance(parsed, Secret):  # what the certificate says, for the table
            shown["subject"] = parsed.info.subject
            shown["not_after"] = parsed.info.not_after.isoformat()
        return shown
    except DocumentError as exc:
        readable = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        if kind == "Secret":  # it may hold a key, however broken
            readable = "(not shown: a Secret)"
        return {"kind": kind, "name": name, "refused": exc.reason, "stored": readable}


_HEADERS = {
    "Route": ["NAME", "MATCH", "BACKEND", "AUTH"],
    "Service": ["NAME", "PROTOCOL", "ENDPOINTS"],
    "Issuer": ["NAME", "ISSUER", "AUDIENCES", "KEYS"],
    "Descriptor": ["NAME", "SIZE"],
    "Secret": ["NAME", "SUBJECT", "NOT AFTER"],
}


def _summary(kind: str, doc: dict[str, Any]) -> list[str]:
    if "refused" in doc:
        return [doc["name"], f"(refused: {doc['refused']})"] + [""] * (len(_HEADERS[kind]) - 2)
    if kind == "Route":
        m = doc.get("match", {})
        where = m.get("prefix") or m.get("path") or f"~{m.get('regex')}"
        methods = ",".join(m.get("methods", [])) or "*"
        backend = doc.get("backend") or ",".join(
            f"{b['service']}:{b['weight']}" for b in doc.get("backends", [])
        )
        return [
            doc["name"],
            f"{methods} {where}",
            backend,
            doc.get("auth", {}).get("require", "none"),
        ]
    if kind == "Descriptor":
        size = len(doc.get("descriptor_set", "")) * 3 // 4
        return [doc["name"], f"{size} bytes"]
    if kind == "Secret":
        return [doc["name"], doc.get("subject", ""), doc.get("not_after", "")]
    if kind == "Issuer":
        source = next(
            (f"{k}" for k in ("jwks_file", "jwks_url", "jwks", "hs256_secret_env") if doc.get(k)),
            "-",
        )
        return [doc["name"], doc.get("issuer", ""), ",".join(doc.get("audiences", [])), source]
    eps = ",".join(f"{e['address']}:{e['port']}" for e in doc.get("endpoints", []))
    if doc.get("discovery") == "registry":
        eps = "(registry)"
    return [doc["name"], doc.get("protocol", "http"), eps]


@click.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "yaml", "json"]), default="table")
@click.pass_context
@run_async
async def get(ctx: click.Context, kind: str, name: str | None, output: str) -> None:
    """Show routes or services (all, or one by NAME)."""
    k = _kind(kind)
    async with redis_for(ctx) as (redis, keys):
        raw = (await RedisDocumentStore(redis=redis, keys=keys).load())[k]
    if name is not None and name not in raw:
        raise CliError(f"{k.lower()}/{name} not found")
    names = [name] if name is not None else sorted(raw)
    docs = [_shown(k, n, raw[n]) for n in names]
    if output == "json":
        click.echo(json.dumps(docs[0] if name else docs, indent=2))
    elif output == "yaml":
        click.echo(yaml.safe_dump_all(docs, sort_keys=False).rstrip())
    else:
        header = _HEADERS[k]
        rows = [header] + [_summary(k, d) for d in docs]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@click.command()
@click.argument("kind")
@click.argument("name")
@click.pass_context
@run_async
async def delete(ctx: click.Context, kind: str, name: str) -> None:
    """Delete a route or a service (refused while a route uses the service)."""
    await delete_document(ctx, _kind(kind), name)


@click.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("-n", "--count", default=20, show_default=True, type=click.IntRange(1, 10000))
@click.pass_context
@run_async
async def history(ctx: click.Context, output: str, count: int) -> None:
    """List applied revisions, newest first."""
    async with redis_for(ctx) as (redis, keys):
        rows = await RedisDocumentStore(redis=redis, keys=keys).history(count)
    if output == "json":
        for row in rows:  # a Secret's earlier text holds its key: never printed
            for change in row["changes"]:
                if change.get("kind") == "Secret" and change.get("before") is not None:
                    change["before"] = _redacted_text(change["before"], "Secret")
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["time"]))
        what = ", ".join(f"{c['kind'].lower()}/{c['name']} {c['action']}" for c in row["changes"])
        click.echo(f"{row['revision']:>6}  {when}  {row['who']}  {what}")


@click.command()
@click.argument("revision", type=click.IntRange(0))
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.pass_context
@run_async
async def rollback(ctx: click.Context, revision: int, dry_run: bool) -> None:
    """Bring the documents back to how they were at REVISION (a new revision records it).

    Only changes made through wardgate (apply, delete, rollback) are in the history; raw
    writes to Redis are not undone.
    """
    async with redis_for(ctx) as (redis, keys):
        store = RedisDocumentStore(redis=redis, keys=keys)
        targets = await store.targets_at(revision)
        if dry_run:
            print_changes(plan_restore(await store.load(), targets), dry_run=True)
            return
        new_revision, changes = await store.commit(lambda cur: plan_restore(cur, targets))
        print_changes(changes, dry_run=False, revision=new_revision)
        if not any(c.action != "unchanged" for c in changes):
            click.echo(f"already at revision {revision}")


@click.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
@run_async
async def status(ctx: click.Context, output: str) -> None:
    """Revision, connected Envoys (what each ACKed or NACKed), refused documents."""
    async with redis_for(ctx) as (redis, keys):
        report = await RedisStatusStore(redis=redis, keys=keys).read()
    revision, refused = report.revision, report.refused
    nodes = []
    now = time.time()
    for entry in report.workers:
        if now - entry.get("time", 0) > 60:
            continue  # a worker that stopped reporting (its reports come every 15 s)
        for node in entry.get("nodes", []):
            nodes.append({**node, "worker": entry.get("worker")})
    if output == "json":
        click.echo(
            json.dumps({"revision": revision, "envoys": nodes, "refused": refused}, indent=2)
        )
        return
    click.echo(f"revision: {revision}")
    click.echo(f"envoys: {len(nodes)}")
    for n in nodes:
        click.echo(f"  {_line(n.get('node'))} ({_line(n.get('mode'))}, via {_line(n['worker'])})")
        for t, s in n.get("types", {}).items():
            sent, acked = _line(s.get("sent_version")) or "-", _line(s.get("acked_version")) or "-"
            line = f"    {_line(t)}: sent {sent} acked {acked}"
            if s.get("nack_error"):
                nacked = _line(s.get("nacked_version"))
                line += f" NACKED {nacked}: {_line(str(s['nack_error'])[:200])}"
            click.echo(line)
    click.echo(f"refused documents: {len(refused)}")
    for key, reason in sorted(refused.items()):
        click.echo(f"  {_line(key)}: {_line(reason)}")


def _line(value: object) -> str:
    """A value another process wrote (an Envoy's node id and NACK text come from whoever
    opened the ADS stream) as one line of visible text: control characters, an escape
    sequence among them, as Python escapes."""
    return printable(str(value)) if value is not None else ""
