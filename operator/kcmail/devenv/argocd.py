"""Run the Argo CD health checks in ``argocd/`` the way Argo CD runs them, in a real Lua 5.1.

Argo CD evaluates a health script with gopher-lua (Lua 5.1): the object is the global ``obj`` and the
chunk returns a table whose ``status`` and ``message`` become the resource's health. Scripts given in
``argocd-cm`` run without Lua's standard libraries except base, table, package and a reduced os
(``util/lua/lua.go`` in argoproj/argo-cd), so this runner removes the others, including the string
metatable: a script that calls ``string.format`` or ``s:sub`` fails here as it would in Argo CD.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CUSTOMIZATIONS = REPO / "argocd" / "resource_customizations"
GROUP = "kcmail.io"
KINDS = ("MailConfig", "KeycloakConnection", "ClusterKeycloakConnection")
# gitops-engine's health.HealthStatusCode values; anything else Argo CD shows as Unknown.
VALID_STATUSES = frozenset({"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"})
INVALID_STATUS_MESSAGE = "Lua returned an invalid health status"

# Libraries Argo CD does not open for argocd-cm scripts, and os functions it leaves out.
_CLOSED = ("string", "io", "math", "coroutine", "debug", "dofile", "loadfile")
_SAFE_OS = ("clock", "date", "difftime", "time")


@dataclass(frozen=True)
class Health:
    status: str
    message: str


@dataclass(frozen=True)
class HealthCase:
    kind: str
    input_path: Path
    expected: Health


def script_path(kind: str) -> Path:
    return CUSTOMIZATIONS / GROUP / kind / "health.lua"


def argocd_cm_key(kind: str) -> str:
    """The ``argocd-cm`` key that carries a kind's health script."""
    return f"resource.customizations.health.{GROUP}_{kind}"


def cases(kind: str) -> list[HealthCase]:
    """The cases of a kind's ``health_test.yaml``, in Argo CD's own format."""
    folder = CUSTOMIZATIONS / GROUP / kind
    tests = yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]
    return [HealthCase(kind=kind, input_path=folder / test["inputPath"],
                       expected=Health(test["healthStatus"]["status"], test["healthStatus"].get("message", "")))
            for test in tests]


def evaluate(script: str, obj: Mapping[str, Any]) -> Health:
    """The health ``script`` returns for ``obj``, as Argo CD would read it."""
    from lupa import lua51  # a test dependency; only the tests evaluate health scripts

    lua = lua51.LuaRuntime(unpack_returned_tuples=False)
    _sandbox(lua)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(script)
    if lua51.lua_type(result) != "table":
        raise TypeError(f"expect table output from Lua script, not {lua51.lua_type(result) or 'nil'}")
    status, message = result["status"], result["message"]
    if status not in VALID_STATUSES:
        return Health("Unknown", INVALID_STATUS_MESSAGE)
    return Health(str(status), "" if message is None else str(message))


def _sandbox(lua: Any) -> None:
    # The string metatable gives strings their methods; without the string library Argo CD has none.
    lua.execute("debug.setmetatable('', nil)")
    lua_globals = lua.globals()
    safe_os = lua.table_from({name: lua_globals.os[name] for name in _SAFE_OS})
    for name in _CLOSED:
        lua_globals[name] = None
    lua_globals.os = safe_os


def _to_lua(lua: Any, value: Any) -> Any:
    """JSON-shaped Python values as Lua values, the way Argo CD's decodeValue converts an object."""
    if isinstance(value, Mapping):
        return lua.table_from({key: _to_lua(lua, item) for key, item in value.items() if item is not None})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, item) for item in value])
    if isinstance(value, bool | str | int | float):
        return value
    # YAML timestamps and the like reach Argo CD as JSON strings.
    return str(value)
