"""``wardgate descriptors``: compiled gRPC APIs for REST/JSON transcoding
(docs/TRANSCODING.md). ``put`` takes a ``FileDescriptorSet`` (``protoc --include_imports
--descriptor_set_out``) or a ``.proto`` file, which it compiles with grpcio-tools, with
``google/api/annotations.proto`` (googleapis-common-protos) and the well-known types on the
include path. Descriptors are documents like routes: in history, rollback and status."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import google.api
import grpc_tools

from wardgate.cli.base import CliError, redis_for, run_async
from wardgate.cli.documents import delete_document, store_documents
from wardgate.domain.doc_descriptor import Descriptor
from wardgate.domain.documents import parse_document
from wardgate.domain.grpc_api import MAX_DESCRIPTOR_BYTES
from wardgate.errors import DocumentError
from wardgate.store.documents import RedisDocumentStore

# Include paths for compiling: the well-known types (grpcio-tools) and google/api/*.proto.
WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"
GOOGLEAPIS = Path(next(iter(google.api.__path__))).parent.parent


def compile_proto(path: Path, includes: tuple[str, ...] = ()) -> bytes:
    """A ``FileDescriptorSet`` of ``path`` and everything it imports; ``CliError`` with
    protoc's message when it does not compile."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            # protoc names a file after the first include path holding it: the caller's
            # (-I api: shop/v1/shop.proto) before the file's own directory (shop.proto).
            *(f"-I{i}" for i in includes),
            f"-I{path.parent}",
            f"-I{GOOGLEAPIS}",
            f"-I{WELL_KNOWN}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            str(path),
        ]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise CliError(f"{path}: protoc did not finish within 120 s") from None
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            raise CliError(f"{path}: does not compile: {' '.join(message[:3])}")
        return out.read_bytes()


def read_descriptor_set(file: str, includes: tuple[str, ...]) -> bytes:
    path = Path(file)
    if not path.is_file():
        raise CliError(f"{file}: no such file")
    data = compile_proto(path, includes) if path.suffix == ".proto" else None
    size = len(data) if data is not None else path.stat().st_size
    if size > MAX_DESCRIPTOR_BYTES:
        compiled = " compiled" if data is not None else ""
        raise CliError(
            f"{file}:{compiled} larger than {MAX_DESCRIPTOR_BYTES >> 20} MiB ({size} bytes)"
        )
    return data if data is not None else path.read_bytes()


@click.group()
def descriptors() -> None:
    """Compiled gRPC APIs for REST/JSON transcoding (routes with transcode)."""


@descriptors.command("put")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-I", "--include", "includes", multiple=True, help="More .proto include paths.")
@click.option("--dry-run", is_flag=True, help="Validate and show what would change.")
@click.pass_context
@run_async
async def descriptors_put(
    ctx: click.Context, name: str, file: str, includes: tuple[str, ...], dry_run: bool
) -> None:
    """Store FILE (a FileDescriptorSet, or a .proto to compile) as descriptor NAME."""
    data = read_descriptor_set(file, includes)
    raw = {"kind": "Descriptor", "name": name, "descriptor_set": base64.b64encode(data).decode()}
    try:
        doc = parse_document(raw)
    except DocumentError as exc:
        raise CliError(f"{file}: {exc}") from None
    assert isinstance(doc, Descriptor)
    await store_documents(ctx, [doc], dry_run=dry_run)
    if dry_run:
        return
    click.echo(f"{doc.size} bytes; services: {', '.join(sorted(doc.api.services))}")


def _revisions(history: list[dict[str, object]]) -> dict[str, int]:
    """The revision that last changed each descriptor (newest entries first)."""
    out: dict[str, int] = {}
    for row in history:
        for change in row.get("changes", []):  # type: ignore[attr-defined]
            if change["kind"] == "Descriptor":
                out.setdefault(change["name"], int(row["revision"]))  # type: ignore[call-overload]
    return out


@descriptors.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
@run_async
async def descriptors_list(ctx: click.Context, output: str) -> None:
    """Name, size, services and the revision that last changed each descriptor."""
    async with redis_for(ctx) as (redis, keys):
        store = RedisDocumentStore(redis=redis, keys=keys)
        stored = (await store.load())["Descriptor"]
        revisions = _revisions(await store.history(10_000))
    rows = []
    for name, text in sorted(stored.items()):
        try:
            doc = parse_document(json.loads(text), expect_kind="Descriptor")
            assert isinstance(doc, Descriptor)
            rows.append(
                {
                    "name": name,
                    "size": doc.size,
                    "services": sorted(doc.api.services),
                    "revision": revisions.get(name),
                }
            )
        except (ValueError, DocumentError) as exc:
            rows.append({"name": name, "refused": str(exc)})
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        if "refused" in row:
            click.echo(f"{row['name']}  (refused: {row['refused']})")
            continue
        revision = row["revision"] if row["revision"] is not None else "-"
        services = ",".join(row["services"])  # type: ignore[arg-type]
        click.echo(f"{row['name']}  {row['size']} bytes  {services}  revision {revision}")
    if not rows:
        click.echo("no descriptors")


@descriptors.command("delete")
@click.argument("name")
@click.pass_context
@run_async
async def descriptors_delete(ctx: click.Context, name: str) -> None:
    """Delete descriptor NAME (refused while a route transcodes with it)."""
    await delete_document(ctx, "Descriptor", name)
