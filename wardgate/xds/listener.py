"""The listener: one HTTP connection manager whose filters run in a fixed order, and the
JSON bodies of the replies Envoy makes itself."""

from __future__ import annotations

import json
from typing import Any

# Importing these registers the message types that "@type" below refers to.
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2  # noqa: F401
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2  # noqa: F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)

from wardgate.domain.durations import format_duration
from wardgate.domain.sessions import IDENTITY_HEADERS
from wardgate.domain.tickets import TICKET_SID_HEADER
from wardgate.xds import canonical
from wardgate.xds.access_log import access_log_config
from wardgate.xds.bans import bans_filter
from wardgate.xds.extproc import ComposeAddress, extproc_filters, reply_mapper
from wardgate.xds.listener_tls import filter_chains as tls_filter_chains
from wardgate.xds.listener_tls import listener_filters as tls_listener_filters
from wardgate.xds.local_guard import guard_filter
from wardgate.xds.local_limits import local_limits_filter
from wardgate.xds.native_auth import (
    ext_authz_skip,
    jwt_filter,
    jwt_identity_filter,
    local_replies,
    roles_filter,
)
from wardgate.xds.quota import quota_filters
from wardgate.xds.revocations import revocations_filter
from wardgate.xds.scope_envoy import scope_filter, scoped_routes
from wardgate.xds.tracing import tracing_config
from wardgate.xds.transcoder import ORIGINAL_PATH, transcoder_filters
from wardgate.xds.translate import (
    EXT_AUTHZ,
    F_BUFFER,
    F_CORS,
    F_LUA,
    F_RBAC,
    GRPC_CLUSTER,
    LISTENER_NAME,
    RATELIMIT_DOMAIN,
    TranslateOptions,
    socket_address,
)
from wardgate.xds.typeurls import (
    T_BUFFER,
    T_CORS,
    T_EXT_AUTHZ,
    T_HCM,
    T_HEADER_MUTATION,
    T_LUA,
    T_RATELIMIT,
    T_RBAC,
    T_ROUTER,
)


def build_listener(
    address: str, port: int, opts: TranslateOptions, compose: ComposeAddress | None = None
) -> listener_pb2.Listener:
    """The gateway's listener: an HTTP connection manager on ``address``:``port``;
    ``compose``: where this Envoy's compose listener is (``xds/extproc.py``)."""
    manager = _connection_manager(opts, compose)
    listener: dict[str, Any] = {
        "name": LISTENER_NAME,
        "address": socket_address(address, port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    if opts.tls is not None:  # TLS, and maybe a redirect for plain text (listener_tls.py)
        listener["listener_filters"] = tls_listener_filters()
        listener["filter_chains"] = tls_filter_chains(manager, opts.tls)
    return canonical.parse(listener, listener_pb2.Listener())


def _connection_manager(opts: TranslateOptions, compose: ComposeAddress | None) -> dict[str, Any]:
    hcm = _connection_manager_base(opts, compose)
    if opts.access_log is not None:
        hcm["access_log"] = access_log_config(opts.access_log, _wardgate_grpc())
    if opts.tracing is not None:
        hcm["tracing"] = tracing_config(opts.tracing)
    return hcm


def _connection_manager_base(
    opts: TranslateOptions, compose: ComposeAddress | None
) -> dict[str, Any]:
    return {
        "@type": T_HCM,
        "stat_prefix": "wardgate",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "xff_num_trusted_hops": opts.trusted_proxy_hops,
        # Routes are chosen on the normalized path: /api//admin, /api/./admin and
        # /api/%61dmin must not slip past a protected /api/admin to a public /api route
        # (upstream frameworks normalize them back to /api/admin).
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "strip_trailing_host_dot": True,
        # One route configuration per scope; the scope from a header the first filter sets.
        "scoped_routes": scoped_routes(),
        "http_filters": _http_filters(opts, compose),
        "local_reply_config": {"mappers": _mappers(opts)},
        "upgrade_configs": [{"upgrade_type": "websocket", "enabled": False}],
    }


# --- HTTP filters ----------------------------------------------------------------------------


def _http_filters(opts: TranslateOptions, compose: ComposeAddress | None) -> list[dict[str, Any]]:
    """The HTTP filters in the order they run (docs/ROUTING.md, "What every request goes
    through")."""
    return [
        # Before anything reads the route: the scope key from the path (scope_key.py). It
        # overwrites whatever the client sent in that header.
        scope_filter(),
        bans_filter(),  # banned clients: refused before anything else runs
        _strip_identity_headers(),
        _filter(F_CORS, T_CORS),
        _filter(F_RBAC, T_RBAC),
        # Session tickets and Issuer JWTs verified by Envoy (native_auth.py): when they
        # decide who the caller is, ext_authz is skipped; the route's roles are checked after.
        jwt_filter(),
        jwt_identity_filter(),
        revocations_filter(opts.ticket_cookie),
        _ext_authz(opts),
        roles_filter(),
        # Limits Envoy enforces itself, before the exact check: what they refuse costs no
        # callout. Quota first: the local bound behind it counts only what a lease admitted
        # (a request the quota refuses spends nothing there).
        *quota_filters(),
        local_limits_filter(),
        _rate_limit(opts, stage=0),
        _rate_limit(opts, stage=1),
        guard_filter(),  # after the exact check: it sees what that allowed or failed open on
        # transform, cache, compose: after every check, before the transcoder (JSON both ways).
        *extproc_filters(opts, compose),
        # REST/JSON to gRPC on the routes with transcode, after every check of the request.
        *transcoder_filters(),
        _strip_session_cookie(opts),
        _filter(F_BUFFER, T_BUFFER, max_request_bytes=opts.max_request_bytes),
        _filter("envoy.filters.http.router", T_ROUTER),
    ]


def _filter(name: str, type_url: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": type_url, **config}}


def _strip_identity_headers() -> dict[str, Any]:
    """Whatever identity headers the client sent are dropped, so only ext_authz can set
    them, on every route, even when authorization fails open."""
    return _filter(
        "envoy.filters.http.header_mutation",
        T_HEADER_MUTATION,
        mutations={
            "request_mutations": [{"remove": h} for h in (*IDENTITY_HEADERS, TICKET_SID_HEADER)]
        },
    )


def _wardgate_grpc() -> dict[str, Any]:
    return {"envoy_grpc": {"cluster_name": GRPC_CLUSTER}}


def _ext_authz(opts: TranslateOptions) -> dict[str, Any]:
    return _filter(
        EXT_AUTHZ,
        T_EXT_AUTHZ,
        grpc_service={**_wardgate_grpc(), "timeout": format_duration(opts.ext_authz_timeout)},
        transport_api_version="V3",
        failure_mode_allow=opts.authz_fail_open,
        status_on_error={"code": "ServiceUnavailable"},
        **ext_authz_skip(),
    )


def _rate_limit(opts: TranslateOptions, *, stage: int) -> dict[str, Any]:
    """The exact check. Stage 0 checks the rules that fail as the setting says; stage 1 the
    rules whose ``failure_mode`` says the other (``routes.py``)."""
    fail_closed = opts.ratelimit_fail_closed != bool(stage)
    return _filter(
        "envoy.filters.http.ratelimit" if stage == 0 else "wardgate.ratelimit_other_failure_mode",
        T_RATELIMIT,
        domain=RATELIMIT_DOMAIN,
        stage=stage,
        timeout=format_duration(opts.ratelimit_timeout),
        failure_mode_deny=fail_closed,
        status_on_error={"code": "ServiceUnavailable"},
        enable_x_ratelimit_headers="DRAFT_VERSION_03",
        rate_limit_service={"grpc_service": _wardgate_grpc(), "transport_api_version": "V3"},
    )


def _strip_session_cookie(opts: TranslateOptions) -> dict[str, Any]:
    """The session cookie and the ticket are for the gateway: after ext_authz (which has read
    them and, on protected routes, already dropped them), no upstream gets them, public routes
    included. Only wardgate's own /auth/* routes keep them (they disable this filter).

    The route is chosen by then (and on a transcoding route the path is already the gRPC
    method's): a cookie removed must not send the request back to the route table, where the
    rewritten path matches nothing (404). Envoy's Lua filter clears the route cache on any
    header change unless told not to."""
    return _filter(
        F_LUA,
        T_LUA,
        default_source_code={
            "inline_string": strip_cookie_lua(opts.session_cookie, opts.ticket_cookie)
        },
        clear_route_cache=False,
    )


def strip_cookie_lua(*names: str) -> str:
    """Lua for Envoy: remove every piece named one of ``names`` from each of the request's
    Cookie headers, as ``domain/cookies.py`` ``strip_cookie`` does (the same algorithm: pieces
    split on ";" and ",", names trimmed of non-name characters). Each header is rewritten on
    its own, so an upstream gets the other cookies in as many headers as the client sent; a
    header left empty goes. ``getAtIndex`` counts from 0."""
    listed = ", ".join(f"[{json.dumps(n)}] = true" for n in names)
    return (
        f"local targets = {{{listed}}}\n"
        + r"""
local OTHER = "[^A-Za-z0-9!#$%%&'*+%-.^_`|~]"
local TRIM_NAME = "^" .. OTHER .. "*(.-)" .. OTHER .. "*$"

local function name_of(piece)
  local eq = string.find(piece, "=", 1, true)
  if eq == nil then return nil end
  return string.match(string.sub(piece, 1, eq - 1), TRIM_NAME)
end

local function mentions(value)
  for target in pairs(targets) do
    if string.find(value, target, 1, true) ~= nil then return true end
  end
  return false
end

local function strip(value)
  if not mentions(value) then return value end
  local parts, removed = {}, false
  for part in string.gmatch(value .. ";", "([^;]*);") do
    local kept = {}
    for piece in string.gmatch(part .. ",", "([^,]*),") do
      local name = name_of(piece)
      if name ~= nil and targets[name] then removed = true else kept[#kept + 1] = piece end
    end
    local text = string.match(table.concat(kept, ","), "^[ \t]*(.-)[ \t]*$")
    if text ~= "" then parts[#parts + 1] = text end
  end
  if not removed then return value end
  return table.concat(parts, "; ")
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local count = headers:getNumValues("cookie")
  if count == 0 then return end
  local values, changed = {}, false
  for i = 0, count - 1 do
    local value = headers:getAtIndex("cookie", i)
    local stripped = strip(value)
    if stripped ~= value then changed = true end
    if stripped ~= "" then values[#values + 1] = stripped end
  end
  if not changed then return end
  headers:remove("cookie")
  for _, value in ipairs(values) do headers:add("cookie", value) end
end
"""
    )


# --- local replies ---------------------------------------------------------------------------

# Local replies Envoy makes itself get the JSON error body. The first matching mapper wins:
# wardgate's own 401/403 denials (flag UAEX) already carry one and are kept as they are.
LOCAL_REPLIES: list[tuple[int, str | None, str, str | None]] = [
    (401, None, "", "UAEX"),
    (403, None, "", "UAEX"),
    (503, "unavailable", "authorization is unavailable; retry shortly", "UAEX"),
    (503, "unavailable", "rate limiting is unavailable; retry shortly", "RLSE"),
    (400, "bad_request", "the request is malformed", None),
    (403, "forbidden", "your address is not allowed here", None),
    (404, "not_found", "no route matches this request", None),
    (413, "payload_too_large", "the request body is larger than this route allows", None),
    (429, "rate_limited", "too many requests; retry later", None),
    (431, "headers_too_large", "the request headers are too large", None),
    (500, "internal", "the gateway failed to handle this request", None),
    (502, "bad_gateway", "the upstream service answered badly", None),
    (503, "unavailable", "the upstream service is unavailable", None),
    (504, "upstream_timeout", "the upstream service did not answer in time", None),
]


def _mappers(opts: TranslateOptions) -> list[dict[str, Any]]:
    """The external processor's own answers keep their body; then wardgate's own denials as
    they are, the refusals of the native checks (a revoked ticket, missing roles:
    native_auth.py), the transcoder's 404 for another route's service, then the rest."""
    own = [m for m in LOCAL_REPLIES if m[3] == "UAEX" and m[1] is None]
    rest = [m for m in LOCAL_REPLIES if m not in own]
    return [
        reply_mapper(),
        *(_mapper(*m) for m in own),
        *local_replies(opts.ticket_cookie),
        _other_service_mapper(),
        *(_mapper(*m) for m in rest),
    ]


def _mapper(
    status: int, code: str | None, message: str = "", flag: str | None = None
) -> dict[str, Any]:
    filt: dict[str, Any] = _status_is(status)
    if flag is not None:
        filt = {"and_filter": {"filters": [filt, {"response_flag_filter": {"flags": [flag]}}]}}
    mapper: dict[str, Any] = {"filter": filt}
    if code is not None:  # None: the first match wins and keeps the body as it is
        mapper["body_format_override"] = _error_body(code, message)
    return mapper


def _other_service_mapper() -> dict[str, Any]:
    """A REST request transcoded to a method of a service its route does not expose, refused
    by the services guard (xds/transcoder.py): a 404, as for a path no method binds."""
    transcoded = {"header_filter": {"header": {"name": ORIGINAL_PATH, "present_match": True}}}
    return {
        "filter": {"and_filter": {"filters": [_status_is(403), transcoded]}},
        "status_code": 404,
        "body_format_override": _error_body(
            "not_found", "no method of this route's services matches this request"
        ),
    }


def _status_is(status: int) -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {"default_value": status, "runtime_key": f"wardgate.local_reply.{status}"},
            }
        }
    }


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {
        "json_format": {"error": code, "message": message, "request_id": "%REQ(X-REQUEST-ID)%"},
        "content_type": "application/json",
    }
