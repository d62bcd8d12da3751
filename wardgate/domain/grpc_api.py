"""gRPC APIs as compiled descriptors: what services a ``FileDescriptorSet`` holds, the REST
bindings of their methods, and several sets merged into one.

A set comes from ``protoc --include_imports --descriptor_set_out`` (or wardgate compiling a
``.proto`` itself, ``cli/descriptors.py``). Its bindings are the methods' ``google.api.http``
options (``additional_bindings`` included); a method without one is reachable as ``POST
/<package>.<Service>/<Method>`` with a JSON body (Envoy's transcoder ``auto_mapping``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Importing it registers the google.api.http extension of MethodOptions.
from google.api import annotations_pb2, http_pb2
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor as MessageType
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from wardgate.domain.http_template import parse_template

MAX_DESCRIPTOR_BYTES = 4 << 20  # a compiled API rarely passes 1 MiB
SERVICE_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
_VERBS = ("get", "put", "post", "delete", "patch")
HTTP_BODY = "google.api.HttpBody"
_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")


@dataclasses.dataclass(frozen=True)
class Binding:
    """One REST mapping of a method: an HTTP verb and a path template."""

    verb: str  # GET, POST, ... (upper case); a custom verb as written
    template: str  # e.g. /v1/greeter/{name}
    body: str = ""  # "*", a field name, or "" (no body)

    def key(self) -> tuple[str, str]:
        """What Envoy's path matcher files the binding under: the HTTP method followed by the
        custom verb (``GET`` + ``:foo`` is ``GETfoo``, as a custom method ``GETfoo`` would be)
        and the segments the template matches. Two bindings with one key are taken without a
        complaint, and then that path answers 404 for both (``is_multiple``)."""
        template = parse_template(self.template)
        return self.verb + template.verb, "/" + "/".join(template.segments)

    def sample_path(self) -> str:
        """A concrete path the template matches: variables become ``x`` (``**`` ``x/x``)."""

        def fill(match: re.Match[str]) -> str:
            pattern = match.group(2)
            if not pattern:
                return "x"
            return "/".join("x" if seg in ("*", "**") else seg for seg in pattern.split("/"))

        return _VARIABLE.sub(fill, self.template)


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    bindings: tuple[Binding, ...]  # annotated ones; empty: auto-mapped only, if not annotated
    server_streaming: bool = False
    client_streaming: bool = False
    # It has a google.api.http option: then it is not auto-mapped, even when the option binds
    # nothing (a rule with only a body).
    annotated: bool = False


@dataclasses.dataclass(frozen=True)
class GrpcApi:
    """The services of one descriptor set, by full name (``pkg.Service``)."""

    files: tuple[descriptor_pb2.FileDescriptorProto, ...]
    services: Mapping[str, tuple[Method, ...]]

    def bindings(self, service: str) -> list[tuple[str, Binding]]:
        """What Envoy registers for ``service``: each method's REST bindings, or for a method
        without a google.api.http option, ``POST /<service>/<method>`` (auto_mapping)."""
        out = []
        for method in self.services[service]:
            auto = (Binding("POST", f"/{service}/{method.name}", "*"),)
            out += [(method.name, b) for b in (method.bindings if method.annotated else auto)]
        return out


def duplicate_binding(apis: Mapping[str, GrpcApi]) -> str | None:
    """Two bindings of these services (service name to the API defining it) that Envoy's
    path matcher files under one key (``Binding.key``), said in words; None when there are
    none. One method binding a pattern twice counts too: Envoy then answers 404 there."""
    seen: dict[tuple[str, str], str] = {}
    for service, api in sorted(apis.items()):
        for method, binding in api.bindings(service):
            where, key = f"{service}/{method}", binding.key()
            other = seen.get(key)
            if other is None:
                seen[key] = where
            elif other == where:
                return f"{binding.verb} {binding.template} is bound twice by {where}"
            else:
                return f"{binding.verb} {binding.template} is bound by both {other} and {where}"
    return None


def _http_bindings(rule: http_pb2.HttpRule) -> list[Binding]:
    out: list[Binding] = []
    pattern = rule.WhichOneof("pattern")
    if pattern in _VERBS:
        out.append(Binding(pattern.upper(), getattr(rule, pattern), rule.body))
    elif pattern == "custom":
        out.append(Binding(rule.custom.kind, rule.custom.path, rule.body))
    for extra in rule.additional_bindings:
        out += _http_bindings(extra)
    return out


def _checked_pool(
    files: Iterable[descriptor_pb2.FileDescriptorProto],
) -> descriptor_pool.DescriptorPool:
    """Every file resolves against the set itself (``--include_imports``): types exist, no
    name is defined twice. Raises ``ValueError`` saying which file is wrong."""
    by_name = {f.name: f for f in files}
    missing = sorted({d for f in by_name.values() for d in f.dependency if d not in by_name})
    if missing:
        raise ValueError(
            "the set lacks imported files (compile with --include_imports): "
            + ", ".join(missing[:5])
        )
    pool = descriptor_pool.DescriptorPool()
    for f in _dependencies_first(by_name):
        try:
            pool.Add(f)
            pool.FindFileByName(f.name)  # builds it: unresolved types fail here
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"file {f.name}: {exc}") from None
    return pool


def _dependencies_first(
    files: Mapping[str, descriptor_pb2.FileDescriptorProto],
) -> list[descriptor_pb2.FileDescriptorProto]:
    """``files`` (by name), each after the files it imports that are among them, otherwise
    by name. Linear, without recursion: a set may hold tens of thousands of files in one
    import chain. ``ValueError`` on an import cycle."""
    out: list[descriptor_pb2.FileDescriptorProto] = []
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    for root in sorted(files):
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(sorted(files[root].dependency)))]
        while stack:
            name, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                state[name] = 2
                out.append(files[name])
            elif dep in files and state.get(dep) == 1:
                raise ValueError(f"file {dep} imports itself (through {name})")
            elif dep in files and dep not in state:
                state[dep] = 1
                stack.append((dep, iter(sorted(files[dep].dependency))))
    return out


CPP_CHECK_TIMEOUT = 60.0  # seconds protoc may take over one set
# How absl prefixes a log line: "E0000 00:00:1795985417.854770   13909 file.cc:207] ".
_ABSL_PREFIX = re.compile(r"^[EWIF]\d{4} [^\]]*\] ")


def check_ahead(data: bytes) -> None:
    """Run the slow part of ``parse_descriptor_set`` (protoc over the set: a few hundred ms
    for 1 MiB) now, so that parsing ``data`` later finds its result remembered: for callers
    with an event loop, from a thread, before parsing on the loop."""
    try:
        fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError:
        return
    _cpp_problem(data, fds)


def _cpp_problem(data: bytes, fds: descriptor_pb2.FileDescriptorSet) -> str | None:
    """What protobuf's C++ descriptor builder, the one in Envoy, refuses in the set, or None.

    Python's protobuf (upb) builds files Envoy's ``DescriptorPool::BuildFile`` refuses, and
    one file Envoy cannot build is a NACK of every transcoding route: extension ranges,
    groups or ``required`` in proto3, a field number or name that is reserved, an import
    listed twice, ``packed``, ``lazy`` or ``jstype`` on a field that cannot have it, enum
    aliases without ``allow_alias``... So the set also goes through protoc (grpcio-tools,
    the same C++ library), which builds every file of a ``--descriptor_set_in``."""
    digest = hashlib.sha256(data).digest()
    if digest not in _CPP_RESULTS:
        roots = {f.name for f in fds.file} - {d for f in fds.file for d in f.dependency}
        try:
            result = _cpp_check(data, sorted(roots))
        except subprocess.TimeoutExpired:  # not remembered: a later parse tries again
            return f"protoc did not finish checking the set within {CPP_CHECK_TIMEOUT:.0f} s"
        if len(_CPP_RESULTS) >= 1024:
            _CPP_RESULTS.clear()
        _CPP_RESULTS[digest] = result
    return _CPP_RESULTS[digest]


# protoc's verdict per set (by SHA-256): a parse after ``check_ahead``, or the same set parsed
# again (the CLI checks the documents before and after a change), does not run it again.
_CPP_RESULTS: dict[bytes, str | None] = {}


def _cpp_check(data: bytes, roots: list[str]) -> str | None:
    with tempfile.TemporaryDirectory(prefix="wardgate-descriptor-") as tmp:
        work = Path(tmp)
        (work / "set.pb").write_bytes(data)
        # The file names go through an argument file: a set may hold thousands.
        args = [f"--descriptor_set_in={work / 'set.pb'}", f"--descriptor_set_out={work / 'out.pb'}"]
        (work / "args").write_text("\n".join([*args, *roots]) + "\n")
        done = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"@{work / 'args'}"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=CPP_CHECK_TIMEOUT,
        )
    if done.returncode == 0:
        return None
    lines = [
        _ABSL_PREFIX.sub("", line).strip()
        for line in (done.stderr + done.stdout).splitlines()
        if line.strip() and not line.startswith("WARNING: All log messages before absl")
    ]
    errors = [line for line in lines if ": warning:" not in line] or lines
    return "Envoy's protobuf would refuse it: " + ("; ".join(errors[:3]) or "protoc failed")[:500]


def parse_descriptor_set(data: bytes) -> GrpcApi:
    """The API a serialized ``FileDescriptorSet`` describes; ``ValueError`` saying why it
    cannot be used (not a descriptor set, unresolved imports, no service, too large)."""
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise ValueError(f"larger than {MAX_DESCRIPTOR_BYTES >> 20} MiB")
    try:
        fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError:
        raise ValueError("not a FileDescriptorSet (protoc --descriptor_set_out)") from None
    if not fds.file:
        raise ValueError("the descriptor set holds no file")
    names = [f.name for f in fds.file]
    if len(set(names)) != len(names):
        raise ValueError("the descriptor set holds a file twice")
    pool = _checked_pool(fds.file)
    problem = _cpp_problem(data, fds)
    if problem is not None:
        raise ValueError(problem)
    services: dict[str, tuple[Method, ...]] = {}
    for f in fds.file:
        for svc in f.service:
            full = f"{f.package}.{svc.name}" if f.package else svc.name
            services[full] = tuple(
                Method(
                    m.name,
                    tuple(_http_bindings(m.options.Extensions[annotations_pb2.http]))
                    if m.options.HasExtension(annotations_pb2.http)
                    else (),
                    m.server_streaming,
                    m.client_streaming,
                    m.options.HasExtension(annotations_pb2.http),
                )
                for m in svc.method
            )
    if not services:
        raise ValueError("the descriptor set defines no service")
    api = GrpcApi(tuple(fds.file), services)
    for service in services:
        for method in pool.FindServiceByName(service).methods:
            for binding in _http_bindings(method.GetOptions().Extensions[annotations_pb2.http]):
                try:
                    _check_binding(binding, method.input_type)
                except ValueError as exc:
                    raise ValueError(
                        f"{service}/{method.name} {binding.verb} {binding.template}: {exc}"
                    ) from None
            try:
                _check_rule(method)
            except ValueError as exc:
                raise ValueError(f"{service}/{method.name}: {exc}") from None
        problem = duplicate_binding({service: api})
        if problem:
            raise ValueError(problem)
    return api


def combined_problem(apis: Mapping[str, GrpcApi], *, files_checked: bool = False) -> str | None:
    """Why Envoy's one transcoder would refuse these services (service name to the API
    defining it) together, or None: a file two descriptors hold in different versions, a
    type two files define, two methods with one REST pattern. ``files_checked``: the APIs'
    files are known to build together; only the bindings are checked."""
    if not files_checked:
        try:
            transcoder_set(apis.values())
        except ValueError as exc:
            return str(exc)
    return duplicate_binding(apis)


def _check_binding(binding: Binding, request: MessageType) -> None:
    """What Envoy's transcoder refuses (or fails every request for) in one binding."""
    if not binding.verb or not binding.verb.isascii() or not binding.verb.isalpha():
        raise ValueError("the HTTP method must be letters")
    template = parse_template(binding.template)
    for variable in template.variables:
        _field(request, variable, "path variable")
    if binding.body not in ("", "*"):
        _field(request, binding.body, "body")


def _check_rule(method: Any) -> None:
    """What Envoy resolves of a method's rule (``createMethodInfo``) whether or not it binds
    anything: its ``body`` and ``response_body``, in the request and the answer."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    if rule.body not in ("", "*"):  # a rule without a pattern still has its body resolved
        _field(method.input_type, rule.body, "body")
    name = rule.response_body
    if name in ("", "*"):
        return
    field = _field(method.output_type, name, "response_body")
    if field.message_type is None or field.message_type.full_name != HTTP_BODY:
        raise ValueError(
            "response_body must name a google.api.HttpBody field: Envoy's transcoder does "
            "not support it for other fields"
        )


def _field(message: MessageType | None, path: str, what: str) -> FieldDescriptor:
    """The field ``path`` (``a.b.c``) names in ``message``; ``ValueError`` if none. Each
    name is a field's name or, as Envoy's transcoder also takes it, its JSON name
    (``innerMsg`` for ``inner_msg``)."""
    field = None
    for name in path.split("."):
        found = None
        if message is not None:
            found = message.fields_by_name.get(name) or next(
                (f for f in message.fields if f.json_name == name), None
            )
        if found is None:
            raise ValueError(f"{what} {path}: no such field in {_type_name(message)}")
        field, message = found, found.message_type
    assert field is not None
    return field


def _type_name(message: MessageType | None) -> str:
    return message.full_name if message is not None else "a scalar"


def merge(apis: Iterable[GrpcApi]) -> bytes:
    """One serialized ``FileDescriptorSet`` holding every file of ``apis`` once, each after
    the files it imports (Envoy builds them in order), otherwise by name. ``ValueError`` when
    two sets hold different files of the same name."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for api in apis:
        for f in api.files:
            known = files.setdefault(f.name, f)
            if known is not f and known.SerializeToString(
                deterministic=True
            ) != f.SerializeToString(deterministic=True):
                raise ValueError(f"file {f.name} differs between descriptors")
    merged = descriptor_pb2.FileDescriptorSet()
    merged.file.extend(_dependencies_first(files))
    data: bytes = merged.SerializeToString(deterministic=True)
    return data


def _files_of(module: Any) -> tuple[descriptor_pb2.FileDescriptorProto, ...]:
    """A compiled module's file and the files it imports, dependencies first."""
    out: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()
    pending = [(module.DESCRIPTOR, False)]
    while pending:  # depth first, a file after its imports
        file, expanded = pending.pop()
        if expanded:
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            out.append(proto)
        elif file.name not in seen:
            seen.add(file.name)
            pending.append((file, True))
            pending.extend((dep, False) for dep in reversed(file.dependencies))
    return tuple(out)


# google.rpc.Status and its details: what the transcoder's convert_grpc_status turns into the
# JSON error body (its Any details are printed with these types).
STATUS_API = GrpcApi(_files_of(status_pb2) + _files_of(error_details_pb2), {})
# What Envoy's transcoder adds from its own compiled-in files when the set lacks the symbol
# (``addBuiltinSymbolDescriptor``), in this order.
_ENVOY_BUILTINS = (("google.protobuf.Any", any_pb2), ("google.rpc.Status", status_pb2))


def transcoder_set(apis: Iterable[GrpcApi]) -> bytes:
    """The serialized ``FileDescriptorSet`` Envoy's one transcoder is given for these APIs:
    their files merged with google.rpc.Status and its details, or, when a descriptor brings
    its own version of one of those files, or defines one of their types in a file of
    another name, without them (Envoy then uses the descriptor's). ``ValueError`` when Envoy
    could not build either: its transcoder adds ``google.protobuf.Any`` and
    ``google.rpc.Status`` from its own files when the set lacks them, which fails when the
    set has a file of that name defining something else."""
    apis = list(apis)
    problem = ""
    for candidate in ([*apis, STATUS_API], apis):
        try:
            data = merge(candidate)
            _envoy_builds(descriptor_pb2.FileDescriptorSet.FromString(data).file)
            return data
        except ValueError as exc:
            problem = str(exc)  # the last: why not even without google.rpc's files
    raise ValueError(problem)


def _envoy_builds(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
    """``ValueError`` unless Envoy's transcoder can build ``files`` and then add what it
    adds for its JSON error bodies."""
    files = list(files)
    pool = _checked_pool(files)
    names = {f.name for f in files}
    for symbol, module in _ENVOY_BUILTINS:
        try:
            pool.FindFileContainingSymbol(symbol)
            continue
        except KeyError:
            pass
        builtin = module.DESCRIPTOR.name
        if builtin in names:
            raise ValueError(
                f"file {builtin} does not define {symbol}, which Envoy's transcoder then adds "
                "from its own file of that name"
            )
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        try:
            pool.Add(proto)
            pool.FindFileByName(builtin)
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"Envoy's own {builtin} does not build with the set: {exc}") from None
        names.add(builtin)
