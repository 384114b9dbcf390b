"""The floor: the same Keycloak change made by a bare script, one GET and one PUT with httpx.

No Kubernetes, no status, no probes: the least any tool applying a realm's SMTP settings must spend.
The admin token is fetched before the clock starts and renewed outside it, so a timed change is exactly
the GET and the PUT.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from kcmail.devenv.certs import client_context
from kcmail.devenv.environment import Environment

# The master realm's tokens live 60 s; renew with this much to spare.
_TOKEN_MARGIN_SECONDS = 15.0
Mutation = Callable[[dict[str, Any]], None]


class _Token:
    def __init__(self, env: Environment) -> None:
        self._env = env
        self.value = ""
        self._expires = 0.0

    def form(self) -> dict[str, str]:
        return {"grant_type": "password", "client_id": "admin-cli", "username": self._env.keycloak_admin_user,
                "password": self._env.keycloak_admin_password}

    def stale(self) -> bool:
        return time.monotonic() > self._expires - _TOKEN_MARGIN_SECONDS

    def store(self, body: dict[str, Any]) -> None:
        self.value = str(body["access_token"])
        self._expires = time.monotonic() + float(body.get("expires_in", 60))

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


_TOKEN_PATH = "/realms/master/protocol/openid-connect/token"


class BareAdmin:
    """One httpx client and one admin token: the bare script."""

    def __init__(self, env: Environment) -> None:
        self._http = httpx.Client(base_url=env.keycloak_url, verify=client_context(env.ca_file), timeout=30)
        self._token = _Token(env)

    def close(self) -> None:
        self._http.close()

    def warm(self) -> None:
        """Renew the admin token if it nears its end; call it before the clock starts."""
        if self._token.stale():
            response = self._http.post(_TOKEN_PATH, data=self._token.form())
            response.raise_for_status()
            self._token.store(response.json())

    def realm(self, realm: str) -> dict[str, Any]:
        self.warm()
        response = self._http.get(f"/admin/realms/{realm}", headers=self._token.header())
        response.raise_for_status()
        return dict(response.json())

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.warm()
        return self._http.request(method, f"/admin/realms{path}", headers=self._token.header(), **kwargs)

    def get_put(self, realm: str, mutate: Mutation) -> float:
        """One timed change: GET the realm, change its ``smtpServer``, PUT it back. Returns seconds."""
        self.warm()
        started = time.perf_counter()
        response = self._http.get(f"/admin/realms/{realm}", headers=self._token.header())
        response.raise_for_status()
        representation = response.json()
        mutate(representation)
        put = self._http.put(f"/admin/realms/{realm}", json=representation, headers=self._token.header())
        put.raise_for_status()
        return time.perf_counter() - started


async def concurrent_get_put(env: Environment, realms: list[str], mutate: Mutation, concurrency: int) -> float:
    """GET+PUT every realm, ``concurrency`` at a time, on one warm admin token; returns the wall time."""
    token = _Token(env)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=env.keycloak_url, verify=client_context(env.ca_file), timeout=60,
                                 limits=limits) as http:
        renewing = asyncio.Lock()

        async def warm() -> None:
            async with renewing:
                if token.stale():
                    response = await http.post(_TOKEN_PATH, data=token.form())
                    response.raise_for_status()
                    token.store(response.json())

        async def change(realm: str) -> None:
            if token.stale():
                await warm()
            response = await http.get(f"/admin/realms/{realm}", headers=token.header())
            response.raise_for_status()
            representation = response.json()
            mutate(representation)
            put = await http.put(f"/admin/realms/{realm}", json=representation, headers=token.header())
            put.raise_for_status()

        slots = asyncio.Semaphore(concurrency)

        async def bounded(realm: str) -> None:
            async with slots:
                await change(realm)

        await warm()
        started = time.perf_counter()
        await asyncio.gather(*(bounded(realm) for realm in realms))
        return time.perf_counter() - started


async def create_realms(env: Environment, realms: list[str], concurrency: int) -> int:
    """Create the realms that do not exist yet, ``concurrency`` at a time; returns how many were new."""
    token = _Token(env)
    async with httpx.AsyncClient(base_url=env.keycloak_url, verify=client_context(env.ca_file), timeout=300) as http:
        renewing = asyncio.Lock()
        slots = asyncio.Semaphore(concurrency)
        created = 0

        async def create(realm: str) -> None:
            nonlocal created
            async with slots:
                async with renewing:
                    if token.stale():
                        response = await http.post(_TOKEN_PATH, data=token.form())
                        response.raise_for_status()
                        token.store(response.json())
                response = await http.post("/admin/realms", json={"realm": realm, "enabled": True},
                                           headers=token.header())
                if response.status_code not in (201, 409):
                    raise RuntimeError(f"creating realm {realm!r}: {response.status_code} {response.text[:200]}")
                created += response.status_code == 201

        await asyncio.gather(*(create(realm) for realm in realms))
        return created
