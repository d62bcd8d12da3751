"""External processing in Envoy: the ext_proc filter that calls wardgate's processor for
routes with ``transform``, ``cache`` or ``compose``, the header filter before it, and the
compose listener through which composition parts reach their backends
(docs/TRANSFORMS.md, docs/DECISIONS.md records 35-39).

- **Off unless a route says so.** The ext_proc filter is in every listener with every phase
  skipped, and the virtual host carries ``ExtProcPerRoute{disabled: true}``; a route with a
  policy carries its own ``ExtProcPerRoute{overrides}`` (the phases it needs, its policy as
  gRPC initial metadata, its failure mode). Envoy merges the two at decode time, after the
  scope filter has chosen the route table from the path: the more specific one's
  ``disabled`` and mode win. (A ``FilterConfig{disabled}`` switch per route would be decided
  when Envoy creates the filter chain, from the client's own headers.)
- **Envoy does what needs no callout.** Header removals and sets of constant values are a
  ``header_mutation`` per route (``wardgate.transform``) placed before ext_proc: they hold even
  when the processor fails open. It also strips, before the processor runs, every request
  header the route's transform sets with placeholders: a client's own value never reaches the
  upstream when the processor does not answer.
- **Failure modes.** Routes that hide fields (``response_json``) or compose fail closed
  (503 when the processor fails, 504 past the deadline); the others fail open. Envoy counts
  both in ``http.wardgate.ext_proc.*`` (``failure_mode_allowed``, ``message_timeouts``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

# Importing these registers the message types that "@type" below refers to.
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)

from wardgate.domain.compose import KEY_HEADER
from wardgate.domain.doc_extproc import HeaderOps
from wardgate.domain.documents import Route
from wardgate.domain.durations import format_duration, parse_duration
from wardgate.domain.extproc_policy import (
    MAX_COMPOSE_TIMEOUT,
    decode_policy,
    encode_policy,
    phases_of,
)
from wardgate.domain.sessions import IDENTITY_HEADERS
from wardgate.domain.templates import parse_template
from wardgate.xds import canonical
from wardgate.xds.translate import EXT_AUTHZ, GRPC_CLUSTER, TranslateOptions, socket_address
from wardgate.xds.typeurls import T_HCM, T_HEADER_MUTATION, T_HEADER_MUTATION_ROUTE, T_ROUTER, of

F_EXTPROC = "wardgate.extproc"  # also the dynamic metadata namespace of its local answers
F_TRANSFORM = "wardgate.transform"
T_EXT_PROC = of("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor")
T_EXT_PROC_ROUTE = of("envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute")
POLICY_HEADER = "x-wardgate-extproc"
COMPOSE_HEADER = "x-wardgate-compose"
PART_HEADER = "x-wardgate-part"
COMPOSE_LISTENER = "wardgate_compose"
COMPOSE_ROUTES = "wardgate_compose"
# A cluster no document can name: a compose route's request never reaches the router unless
# the processor let it through (a bug), and then it answers 503.
NO_CLUSTER = "wardgate_compose_answered_by_wardgate"
# What the processor may never set or remove, whatever it answers (Envoy enforces it; the
# documents are refused earlier, doc_extproc.py).
_PROTECTED = "|".join(
    [*IDENTITY_HEADERS, "x-request-id", "x-wardgate-scope", "cookie", "set-cookie"]
)
_SKIP_ALL = {
    "request_header_mode": "SKIP",
    "response_header_mode": "SKIP",
    "request_body_mode": "NONE",
    "response_body_mode": "NONE",
    "request_trailer_mode": "SKIP",
    "response_trailer_mode": "SKIP",
}


@dataclasses.dataclass(frozen=True)
class ComposeAddress:
    """Where an Envoy's compose listener binds, and so where wardgate sends the parts: to
    that address, or, for a listener bound to every address (0.0.0.0, ::: an Envoy in another
    container or pod), to the address the Envoy's own gRPC connection comes from
    (``peer:<port>``, resolved per stream by the processor)."""

    address: str
    port: int

    @property
    def via(self) -> str:
        host = self.address or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            return f"peer:{self.port}"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def extproc_filters(opts: TranslateOptions, compose: ComposeAddress | None) -> list[dict[str, Any]]:
    """The listener's two filters, after every check of the request (ext_authz has set the
    identity headers the processor reads) and before the transcoder (so JSON reaches it)."""
    grpc: dict[str, Any] = {"envoy_grpc": {"cluster_name": GRPC_CLUSTER}}
    if compose is not None:
        grpc["initial_metadata"] = [{"key": COMPOSE_HEADER, "value": compose.via}]
    return [
        {"name": F_TRANSFORM, "typed_config": {"@type": T_HEADER_MUTATION, "mutations": {}}},
        {
            "name": F_EXTPROC,
            "typed_config": {
                "@type": T_EXT_PROC,
                "grpc_service": grpc,
                "failure_mode_allow": True,
                "processing_mode": dict(_SKIP_ALL),
                "message_timeout": format_duration(opts.extproc_timeout),
                "max_message_timeout": format_duration(MAX_COMPOSE_TIMEOUT + 1),
                "allow_mode_override": True,
                "status_on_error": {"code": "ServiceUnavailable"},
                "mutation_rules": {
                    "disallow_expression": {"regex": f"(?i)^({_PROTECTED})$"},
                    "disallow_is_error": True,
                },
                "metadata_options": {
                    "forwarding_namespaces": {"untyped": [EXT_AUTHZ]},
                    "receiving_namespaces": {"untyped": [F_EXTPROC]},
                },
                "stat_prefix": "wardgate",
            },
        },
    ]


def extproc_off() -> dict[str, Any]:
    """The virtual host's configuration: the processor is off unless a route says so."""
    return {F_EXTPROC: {"@type": T_EXT_PROC_ROUTE, "disabled": True}}


def reply_mapper() -> dict[str, Any]:
    """The first local-reply mapper: an answer the processor made (its dynamic metadata says
    so) keeps its own JSON body."""
    return {
        "filter": {
            "metadata_filter": {
                "matcher": {
                    "filter": F_EXTPROC,
                    "path": [{"key": "own_body"}],
                    "value": {"bool_match": True},
                },
                # Unset, a missing key would match: every other local reply would keep its body.
                "match_if_key_not_found": False,
            }
        }
    }


def policy_text(route: Route) -> str | None:
    if route.transform is None and route.cache is None and route.compose is None:
        return None
    return encode_policy(
        route=route.name,
        authenticated=route.auth.require != "none",
        transform=route.transform,
        cache=route.cache,
        compose=route.compose,
        timeout=route.timeout,
    )


def route_filters(route: Route) -> dict[str, Any]:
    """A route's own configuration of the two filters; empty for a route without a policy."""
    text = policy_text(route)
    if text is None:
        return {}
    out: dict[str, Any] = {}
    phases = phases_of(decode_policy(text))
    if phases.any:
        mode = dict(_SKIP_ALL)
        if phases.request_headers:
            mode["request_header_mode"] = "SEND"
        if phases.response_headers:
            mode["response_header_mode"] = "SEND"
        if phases.response_body:
            mode["response_body_mode"] = "BUFFERED_PARTIAL"
        t = route.transform
        fail_closed = route.compose is not None or (t is not None and t.response_json is not None)
        out[F_EXTPROC] = {
            "@type": T_EXT_PROC_ROUTE,
            "overrides": {
                "processing_mode": mode,
                # Envoy formats metadata values (%REQ(...)% and the like): '%' is '%%'.
                "grpc_initial_metadata": [{"key": POLICY_HEADER, "value": text.replace("%", "%%")}],
                "failure_mode_allow": not fail_closed,
            },
        }
    if mutations := _native_mutations(route):
        out[F_TRANSFORM] = {"@type": T_HEADER_MUTATION_ROUTE, "mutations": mutations}
    return out


def _set(name: str, value: str) -> dict[str, Any]:
    # header_mutation formats values (%REQ(...)% and the like): a literal '%' is '%%'.
    return {
        "append": {
            "header": {"key": name, "value": value.replace("%", "%%")},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    }


def _native(ops: HeaderOps | None, *, strip_dynamic: bool) -> list[dict[str, Any]]:
    if ops is None:
        return []
    out: list[dict[str, Any]] = [{"remove": n.lower()} for n in ops.remove or []]
    for name, value in (ops.set or {}).items():
        template = parse_template(value)
        if template.constant:
            out.append(_set(name.lower(), template.render(lambda _p: "") or ""))
        elif strip_dynamic:
            out.append({"remove": name.lower()})  # the processor sets it, or nobody does
    return out


def _native_mutations(route: Route) -> dict[str, Any]:
    t = route.transform
    if t is None or route.compose is not None:
        return {}
    request = _native(t.request_headers, strip_dynamic=True)
    if t.response_json is not None:
        # JSON the processor can read: no compression it cannot undo (it reads gzip and
        # deflate; an upstream that compresses anyway with another coding is refused), and
        # the whole document: a range of it ('"hunter2"', an inner object) is JSON the paths,
        # which start at the root, do not reach (an upstream's 206 is refused anyway).
        request += [{"remove": name} for name in ("accept-encoding", "range", "if-range")]
    response = _native(t.response_headers, strip_dynamic=False)
    mutations: dict[str, Any] = {}
    if request:
        mutations["request_mutations"] = request
    if response:
        mutations["response_mutations"] = response
    return mutations


def compose_action() -> dict[str, Any]:
    """A compose route's action: the processor answers before the router; should the request
    ever get there, there is no cluster (503)."""
    return {"cluster": NO_CLUSTER, "cluster_not_found_response_code": "SERVICE_UNAVAILABLE"}


# --- the compose listener --------------------------------------------------------------------


def compose_listener(compose: ComposeAddress) -> listener_pb2.Listener:
    """An Envoy's second listener, for wardgate only: a part request is routed by its
    ``x-wardgate-part`` header (routes over RDS, ``compose_routes``)."""
    listener = {
        "name": COMPOSE_LISTENER,
        "address": socket_address(compose.address or "127.0.0.1", compose.port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": T_HCM,
                            "stat_prefix": "wardgate_compose",
                            "codec_type": "AUTO",
                            "rds": {
                                "route_config_name": COMPOSE_ROUTES,
                                "config_source": {"ads": {}, "resource_api_version": "V3"},
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": T_ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
    return canonical.parse(listener, listener_pb2.Listener())


def _retry_policy(route: Route) -> dict[str, Any] | None:
    if route.retries is None:
        return None
    policy: dict[str, Any] = {
        "retry_on": ",".join(route.retries.on),
        "num_retries": route.retries.attempts,
    }
    if route.retries.per_try_timeout:
        policy["per_try_timeout"] = format_duration(
            min(parse_duration(route.retries.per_try_timeout), MAX_COMPOSE_TIMEOUT)
        )
    return policy


def compose_routes(routes: Iterable[Route], key: str) -> bytes:
    """The compose listener's route configuration: one route per part of every compose
    route, chosen by ``x-wardgate-part: <route>/<part>``, for requests that carry the
    deployment's compose key (``x-wardgate-compose-key``) only: the listener may be reachable
    by others than wardgate (bound beyond loopback in a container or a pod), and it has none
    of the main listener's checks. Anything else is 404; without a key, everything is."""
    entries: list[dict[str, Any]] = []
    for route in sorted(routes, key=lambda r: r.name):
        if route.compose is None:
            continue
        text = policy_text(route)
        assert text is not None
        for part in decode_policy(text).parts:
            action: dict[str, Any] = {
                "cluster": part.backend,
                "timeout": format_duration(part.timeout),
            }
            if retry := _retry_policy(route):
                action["retry_policy"] = retry
            entries.append(
                {
                    "name": f"{route.name}/{part.name}",
                    "match": {
                        "prefix": "/",
                        "headers": [
                            {
                                "name": PART_HEADER,
                                "string_match": {"exact": f"{route.name}/{part.name}"},
                            },
                            {"name": KEY_HEADER, "string_match": {"exact": key}},
                        ],
                    },
                    "route": action,
                    "request_headers_to_remove": [PART_HEADER, KEY_HEADER],
                }
            )
    if not key:
        entries = []
    entries.append({"name": "none", "match": {"prefix": "/"}, "direct_response": {"status": 404}})
    config = {
        "name": COMPOSE_ROUTES,
        "virtual_hosts": [{"name": "compose", "domains": ["*"], "routes": entries}],
    }
    data: bytes = canonical.parse(config, route_pb2.RouteConfiguration()).SerializeToString(
        deterministic=True
    )
    return data
