"""Authentication decided by Envoy itself: the filters that let a signed-in request pass
without a callout, and what routes tell them (docs/DECISIONS.md, 45-49).

In the listener, between the IP RBAC and the rate limits, in this order:

  ``wardgate.jwt``           jwt_authn, configuration over ECDS (``native_jwt.py``): verifies
                             the session ticket (cookie ``wg_ticket``) and Issuer JWTs
                             (``authorization: Bearer``); copies the ticket's user, roles and
                             session id to headers, and the payloads to dynamic metadata
  ``wardgate.jwt_identity``  Lua, only on routes accepting JWTs: the identity of a verified
                             Issuer JWT, checked and normalized as ext_authz would
  ``wardgate.revocations``   RBAC, configuration over ECDS (``revocations.py``): refuses
                             tickets of revoked sessions (a hash map keyed by the session id);
                             its shadow rules are the *gate*, which says whether Envoy has
                             decided the request (a ticket alone on a safe method, or a
                             verified Issuer JWT)
  ``envoy.filters.http.ext_authz``  skipped when the gate said so (``filter_enabled_metadata``)
  ``wardgate.roles``         RBAC, per route: the route's roles, from the ticket, the JWT or
                             what ext_authz established

Every switch is a filter's own configuration, read when the filter runs (after the scope
filter has chosen the route): jwt_authn's ``PerRouteConfig``, ``LuaPerRoute``,
``RBACPerRoute``; none is a ``FilterConfig`` switch (docs/DECISIONS.md, 27).
"""

from __future__ import annotations

import re
from typing import Any

# Importing these registers the message types that "@type" below refers to.
from envoy.config.rbac.v3 import rbac_pb2  # noqa: F401
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2  # noqa: F401
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2  # noqa: F401
from envoy.extensions.filters.http.lua.v3 import lua_pb2  # noqa: F401
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2  # noqa: F401

from wardgate.domain.documents import Route
from wardgate.domain.tickets import TICKET_SID_HEADER
from wardgate.xds.typeurls import T_LUA, T_LUA_ROUTE, T_RBAC, T_RBAC_ROUTE, of

F_JWT = "wardgate.jwt"
F_JWT_IDENTITY = "wardgate.jwt_identity"
F_REVOCATIONS = "wardgate.revocations"
F_ROLES = "wardgate.roles"
T_JWT = of("envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication")
T_JWT_ROUTE = of("envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig")
T_RBAC_ACTION = of("envoy.config.rbac.v3.Action")
T_CEL = of("envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter")

# Dynamic metadata namespaces.
JWT_NS = "envoy.filters.http.jwt_authn"  # jwt_authn writes here, whatever its filter's name
EXT_AUTHZ_NS = "envoy.filters.http.ext_authz"
RBAC_NS = "envoy.filters.http.rbac"  # every RBAC filter writes here, keys by stat prefix
IDENTITY_NS = "wardgate.identity"  # what the JWT identity script established
TICKET_PAYLOAD = "wg_ticket"  # where jwt_authn puts a verified ticket's payload
ISSUER_PAYLOAD = "jwt|{user}|{roles}|{skew}"  # an Issuer's payload (the script reads the key)
# The gate: the shadow rules of the revocations filter. Their verdict lands in RBAC_NS under
# GATE_PREFIX + "shadow_engine_result"; ext_authz runs unless it is "allowed".
GATE_PREFIX = "wardgate_native."
GATE_RESULT = GATE_PREFIX + "shadow_engine_result"
REVOKED_PREFIX = "wardgate_revoked."
ROLES_PREFIX = "wardgate_roles."
REVOKED_ACTION = "wardgate.revoked"  # the RBAC action (and policy id) of a revoked ticket
ROLES_POLICY = "wardgate.roles"
# The requirements a route names (its auth.require); every jwt_authn configuration has all.
REQUIREMENTS = ("session", "jwt", "any")
UNSAFE_METHODS_REGEX = "POST|PUT|PATCH|DELETE"  # domain/authz.py UNSAFE_METHODS


def _meta(namespace: str, path: list[str], value: dict[str, Any]) -> dict[str, Any]:
    return {
        "sourced_metadata": {
            "metadata_matcher": {
                "filter": namespace,
                "path": [{"key": k} for k in path],
                "value": value,
            }
        }
    }


def _no_header(name: str) -> dict[str, Any]:
    return {"not_id": {"header": {"name": name, "present_match": True}}}


def _ticket_alone() -> list[dict[str, Any]]:
    """A ticket speaks for the request only when no other credential does: with an API key
    or a bearer token, ext_authz decides (as it always did: key, then bearer, then session)."""
    return [_no_header("authorization"), _no_header("x-api-key")]


def gate_rules(cookie: str) -> dict[str, Any]:
    """When Envoy has decided who the caller is, and ext_authz is skipped:

    - ``ticket``: a verified ticket, alone, on a method that changes nothing (writes go to
      ext_authz, which applies the CSRF rule of ``domain/origins.py``), and only one ticket
      cookie (two may be a cookie planted by a sibling domain: ext_authz reads none);
    - ``jwt``: an Issuer JWT whose identity the script accepted, without an API key."""
    twice = re.escape(cookie)
    return {
        "action": "ALLOW",
        "policies": {
            "ticket": {
                "permissions": [
                    {
                        "not_rule": {
                            "header": {
                                "name": ":method",
                                "string_match": {"safe_regex": {"regex": UNSAFE_METHODS_REGEX}},
                            }
                        }
                    }
                ],
                "principals": [
                    {
                        "and_ids": {
                            "ids": [
                                _meta(JWT_NS, [TICKET_PAYLOAD], {"present_match": True}),
                                *_ticket_alone(),
                                {
                                    "not_id": {
                                        "header": {
                                            "name": "cookie",
                                            "string_match": {
                                                "safe_regex": {"regex": f".*{twice}=.*{twice}=.*"}
                                            },
                                        }
                                    }
                                },
                            ]
                        }
                    }
                ],
            },
            "jwt": {
                "permissions": [{"any": True}],
                "principals": [
                    {
                        "and_ids": {
                            "ids": [
                                _meta(IDENTITY_NS, ["method"], {"string_match": {"exact": "jwt"}}),
                                _no_header("x-api-key"),
                            ]
                        }
                    }
                ],
            },
        },
    }


def ext_authz_skip() -> dict[str, Any]:
    """ext_authz's own settings for the fast path: it runs unless the gate allowed, and it
    sees the verified ticket (so it renews one only when it is due)."""
    return {
        "filter_enabled_metadata": {
            "filter": RBAC_NS,
            "path": [{"key": GATE_RESULT}],
            "value": {"string_match": {"exact": "allowed"}},
            "invert": True,
        },
        "metadata_context_namespaces": [JWT_NS],
    }


# --- the listener's filters ---------------------------------------------------------------


def default_jwt_config() -> dict[str, Any]:
    """What jwt_authn does until its configuration arrives: verify nothing (ext_authz decides)."""
    return {
        "@type": T_JWT,
        "requirement_map": {name: {"allow_missing_or_failed": {}} for name in REQUIREMENTS},
    }


def jwt_filter() -> dict[str, Any]:
    return {
        "name": F_JWT,
        "config_discovery": {
            "config_source": {"ads": {}, "resource_api_version": "V3"},
            "default_config": default_jwt_config(),
            "apply_default_config_without_warming": True,
            "type_urls": [T_JWT],
        },
    }


def jwt_identity_filter() -> dict[str, Any]:
    """The script, by name: only routes that accept JWTs run it (``LuaPerRoute``)."""
    return {
        "name": F_JWT_IDENTITY,
        "typed_config": {
            "@type": T_LUA,
            "source_codes": {"jwt": {"inline_string": JWT_IDENTITY_LUA}},
        },
    }


def roles_filter() -> dict[str, Any]:
    """After ext_authz: no rules of its own; a route with roles brings them."""
    return {"name": F_ROLES, "typed_config": {"@type": T_RBAC, "rules_stat_prefix": ROLES_PREFIX}}


# --- what a route says ----------------------------------------------------------------------


def _has_role(role: str) -> list[dict[str, Any]]:
    listed = {"list_match": {"one_of": {"string_match": {"exact": role}}}}
    within = {"string_match": {"contains": f",{role},"}}
    return [
        {"and_ids": {"ids": [_meta(JWT_NS, [TICKET_PAYLOAD, "roles"], listed), *_ticket_alone()]}},
        _meta(EXT_AUTHZ_NS, ["roles"], within),
        _meta(IDENTITY_NS, ["roles"], within),
    ]


def roles_per_route(roles: list[str]) -> dict[str, Any]:
    """Refuse (403) a request whose identity holds none of ``roles``: the ticket's (when it
    speaks alone), the JWT's the script accepted, or what ext_authz established. A DENY
    policy, so that Envoy names it in the reply's details (the local reply reads them)."""
    ids = [principal for role in roles for principal in _has_role(role)]
    return {
        "@type": T_RBAC_ROUTE,
        "rbac": {
            "rules": {
                "action": "DENY",
                "policies": {
                    ROLES_POLICY: {
                        "permissions": [{"any": True}],
                        "principals": [{"not_id": {"or_ids": {"ids": ids}}}],
                    }
                },
            }
        },
    }


def route_filters(route: Route) -> dict[str, Any]:
    """A protected route's configuration of these filters: which credentials jwt_authn
    verifies, the JWT script where JWTs count, the roles."""
    require = route.auth.require
    if require not in REQUIREMENTS:
        return {}  # none: no callout anyway; api_key: ext_authz decides
    out: dict[str, Any] = {F_JWT: {"@type": T_JWT_ROUTE, "requirement_name": require}}
    if require in ("jwt", "any"):
        out[F_JWT_IDENTITY] = {"@type": T_LUA_ROUTE, "name": "jwt"}
    if route.auth.roles:
        out[F_ROLES] = roles_per_route(list(route.auth.roles))
    return out


# --- local replies ----------------------------------------------------------------------------


def _cel(expression: str) -> dict[str, Any]:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {"@type": T_CEL, "expression": expression},
        }
    }


def _denied_by(policy: str) -> str:
    return f'response.code_details == "rbac_access_denied_matched_policy[{policy}]"'


def _body(code: str, message: str) -> dict[str, Any]:
    return {
        "json_format": {"error": code, "message": message, "request_id": "%REQ(X-REQUEST-ID)%"},
        "content_type": "application/json",
    }


def local_replies(cookie: str) -> list[dict[str, Any]]:
    """Replies for the RBAC refusals of these filters (before the listener's own mappers):
    a revoked ticket is a 401 that also clears the ticket, missing roles a 403."""

    def header(key: str, value: str) -> dict[str, Any]:
        return {"header": {"key": key, "value": value}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}

    # A browser ignores a Set-Cookie for a __Host- or __Secure- cookie (the names a TLS
    # listener gives it, settings._with_tls) that lacks Secure: the ticket would stay.
    secure = "; Secure" if cookie.startswith(("__Host-", "__Secure-")) else ""

    return [
        {
            "filter": _cel(_denied_by(REVOKED_ACTION)),
            "status_code": 401,
            "body_format_override": _body(
                "unauthenticated", "your session has ended; sign in again"
            ),
            "headers_to_add": [
                header("www-authenticate", 'Cookie realm="wardgate"'),
                header(
                    "set-cookie", f"{cookie}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax{secure}"
                ),
                header("cache-control", "no-store"),
            ],
        },
        {
            "filter": _cel(_denied_by(ROLES_POLICY)),
            "body_format_override": _body("forbidden", "your roles do not allow this route"),
        },
    ]


# --- the JWT identity script -------------------------------------------------------------------

# What ext_authz does with a verified token's claims (domain/tokens.py ``_identity``), for the
# tokens Envoy verified: the user (a string of visible ASCII, at most 256 characters: anything
# else is left to ext_authz, which also takes non-ASCII names), the roles (a list of strings,
# or one string split at spaces and commas; roles a route could never name dropped; at most
# 64), an ``iat`` not in the future. It finds the Issuer's claim names in the payload's key
# (``ISSUER_PAYLOAD``). Anything it does not accept it leaves alone: ext_authz decides.
JWT_IDENTITY_LUA = r"""
local ROLE = "^[A-Za-z0-9._:-]+$"

local function usable_user(user)
  if type(user) ~= "string" or #user == 0 or #user > 256 then return false end
  if string.find(user, "[^ -~]") then return false end  -- visible ASCII and spaces only
  return string.sub(user, 1, 1) ~= " " and string.sub(user, -1) ~= " "
end

local function roles_of(value)
  local items = {}
  if value == nil then return items end
  if type(value) == "string" then
    for item in string.gmatch(value, "[^ ,]+") do items[#items + 1] = item end
  elseif type(value) == "table" then
    if next(value) ~= nil and #value == 0 then return nil end
    for _, item in ipairs(value) do
      if type(item) ~= "string" then return nil end
      items[#items + 1] = item
    end
  else
    return nil
  end
  local out = {}
  for _, role in ipairs(items) do
    if #out < 64 and #role <= 64 and string.find(role, ROLE) then out[#out + 1] = role end
  end
  return out
end

local function now()
  if os ~= nil and os.time ~= nil then return os.time() end
  return nil
end

function envoy_on_request(handle)
  local verified = handle:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  if verified == nil then return end
  for key, payload in pairs(verified) do
    local user_claim, roles_claim, skew = string.match(key, "^jwt|([^|]+)|([^|]+)|(%d+)$")
    if user_claim ~= nil and type(payload) == "table" then
      local user = payload[user_claim]
      if not usable_user(user) then return end
      local iat, clock = payload["iat"], now()
      if iat ~= nil and (type(iat) ~= "number" or clock == nil or iat > clock + tonumber(skew)) then
        return
      end
      local roles = roles_of(payload[roles_claim])
      if roles == nil then return end
      local csv = table.concat(roles, ",")
      local headers = handle:headers()
      headers:replace("x-user-id", user)
      headers:replace("x-user-roles", csv)
      headers:replace("x-auth-method", "jwt")
      local meta = handle:streamInfo():dynamicMetadata()
      meta:set("wardgate.identity", "user", user)
      meta:set("wardgate.identity", "roles", "," .. csv .. ",")
      meta:set("wardgate.identity", "method", "jwt")
      return
    end
  end
end
"""


def issuer_payload_key(user_claim: str, roles_claim: str, skew: float) -> str:
    return ISSUER_PAYLOAD.format(user=user_claim, roles=roles_claim, skew=int(skew))


def ticket_headers() -> list[dict[str, str]]:
    """The ticket's claims Envoy copies to request headers (verified tickets only; the same
    headers a client sends are removed first)."""
    return [
        {"header_name": "x-user-id", "claim_name": "sub"},
        {"header_name": "x-user-roles", "claim_name": "rls"},
        {"header_name": "x-auth-method", "claim_name": "am"},
        {"header_name": TICKET_SID_HEADER, "claim_name": "sid"},
    ]
