"""Rules that Envoy enforces on its own: ``enforce: local``, and the local bound of every
``enforce: quota`` rule (docs/DECISIONS.md 50, 51).

One ``local_ratelimit`` filter, ``wardgate.local_limits``, on at the listener and configured
per route (its own per-route configuration, read when the filter runs: never a per-route
on/off switch, DECISIONS 27). That configuration carries its own actions (``rate_limits``),
so the route's rate-limit actions, which the exact check and the guard read, hold only the
rules wardgate decides: a route whose rules are all local or quota makes no callout.

The client comes from what the request carries when the filter runs, after ext_authz:
``x-user-id`` (set by ext_authz, or by whatever establishes identity natively, and stripped
from what the client sent by the listener's first filters), ``x-auth-method: api_key`` with it
for API keys, the client address Envoy routes by (an IPv6 client as its /64, as the exact
check counts it) and request headers. A rule whose value is missing does not apply.

Each distinct value is a bucket, shared by the Envoy's workers; a route keeps at most
``clients`` of them (least recently used first out). A ``local`` rule's bucket holds the
rule's requests and refills at its rate (token_bucket) or all at once every period
(fixed_window, on Envoy's clock). A quota rule's bound is the local guard's bucket for the
rule: what the rule can allow one client at once, refilled at its rate; it caps what an
Envoy admits before its first lease and while wardgate cannot be reached.
"""

from __future__ import annotations

import math
from typing import Any

# Importing it registers the message type that "@type" below refers to.
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2  # noqa: F401

from wardgate.domain.documents import RateLimit
from wardgate.domain.quota import local_bound
from wardgate.domain.ratelimit import RULE_KEY
from wardgate.xds.local_guard import MAX_TOKENS, TICK_MS, token_bucket
from wardgate.xds.typeurls import T_LOCAL_RATELIMIT

F_LOCAL_LIMITS = "wardgate.local_limits"
STAT_PREFIX = "wardgate_local"
USER_HEADER = "x-user-id"
METHOD_HEADER = "x-auth-method"
_ALL = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}

Rules = list[tuple[str, RateLimit]]  # (the rule's wg_rule value, the rule)


def _client_actions(rule: RateLimit) -> list[dict[str, Any]]:
    """The actions that name the client, after the rule's own entry."""
    actions: list[dict[str, Any]] = []
    for dim in rule.dimensions:
        if dim == "ip":
            # The address Envoy routes by (X-Forwarded-For with trusted hops); an IPv6 client
            # holds a /64, so it counts as one.
            actions.append(
                {"masked_remote_address": {"v4_prefix_mask_len": 32, "v6_prefix_mask_len": 64}}
            )
        elif dim == "user":
            actions.append(
                {"request_headers": {"header_name": USER_HEADER, "descriptor_key": "user"}}
            )
        elif dim == "api_key":
            # Only requests authenticated by an API key; x-user-id then holds the key's name.
            actions.append(
                {
                    "header_value_match": {
                        "descriptor_key": "auth_method",
                        "descriptor_value": "api_key",
                        "expect_match": True,
                        "headers": [{"name": METHOD_HEADER, "string_match": {"exact": "api_key"}}],
                    }
                }
            )
            actions.append(
                {"request_headers": {"header_name": USER_HEADER, "descriptor_key": "api_key"}}
            )
        elif dim.startswith("header:"):
            name = dim.split(":", 1)[1]
            actions.append({"request_headers": {"header_name": name, "descriptor_key": dim}})
    return actions


def _entries(value: str, rule: RateLimit) -> list[dict[str, str]]:
    """The configured descriptor for these actions: the rule exactly, each client entry a
    wildcard (one bucket per distinct value) except the API-key marker."""
    entries = [{"key": RULE_KEY, "value": value}]
    for action in _client_actions(rule):
        kind, spec = next(iter(action.items()))
        if kind == "masked_remote_address":
            entries.append({"key": "masked_remote_address", "value": ""})
        elif kind == "header_value_match":
            entries.append({"key": spec["descriptor_key"], "value": spec["descriptor_value"]})
        else:
            entries.append({"key": spec["descriptor_key"], "value": ""})
    return entries


def _enforced(rules: Rules) -> Rules:
    return [(v, r) for v, r in rules if r.enforce in ("local", "quota")]


def local_actions(rules: Rules) -> list[dict[str, Any]]:
    """The actions for a route's local and quota rules: one descriptor each."""
    return [
        {
            "actions": [
                {"generic_key": {"descriptor_key": RULE_KEY, "descriptor_value": value}},
                *_client_actions(rule),
            ],
        }
        for value, rule in _enforced(rules)
    ]


def local_bucket(rule: RateLimit) -> dict[str, Any]:
    """An ``enforce: local`` rule's bucket: the rule's requests; refilled at its rate (never
    slower, ``token_bucket``) or all at once every period."""
    if rule.algorithm == "fixed_window":
        count = min(rule.requests, MAX_TOKENS)
        return {
            "max_tokens": count,
            "tokens_per_fill": count,
            "fill_interval": f"{rule.period_seconds}s",
        }
    return token_bucket(rule.requests, rule.period_seconds)


def quota_bound(rule: RateLimit) -> dict[str, Any]:
    """A quota rule's local bound: what the rule can allow one client at once (twice the
    requests for a fixed window, the requests and one for a token bucket), refilled at the
    rule's rate. Leases never exceed it, so it decides only without one."""
    bucket = token_bucket(rule.requests, rule.period_seconds)
    bucket["max_tokens"] = min(MAX_TOKENS, local_bound(rule.requests, rule.algorithm))
    return bucket


def _wait(rule: RateLimit) -> int:
    """Seconds until a refused client's bucket has a token again, at most."""
    if rule.enforce == "local" and rule.algorithm == "fixed_window":
        return rule.period_seconds
    return max(1, math.ceil(rule.period_seconds / rule.requests))


def route_local_limits(rules: Rules, *, clients: int) -> dict[str, Any] | None:
    """The filter's per-route configuration for a route's local and quota rules (None when it
    has neither). Routes whose rules are all local get Envoy's ``x-ratelimit-*`` headers on
    every answer (the bucket that decided); otherwise the exact check or the quota sets them
    and this filter's 429 carries fixed ones, those of the rule with the slowest refill."""
    enforced = _enforced(rules)
    if not enforced:
        return None
    descriptors = [
        {
            "entries": _entries(value, rule),
            "token_bucket": local_bucket(rule) if rule.enforce == "local" else quota_bound(rule),
        }
        for value, rule in enforced
    ]
    tightest = max((r for _, r in enforced), key=lambda r: r.period_seconds / r.requests)
    wait = str(_wait(tightest))
    headers = {"retry-after": wait}
    all_local = all(r.enforce == "local" for _, r in rules)
    if not all_local:
        headers |= {
            "x-ratelimit-limit": str(tightest.requests),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": wait,
        }
    config: dict[str, Any] = {
        "@type": T_LOCAL_RATELIMIT,
        "stat_prefix": STAT_PREFIX,
        "rate_limits": local_actions(rules),
        # Required per route; never limits: only the descriptors' buckets do.
        "token_bucket": {
            "max_tokens": MAX_TOKENS,
            "tokens_per_fill": MAX_TOKENS,
            "fill_interval": f"{TICK_MS / 1000:.3f}s",
        },
        "filter_enabled": {**_ALL, "runtime_key": "wardgate.local.enabled"},
        "filter_enforced": {**_ALL, "runtime_key": "wardgate.local.enforced"},
        "descriptors": descriptors,
        "always_consume_default_token_bucket": False,
        "max_dynamic_descriptors": clients,
        "response_headers_to_add": [
            {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for k, v in headers.items()
        ],
    }
    if all_local:
        config["enable_x_ratelimit_headers"] = "DRAFT_VERSION_03"
    return config


def local_limits_filter() -> dict[str, Any]:
    """The listener's filter: does nothing unless a route configures it."""
    return {
        "name": F_LOCAL_LIMITS,
        "typed_config": {"@type": T_LOCAL_RATELIMIT, "stat_prefix": STAT_PREFIX},
    }
