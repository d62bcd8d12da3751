"""The scopes as Envoy is told them: their names, the fixed scope resources, the scope filter
(the key script, first in the chain), the connection manager's ``scoped_routes``, and the
marker routes that send a first segment's requests deeper (docs/ROUTING.md "Scopes")."""

from __future__ import annotations

from wardgate.xds.scope_key import BUCKETS, MAX_DEPTH, SCOPE_HEADER, scope_lua
from wardgate.xds.typeurls import T_LUA

F_SCOPE = "wardgate.scope"  # the Lua filter's name; the markers' metadata is under it
SCOPED_ROUTES_NAME = "wardgate_scopes"


def route_config_name(depth: int, b: int) -> str:
    return f"wardgate_routes_{depth}_{b}"


def scope_name(depth: int, b: int) -> str:
    return f"wardgate_scope_{depth}_{b}"


def marker_route(segment: str, depth: int) -> dict[str, object]:
    """The route that sends requests under ``/segment`` ``depth`` segments deep. Never
    answers when the script works; if it did, a 404."""
    return {
        "name": f"wardgate.scope/{segment}",
        "match": {"path_separated_prefix": f"/{segment}"},
        "metadata": {"filter_metadata": {F_SCOPE: {"depth": depth}}},
        "direct_response": {"status": 404},
    }


def scope_resources() -> list[dict[str, object]]:
    """Every scope, fixed: MAX_DEPTH x BUCKETS, each with its route configuration."""
    return [
        {
            "name": scope_name(d, b),
            "route_configuration_name": route_config_name(d, b),
            "key": {"fragments": [{"string_key": f"{d}:{b}"}]},
        }
        for d in range(1, MAX_DEPTH + 1)
        for b in range(BUCKETS)
    ]


def scope_filter() -> dict[str, object]:
    """The HTTP filter that sets the scope key: first in the chain."""
    return {
        "name": F_SCOPE,
        "typed_config": {
            "@type": T_LUA,
            "default_source_code": {"inline_string": scope_lua()},
        },
    }


def scoped_routes(inline: list[dict[str, object]] | None = None) -> dict[str, object]:
    """The connection manager's ``scoped_routes``: the scope from the key header; scopes and
    their route configurations over ADS, or ``inline`` (static configurations, benchmarks)."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    out: dict[str, object] = {
        "name": SCOPED_ROUTES_NAME,
        "scope_key_builder": {
            "fragments": [{"header_value_extractor": {"name": SCOPE_HEADER, "index": 0}}]
        },
        "rds_config_source": ads,
    }
    if inline is None:
        out["scoped_rds"] = {"scoped_rds_config_source": ads}
    else:
        out["scoped_route_configurations_list"] = {"scoped_route_configurations": inline}
    return out
