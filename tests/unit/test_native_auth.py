"""What Envoy is told for the native fast paths (docs/DECISIONS.md 45-49): jwt_authn's
providers and requirements, the revocation list and the gate, the routes' roles, and the
script that accepts Issuer JWTs (run in LuaJIT against a fake of Envoy's handle)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2

from tests.lua_envoy import lua_runtime
from wardgate.domain.cookies import strip_cookie
from wardgate.domain.documents import parse_document
from wardgate.domain.jwks import keys_from_jwks
from wardgate.domain.tickets import PublishedKey, TicketPolicy
from wardgate.domain.tokens import TrustedIssuer
from wardgate.metrics import create_metrics
from wardgate.xds import canonical
from wardgate.xds.listener import strip_cookie_lua
from wardgate.xds.native_auth import (
    GATE_RESULT,
    JWT_IDENTITY_LUA,
    issuer_payload_key,
    local_replies,
    roles_per_route,
    route_filters,
)
from wardgate.xds.native_jwt import JwtConfigPublisher, jwt_config, jwt_resource
from wardgate.xds.revocations import RevocationPublisher, revocations_config, revocations_resource

POLICY = TicketPolicy(ttl=60, skew=5)
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    algo = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(key, rsa.RSAPrivateKey)
        else jwt.algorithms.ECAlgorithm
    )
    return {**algo.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


def ticket_key(kid: str = "wg-1") -> PublishedKey:
    jwk = {**_jwk(EC, kid), "alg": "ES256"}
    return PublishedKey(kid, jwk, 1.0, 2.0)


def issuer(name: str = "corp", **extra: Any) -> TrustedIssuer:
    base: dict[str, Any] = {
        "name": name,
        "issuer": f"https://{name}.example",
        "audiences": ("api",),
        "keys": tuple(keys_from_jwks({"keys": [_jwk(RSA, "r1"), _jwk(EC, "e1")]})),
    }
    return TrustedIssuer(**{**base, **extra})


def typed(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "@type"}


def parsed_jwt(config: dict[str, Any]) -> config_pb2.JwtAuthentication:
    return canonical.parse(typed(config), config_pb2.JwtAuthentication())


# --- jwt_authn ----------------------------------------------------------------------------


def test_without_keys_or_issuers_nothing_is_verified() -> None:
    config = jwt_config([], [], POLICY)
    assert config["providers"] == {}
    assert set(config["requirement_map"]) == {"session", "jwt", "any"}
    assert all(r == {"allow_missing_or_failed": {}} for r in config["requirement_map"].values())
    parsed_jwt(config)


def test_the_ticket_provider_reads_the_cookie_only_and_pins_lifetime_and_skew() -> None:
    msg = parsed_jwt(jwt_config([ticket_key("a"), ticket_key("b")], [], POLICY))
    ticket = msg.providers["ticket"]
    assert list(ticket.from_cookies) == ["wg_ticket"]
    assert not ticket.from_headers and not ticket.from_params  # never a bearer, never a query
    assert ticket.clock_skew_seconds == 5  # not Envoy's default of 60
    assert ticket.max_lifetime.seconds == 60
    assert ticket.require_expiration and ticket.payload_in_metadata == "wg_ticket"
    assert {(c.claim_name, c.header_name) for c in ticket.claim_to_headers} == {
        ("sub", "x-user-id"),
        ("rls", "x-user-roles"),
        ("am", "x-auth-method"),
        ("sid", "x-wardgate-ticket-sid"),
    }
    keys = json.loads(ticket.local_jwks.inline_string)["keys"]
    assert [k["kid"] for k in keys] == ["a", "b"] and {k["alg"] for k in keys} == {"ES256"}
    session = msg.requirement_map["session"].requires_any.requirements
    assert [r.WhichOneof("requires_type") for r in session] == [
        "provider_name",
        "allow_missing_or_failed",
    ]


def test_issuers_with_keys_are_verified_by_envoy_with_their_algorithms_pinned() -> None:
    hs = issuer("hs", keys=(), secret=b"s" * 40)
    msg = parsed_jwt(jwt_config([ticket_key()], [issuer("corp", skew=0.0), hs], POLICY))
    assert set(msg.providers) == {"ticket", "issuer:corp"}  # the HS256 secret stays home
    corp = msg.providers["issuer:corp"]
    assert corp.issuer == "https://corp.example" and list(corp.audiences) == ["api"]
    assert [(h.name, h.value_prefix) for h in corp.from_headers] == [("authorization", "Bearer ")]
    assert not corp.from_cookies and corp.forward
    assert corp.clock_skew_seconds == 1  # 0 would mean Envoy's 60
    assert corp.payload_in_metadata == issuer_payload_key("sub", "roles", 0)
    algs = {k["kid"]: k["alg"] for k in json.loads(corp.local_jwks.inline_string)["keys"]}
    assert algs == {"r1": "RS256", "e1": "ES256"}  # an RSA key verifies RS256 only
    names = {
        name: [r.provider_name for r in req.requires_any.requirements if r.provider_name]
        for name, req in msg.requirement_map.items()
    }
    assert names == {
        "session": ["ticket"],
        "jwt": ["issuer:corp"],
        "any": ["ticket", "issuer:corp"],
    }


def test_the_jwt_resource_is_deterministic() -> None:
    a = jwt_resource([ticket_key()], [issuer()], POLICY)
    assert a == jwt_resource([ticket_key()], [issuer()], POLICY)
    ext = extension_pb2.TypedExtensionConfig()
    ext.ParseFromString(a)
    assert ext.name == "wardgate.jwt"


class Verifier:
    def __init__(self, issuers: list[TrustedIssuer]) -> None:
        from wardgate.domain.tokens import JwtVerifier

        self.verifier = JwtVerifier(issuers)


class StaticKeys:
    def __init__(self, keys: list[PublishedKey]) -> None:
        self.keys, self.reads = keys, 0

    async def version(self) -> int:
        return len(self.keys)

    async def live(self, *, now: float) -> list[PublishedKey]:
        self.reads += 1
        return list(self.keys)


def test_the_publisher_sends_a_new_configuration_only_when_its_inputs_change() -> None:
    sent: list[bytes] = []
    keys = StaticKeys([ticket_key("a")])
    holder = Verifier([issuer()])
    publisher = JwtConfigPublisher(
        keys=keys,  # type: ignore[arg-type]
        issuers=holder,
        publish=lambda name, data: sent.append(data) or True,
        metrics=create_metrics(),
        policy=POLICY,
        clock=lambda: 100.0,
    )

    async def steps() -> list[bool]:
        out = [await publisher.refresh(), await publisher.refresh()]
        keys.keys.append(ticket_key("b"))  # another process published its key
        out.append(await publisher.refresh())
        holder.verifier = Verifier([]).verifier  # the issuer was deleted
        out.append(await publisher.refresh())
        return out

    assert asyncio.run(steps()) == [True, False, True, True]
    assert len(sent) == 3
    last = extension_pb2.TypedExtensionConfig()
    last.ParseFromString(sent[-1])
    msg = config_pb2.JwtAuthentication()
    last.typed_config.Unpack(msg)
    assert set(msg.providers) == {"ticket"}


# --- the revocation list and the gate ---------------------------------------------------------


def parsed_rbac(config: dict[str, Any]) -> rbac_pb2.RBAC:
    return canonical.parse(typed(config), rbac_pb2.RBAC())


def test_no_revocation_refuses_no_one_and_still_carries_the_gate() -> None:
    msg = parsed_rbac(revocations_config([], cookie="wg_ticket"))
    assert msg.rules.action == msg.rules.DENY and not msg.rules.policies
    assert set(msg.shadow_rules.policies) == {"ticket", "jwt"}
    assert msg.shadow_rules_stat_prefix + "shadow_engine_result" == GATE_RESULT
    assert msg.rules_stat_prefix == "wardgate_revoked."


def test_revoked_sessions_are_a_hash_map_keyed_by_the_ticket_sid_header() -> None:
    sids = ["a" * 32, "b" * 32, "NOT-HEX", "", "c" * 65]
    msg = parsed_rbac(revocations_config(sids, cookie="wg_ticket"))
    tree = msg.matcher.matcher_tree
    assert "HttpRequestHeaderMatchInput" in tree.input.typed_config.type_url
    assert sorted(tree.exact_match_map.map) == ["a" * 32, "b" * 32]  # the rest left out
    action = tree.exact_match_map.map["a" * 32].action
    assert action.name == "wardgate.revoked"
    assert set(msg.shadow_rules.policies) == {"ticket", "jwt"}
    ext = extension_pb2.TypedExtensionConfig()
    ext.ParseFromString(revocations_resource(sids, cookie="wg_ticket"))
    assert ext.name == "wardgate.revocations"


def test_the_gate_sends_writes_and_mixed_credentials_to_ext_authz() -> None:
    gate = revocations_config([], cookie="wg_ticket")["shadow_rules"]["policies"]["ticket"]
    text = json.dumps(gate)
    assert "POST|PUT|PATCH|DELETE" in text  # not_rule: a write is never decided by a ticket
    for header in ("authorization", "x-api-key"):
        assert {"not_id": {"header": {"name": header, "present_match": True}}} in gate[
            "principals"
        ][0]["and_ids"]["ids"]
    assert ".*wg_ticket=.*wg_ticket=.*" in text  # two ticket cookies: ext_authz decides


class Revoked:
    def __init__(self) -> None:
        self.entries: dict[str, float] = {}
        self.counter = 0

    async def version(self) -> int:
        return self.counter

    async def live(self, *, since: float) -> dict[str, float]:
        return {s: t for s, t in self.entries.items() if t >= since}


def test_revocations_are_published_on_change_and_pruned_after_a_tickets_lifetime() -> None:
    now = [1000.0]
    store = Revoked()
    sent: list[bytes] = []
    metrics = create_metrics()
    publisher = RevocationPublisher(
        store=store,
        publish=lambda name, data: sent.append(data) or True,
        metrics=metrics,
        hold=75.0,
        cookie="wg_ticket",
        clock=lambda: now[0],
    )

    def listed() -> list[str]:
        ext = extension_pb2.TypedExtensionConfig()
        ext.ParseFromString(sent[-1])
        msg = rbac_pb2.RBAC()
        ext.typed_config.Unpack(msg)
        return sorted(msg.matcher.matcher_tree.exact_match_map.map)

    async def steps() -> None:
        await publisher.refresh()
        assert listed() == []
        store.entries["a" * 32] = now[0]
        store.counter += 1
        await publisher.refresh()
        assert listed() == ["a" * 32]
        count = len(sent)
        await publisher.refresh()  # nothing changed: nothing sent
        assert len(sent) == count
        now[0] += 75.5  # a ticket minted before the revocation has expired everywhere
        await publisher.refresh()
        assert listed() == []

    asyncio.run(steps())
    assert metrics.revoked_sessions._value.get() == 0


# --- routes --------------------------------------------------------------------------------


def _route(auth: dict[str, Any]) -> Any:
    return parse_document(
        {"kind": "Route", "name": "r", "match": {"prefix": "/r"}, "backend": "b", "auth": auth}
    )


@pytest.mark.parametrize(
    ("auth", "names"),
    [
        ({"require": "none"}, set()),
        ({"require": "api_key", "roles": ["ops"]}, set()),  # ext_authz decides keys
        ({"require": "session"}, {"wardgate.jwt"}),
        ({"require": "session", "roles": ["ops"]}, {"wardgate.jwt", "wardgate.roles"}),
        ({"require": "jwt"}, {"wardgate.jwt", "wardgate.jwt_identity"}),
        (
            {"require": "any", "roles": ["a"]},
            {"wardgate.jwt", "wardgate.jwt_identity", "wardgate.roles"},
        ),
    ],
)
def test_what_a_route_tells_the_native_filters(auth: dict[str, Any], names: set[str]) -> None:
    filters = route_filters(_route(auth))
    assert set(filters) == names
    if "wardgate.jwt" in filters:
        assert filters["wardgate.jwt"]["requirement_name"] == auth["require"]


def test_roles_accept_the_ticket_the_jwt_or_what_ext_authz_established() -> None:
    config = roles_per_route(["admin", "ops"])
    msg = canonical.parse(typed(config), rbac_pb2.RBACPerRoute())
    (policy,) = msg.rbac.rules.policies.values()
    ids = policy.principals[0].not_id.or_ids.ids
    sources = [
        (i.and_ids.ids[0] if i.HasField("and_ids") else i).sourced_metadata.metadata_matcher
        for i in ids
    ]
    assert [(m.filter, [p.key for p in m.path]) for m in sources] == [
        ("envoy.filters.http.jwt_authn", ["wg_ticket", "roles"]),
        ("envoy.filters.http.ext_authz", ["roles"]),
        ("wardgate.identity", ["roles"]),
    ] * 2
    assert sources[1].value.string_match.contains == ",admin,"
    assert sources[3].value.list_match.one_of.string_match.exact == "ops"
    assert msg.rbac.rules.action == msg.rbac.rules.DENY  # named in the reply's details


# --- the cookie strip with two cookies --------------------------------------------------------

HARNESS = """
function(value)
  local list = {value}
  local headers = {}
  function headers:getNumValues(name) return #list end
  function headers:getAtIndex(name, i) return list[i + 1] end
  function headers:remove(name) list = {} end
  function headers:add(name, v) list[#list + 1] = v end
  local handle = {}
  function handle:headers() return headers end
  envoy_on_request(handle)
  return list[1]
end
"""


@pytest.mark.parametrize(
    "header",
    [
        "wg_session=S; wg_ticket=T; a=1",
        "a=1,wg_ticket=T",
        "wg_ticket=T",
        " wg_ticket =T; b=2, wg_session=S",
        "wg_tickets=x; xwg_ticket=y",
    ],
)
def test_neither_gateway_cookie_reaches_an_upstream(header: str) -> None:
    lua = lua_runtime()
    lua.execute(strip_cookie_lua("wg_session", "wg_ticket"))
    out = lua.eval(HARNESS)(header)
    expected = strip_cookie(header, "wg_session", "wg_ticket")
    assert (out or "") == expected
    assert "wg_ticket=T" not in expected and "wg_session=S" not in expected


# --- the JWT identity script ------------------------------------------------------------------

SCRIPT_HARNESS = """
function(payloads)
  local set_headers, set_meta = {}, {}
  local meta = {}
  function meta:get(ns)
    if ns == "envoy.filters.http.jwt_authn" then return payloads end
    return nil
  end
  function meta:set(ns, key, value) set_meta[ns .. "/" .. key] = value end
  local info = {}
  function info:dynamicMetadata() return meta end
  local headers = {}
  function headers:replace(name, value) set_headers[name] = value end
  local handle = {}
  function handle:streamInfo() return info end
  function handle:headers() return headers end
  envoy_on_request(handle)
  return set_headers, set_meta
end
"""
KEY = issuer_payload_key("sub", "groups", 30)


def identity(payloads: dict[str, Any] | None) -> tuple[dict[str, str], dict[str, str]]:
    lua = lua_runtime()
    lua.execute(JWT_IDENTITY_LUA)

    def table(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([table(v) for v in value])
        return value

    headers, meta = lua.eval(SCRIPT_HARNESS)(table(payloads) if payloads is not None else None)
    return dict(headers.items()), dict(meta.items())


def test_a_verified_jwt_becomes_the_identity_as_ext_authz_would_make_it() -> None:
    headers, meta = identity(
        {KEY: {"sub": "ada", "groups": ["reader", "x,admin", "has space", "ok:role"], "iat": 1}}
    )
    assert headers == {"x-user-id": "ada", "x-user-roles": "reader,ok:role", "x-auth-method": "jwt"}
    assert meta == {
        "wardgate.identity/user": "ada",
        "wardgate.identity/roles": ",reader,ok:role,",
        "wardgate.identity/method": "jwt",
    }
    headers, _ = identity({KEY: {"sub": "ada", "groups": "a b,c"}})
    assert headers["x-user-roles"] == "a,b,c"
    headers, _ = identity({KEY: {"sub": "ada"}})
    assert headers["x-user-roles"] == ""


@pytest.mark.parametrize(
    "payloads",
    [
        None,
        {},
        {"wg_ticket": {"sub": "ada"}},  # a ticket is Envoy's own business, not the script's
        {KEY: {"sub": "ada\r\nx-user-roles: admin"}},
        {KEY: {"sub": "ada\u0000"}},
        {KEY: {"sub": "\u00e9l\u00e8ve"}},  # non-ASCII: ext_authz decides (it accepts it)
        {KEY: {"sub": " ada"}},
        {KEY: {"sub": ""}},
        {KEY: {"sub": "a" * 257}},
        {KEY: {"sub": 42}},
        {KEY: {"sub": "ada", "groups": {"admin": True}}},
        {KEY: {"sub": "ada", "groups": ["a", 1]}},
        {KEY: {"sub": "ada", "iat": 10**12}},  # issued in the future
        {KEY: {"sub": "ada", "iat": "1"}},
    ],
)
def test_anything_the_script_does_not_accept_is_left_to_ext_authz(payloads: Any) -> None:
    assert identity(payloads) == ({}, {})


def test_gate_result_key_is_where_rbac_writes_its_shadow_verdict() -> None:
    assert GATE_RESULT == "wardgate_native.shadow_engine_result"


@pytest.mark.parametrize(
    ("cookie", "secure"),
    [("wg_ticket", False), ("__Host-wg_ticket", True), ("__Secure-t", True)],
)
def test_the_revoked_reply_clears_a_prefixed_ticket_with_secure(cookie: str, secure: bool) -> None:
    """With TLS the ticket is ``__Host-wg_ticket`` (settings._with_tls): a browser ignores a
    Set-Cookie for it without Secure, so the revoked ticket would not be cleared."""
    revoked = local_replies(cookie)[0]
    (value,) = [
        h["header"]["value"]
        for h in revoked["headers_to_add"]
        if h["header"]["key"] == "set-cookie"
    ]
    assert value.startswith(f"{cookie}=; Max-Age=0; Path=/;")
    assert value.endswith("; Secure") == secure
