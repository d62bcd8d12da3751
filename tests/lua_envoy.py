"""Running the Lua scripts wardgate sends to Envoy without Envoy: the script as the listener
carries it, in an embedded Lua (LuaJIT, as in Envoy, when lupa ships it)."""

from __future__ import annotations

import importlib
from typing import Any

import lupa
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)

from wardgate.xds.listener import build_listener
from wardgate.xds.translate import TranslateOptions


def lua_runtime() -> Any:
    """LuaJIT (Envoy's Lua) when lupa ships it, else lupa's default Lua."""
    for flavour in ("luajit21", "luajit20"):
        try:
            module = importlib.import_module(f"lupa.{flavour}")
        except ImportError:
            continue
        return module.LuaRuntime(unpack_returned_tuples=True)
    return lupa.LuaRuntime(unpack_returned_tuples=True)


def sent_script(filter_name: str, opts: TranslateOptions | None = None) -> str:
    """The Lua source of HTTP filter ``filter_name``, as the listener sends it to Envoy."""
    listener = build_listener("127.0.0.1", 10000, opts or TranslateOptions())
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    (found,) = [f for f in hcm.http_filters if f.name == filter_name]
    lua = lua_pb2.Lua()
    assert found.typed_config.Unpack(lua)
    return lua.default_source_code.inline_string
