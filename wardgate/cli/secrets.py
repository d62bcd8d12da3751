"""``wardgate secrets``: TLS certificates and keys (Secret documents) for the listener.

``put`` reads a PEM certificate chain and its key, checks the pair (the key is the leaf's,
the leaf is valid now) and stores it as a Secret document; the listener serves the Secret
named by the ``tls_secret`` setting, and a new version reaches every Envoy over SDS within a
second (rotation without restart). The key is never printed: ``list`` and ``get`` show the
subject and dates, diffs and history a digest."""

from __future__ import annotations

import click

from wardgate.cli.base import CliError, run_async
from wardgate.cli.documents import delete_document, store_documents
from wardgate.domain.doc_secret import encode_pem
from wardgate.domain.documents import Secret, parse_document
from wardgate.domain.tls_material import MAX_PEM
from wardgate.errors import DocumentError
from wardgate.files import read_bounded_file


@click.group()
def secrets() -> None:
    """TLS certificates and keys for the listener (Secret documents, served over SDS)."""


def _read_pem(path: str, what: str) -> str:
    try:
        text = read_bounded_file(path, limit=MAX_PEM)
    except (OSError, ValueError) as exc:
        raise CliError(f"{what} {path}: {exc}") from None
    if not text.isascii():
        raise CliError(f"{what} {path}: not PEM text")
    return text


@secrets.command("put")
@click.argument("name")
@click.option("--cert", "cert_file", required=True, help="PEM certificate chain, leaf first.")
@click.option("--key", "key_file", required=True, help="The leaf's PEM private key.")
@click.option("--dry-run", is_flag=True, help="Validate and show what would change.")
@click.pass_context
@run_async
async def secrets_put(
    ctx: click.Context, name: str, cert_file: str, key_file: str, dry_run: bool
) -> None:
    """Store the certificate and key as Secret NAME."""
    raw = {
        "kind": "Secret",
        "name": name,
        "certificate": encode_pem(_read_pem(cert_file, "--cert")),
        "private_key": encode_pem(_read_pem(key_file, "--key")),
    }
    try:
        doc = parse_document(raw)
    except DocumentError as exc:
        raise CliError(str(exc)) from None
    assert isinstance(doc, Secret)
    await store_documents(ctx, [doc], dry_run=dry_run)
    if dry_run:
        return
    click.echo(f"{doc.info.subject}, serial {doc.info.serial:x}, valid until {doc.info.not_after}")


@secrets.command("delete")
@click.argument("name")
@click.pass_context
@run_async
async def secrets_delete(ctx: click.Context, name: str) -> None:
    """Delete Secret NAME."""
    await delete_document(ctx, "Secret", name)
