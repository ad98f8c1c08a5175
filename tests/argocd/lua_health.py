"""Run an Argo CD health script as Argo CD does, in a real Lua 5.1 interpreter (lupa; Argo CD's gopher-lua is 5.1)."""

from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "values-examples" / "argocd"


def _to_lua(lua, value):
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(script: str, obj: dict) -> dict:
    """`obj` is a global, the script returns {status, message}."""
    from lupa.lua51 import LuaRuntime

    lua = LuaRuntime(unpack_returned_tuples=True)
    assert lua.lua_version == (5, 1)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(script)
    return {"status": result["status"], "message": result["message"]}
