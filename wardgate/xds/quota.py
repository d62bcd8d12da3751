"""Rules with ``enforce: quota`` in Envoy: its ``rate_limit_quota`` filter (RLQS), with the
buckets' leases from wardgate (``extproc/quota.py``; docs/DECISIONS.md 51-53).

Envoy 1.40 takes no per-route configuration of that filter (envoy#46929: refused at load), so
the route tells it which rule applies through a header of its own:

- ``wardgate.quota_keys`` (header_mutation), right after ext_authz: at the listener it
  removes every ``x-wardgate-quota-<slot>`` a client sent; a route with quota rules sets
  them, one per rule, to the rule's ``wg_rule`` value (its per-route configuration, read when
  the filter runs, on the route the scope key chose: never a per-route on/off switch,
  DECISIONS 27). The virtual host removes them before the upstream.
- ``wardgate.quota.<slot>``, one ``rate_limit_quota`` filter per slot, whose configuration
  comes over ECDS: a matcher from the slot's header to the rule's bucket settings. The
  bucket id is the rule and the client (``x-user-id``; for ``by: api_key`` only requests
  that ``x-auth-method: api_key`` marks), so one bucket per rule and client; a request
  without the value is not counted (the rule does not apply). All slots share Envoy's one
  stream to wardgate and its bucket cache (the same server and domain).

What Envoy 1.40 does, and what follows (checked against its binary):

- A bucket without a lease yet follows ``no_assignment_behavior``; a token bucket there
  crashes Envoy at the bucket's second request (the bucket has no limiter), and ``DENY_ALL``
  refuses every client's first request. So it is ``ALLOW_ALL``, and the route's local bound
  (``local_limits.quota_bound``) caps what passes before the lease arrives (one round trip)
  and once leases have expired (wardgate unreachable for ``LEASE_TTL_S``).
- Reports go every 5 s whatever ``reporting_interval`` says; durations are whole seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

# Importing these registers the message types that "@type" below refers to.
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.rate_limit_quota.v3 import rate_limit_quota_pb2  # noqa: F401
from envoy.type.matcher.v3 import http_inputs_pb2  # noqa: F401

from wardgate.domain.doc_base import QUOTA_HEADERS, QUOTA_SLOTS
from wardgate.domain.documents import RateLimit, Route
from wardgate.domain.quota import REPORT_INTERVAL_S, retry_after
from wardgate.domain.ratelimit import RULE_KEY, encode_rule
from wardgate.xds import canonical
from wardgate.xds.local_limits import METHOD_HEADER, USER_HEADER
from wardgate.xds.translate import GRPC_CLUSTER
from wardgate.xds.typeurls import T_HEADER_MUTATION, T_HEADER_MUTATION_ROUTE, of

F_QUOTA_KEYS = "wardgate.quota_keys"
QUOTA_FILTERS = tuple(f"wardgate.quota.{slot}" for slot in range(QUOTA_SLOTS))
RLQS_DOMAIN = "wardgate"
T_RLQS = of("envoy.extensions.filters.http.rate_limit_quota.v3.RateLimitQuotaFilterConfig")
T_RLQS_BUCKET = of("envoy.extensions.filters.http.rate_limit_quota.v3.RateLimitQuotaBucketSettings")
T_HEADER_INPUT = of("envoy.type.matcher.v3.HttpRequestHeaderMatchInput")
_ALL = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
# The placeholder's one entry (a matcher map needs one): a value no route sets.
_NO_RULE = "-"

Rules = list[tuple[str, RateLimit]]


def route_rules(route: Route) -> Rules:
    """The route's rules, each with its ``wg_rule`` value (``domain/ratelimit.py``): the rule
    id (``<route>#<index>``, or ``key:<key>`` for a counter shared by routes) and numbers."""
    out = []
    for i, rule in enumerate(route.rate_limits):
        rule_id = f"key:{rule.key}" if rule.key else f"{route.name}#{i}"
        value = encode_rule(
            rule_id, rule.requests, rule.period_seconds, rule.algorithm, rule.shadow, rule.tiers
        )
        out.append((value, rule))
    return out


def quota_slots(rules: Rules) -> list[tuple[int, str, RateLimit]]:
    """The route's quota rules, each with its slot (its place among them)."""
    quota = [(v, r) for v, r in rules if r.enforce == "quota"]
    return [(slot, v, r) for slot, (v, r) in enumerate(quota)]


def _header_input(name: str, header: str) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": T_HEADER_INPUT, "header_name": header}}


def _deny_headers(rule: RateLimit) -> list[dict[str, Any]]:
    wait = str(retry_after(rule.requests, rule.period_seconds))
    headers = {
        "retry-after": wait,
        "x-ratelimit-limit": str(rule.requests),
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": wait,
    }
    return [{"header": {"key": k, "value": v}} for k, v in headers.items()]


def _bucket_settings(value: str, rule: RateLimit) -> dict[str, Any]:
    builder: dict[str, Any] = {RULE_KEY: {"string_value": value}}
    for dim in rule.dimensions:
        if dim in ("user", "api_key"):  # by: api_key: x-user-id holds the key's name
            builder[dim] = {"custom_value": _header_input(dim, USER_HEADER)}
    return {
        "@type": T_RLQS_BUCKET,
        "bucket_id_builder": {"bucket_id_builder": builder},
        "reporting_interval": f"{REPORT_INTERVAL_S}s",
        "no_assignment_behavior": {"fallback_rate_limit": {"blanket_rule": "ALLOW_ALL"}},
        "deny_response_settings": {"response_headers_to_add": _deny_headers(rule)},
    }


def _on_match(value: str, rule: RateLimit) -> dict[str, Any]:
    action = {"action": {"name": "quota", "typed_config": _bucket_settings(value, rule)}}
    if "api_key" not in rule.dimensions:
        return action
    # Only requests that an API key authenticated count by their key.
    return {
        "matcher": {
            "matcher_tree": {
                "input": _header_input("auth_method", METHOD_HEADER),
                "exact_match_map": {"map": {"api_key": action}},
            }
        }
    }


def quota_config(slot: int, rules: Iterable[tuple[str, RateLimit]]) -> dict[str, Any]:
    """The configuration of the slot's filter: its header's value (a rule) to the bucket
    settings of that rule. Without rules, a placeholder that matches no request."""
    by_value = dict(sorted(rules, key=lambda vr: vr[0]))
    table = {v: _on_match(v, r) for v, r in by_value.items()} or {
        _NO_RULE: {"action": {"name": "none", "typed_config": _placeholder_settings()}}
    }
    return {
        "@type": T_RLQS,
        "rlqs_server": {"envoy_grpc": {"cluster_name": GRPC_CLUSTER}},
        "domain": RLQS_DOMAIN,
        "bucket_matchers": {
            "matcher_tree": {
                "input": _header_input("rule", QUOTA_HEADERS[slot]),
                "exact_match_map": {"map": table},
            }
        },
        "filter_enabled": {**_ALL, "runtime_key": "wardgate.quota.enabled"},
        "filter_enforced": {**_ALL, "runtime_key": "wardgate.quota.enforced"},
    }


def _placeholder_settings() -> dict[str, Any]:
    return {
        "@type": T_RLQS_BUCKET,
        "bucket_id_builder": {"bucket_id_builder": {RULE_KEY: {"string_value": _NO_RULE}}},
        "reporting_interval": f"{REPORT_INTERVAL_S}s",
        "no_assignment_behavior": {"fallback_rate_limit": {"blanket_rule": "ALLOW_ALL"}},
    }


def quota_resource(slot: int, rules: Iterable[tuple[str, RateLimit]]) -> bytes:
    """The slot's ECDS resource, serialized deterministically."""
    resource = canonical.parse(
        {"name": QUOTA_FILTERS[slot], "typed_config": quota_config(slot, rules)},
        extension_pb2.TypedExtensionConfig(),
    )
    data: bytes = resource.SerializeToString(deterministic=True)
    return data


@dataclasses.dataclass
class QuotaExtensions:
    """The slots' ECDS resources for a set of routes; the same bytes again while the quota
    rules stay the same."""

    _last: tuple[tuple[tuple[str, str], ...], ...] | None = None
    _bytes: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)

    def resources(self, routes: Iterable[Route]) -> list[tuple[str, bytes]]:
        slots: list[dict[str, RateLimit]] = [{} for _ in range(QUOTA_SLOTS)]
        for route in routes:
            if any(r.enforce == "quota" for r in route.rate_limits):
                for slot, value, rule in quota_slots(route_rules(route)):
                    slots[slot][value] = rule
        shape = tuple(
            tuple(sorted((v, ",".join(r.dimensions)) for v, r in s.items())) for s in slots
        )
        if shape != self._last:
            self._bytes = [
                (QUOTA_FILTERS[slot], quota_resource(slot, slots[slot].items()))
                for slot in range(QUOTA_SLOTS)
            ]
            self._last = shape
        return list(self._bytes)


def route_quota_keys(rules: Rules) -> dict[str, Any] | None:
    """The route's configuration of the keys filter: each quota rule's header set to the
    rule, over whatever the request carried (the listener's configuration removed it)."""
    slots = quota_slots(rules)
    if not slots:
        return None
    return {
        "@type": T_HEADER_MUTATION_ROUTE,
        "mutations": {
            "request_mutations": [
                {
                    "append": {
                        "header": {"key": QUOTA_HEADERS[slot], "value": value},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                }
                for slot, value, _ in slots
            ]
        },
    }


def quota_filters() -> list[dict[str, Any]]:
    """The listener's filters: the keys filter, then one quota filter per slot, each over
    ECDS with a placeholder until its configuration comes (and whenever it cannot)."""
    keys = {
        "name": F_QUOTA_KEYS,
        "typed_config": {
            "@type": T_HEADER_MUTATION,
            "mutations": {"request_mutations": [{"remove": h} for h in QUOTA_HEADERS]},
        },
    }
    return [
        keys,
        *(
            {
                "name": QUOTA_FILTERS[slot],
                "config_discovery": {
                    "config_source": {"ads": {}, "resource_api_version": "V3"},
                    "default_config": quota_config(slot, []),
                    "apply_default_config_without_warming": True,
                    "type_urls": [T_RLQS],
                },
            }
            for slot in range(QUOTA_SLOTS)
        ),
    ]
