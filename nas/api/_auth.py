"""The service's side of authentication: a token cache, the throttle on failed token checks, and the one
token check of the API and the dashboard. Users, roles and tokens themselves live in `hwnas.db`."""

from __future__ import annotations

import collections
import threading
import time

from starlette.requests import Request

from hwnas.db import Database, authenticate, hash_token
from hwnas.exceptions import AuthError, HwnasError


class ThrottledError(HwnasError):
    """Too many failed token checks from one client (HTTP 429)."""


class TokenCache:
    """token SHA-256 -> (user, until): a status poll costs no token query. A revoked token keeps working for
    at most `ttl_s` seconds on an API process that saw it just before."""

    def __init__(self, ttl_s: float = 10.0, max_entries: int = 10_000):
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[str, tuple[str, float]] = {}

    def get(self, token: str) -> str | None:
        hit = self._entries.get(hash_token(token))
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def forget(self, token: str) -> None:
        self._entries.pop(hash_token(token), None)

    def clear(self) -> None:  # revoked by id: the hash is not at hand, so every token is asked again
        self._entries.clear()

    def put(self, token: str, user: str) -> None:
        if len(self._entries) >= self.max_entries:  # bounded: forget everything rather than grow
            self._entries.clear()
        self._entries[hash_token(token)] = (user, time.monotonic() + self.ttl_s)


class AuthThrottle:
    """Failed token checks per client over the last minute: past `per_minute` the client's checks are refused
    (429) until its oldest failure is a minute old, so tokens cannot be guessed at request speed. One process's
    memory, bounded: behind several API processes the limit holds per process."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, max_clients: int = 10_000):
        self.per_minute, self.max_clients = per_minute, max_clients
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        with self._lock:
            recent = self._recent(client)
            if recent is not None and len(recent) >= self.per_minute:
                wait_s = self.WINDOW_S - (time.monotonic() - recent[0])
                raise ThrottledError(f"too many failed logins from this client: try again in {max(1, round(wait_s))} s")

    def failed(self, client: str) -> None:
        with self._lock:
            if len(self._failures) >= self.max_clients:
                self._failures.clear()
            self._recent(client)  # drop what fell out of the window first
            self._failures.setdefault(client, collections.deque()).append(time.monotonic())

    def _recent(self, client: str) -> collections.deque[float] | None:
        recent = self._failures.get(client)
        if recent is not None:
            while recent and time.monotonic() - recent[0] > self.WINDOW_S:
                recent.popleft()
        return recent


def client_of(request: Request) -> str:
    """Who failed logins are counted against: the peer address (behind a proxy, uvicorn's --forwarded-allow-ips
    makes it the client's)."""
    return request.client.host if request.client else ""


def throttled_authenticate(db: Database, token: str, throttle: AuthThrottle, client: str) -> str:
    """`authenticate`, refused before any lookup for a `client` past its failures; each failure counts."""
    throttle.check(client)
    try:
        return authenticate(db, token)
    except AuthError:
        throttle.failed(client)
        raise


async def user_for_token(db: Database, cache: TokenCache, token: str, *, throttle: AuthThrottle | None = None,
                         client: str = "") -> str:
    """`authenticate` behind the cache, off the event loop; the one token check of the API and the dashboard.
    With a `throttle`, through `throttled_authenticate`."""
    from fastapi.concurrency import run_in_threadpool

    user = cache.get(token)
    if user is None:
        if throttle is None:
            user = await run_in_threadpool(authenticate, db, token)
        else:
            user = await run_in_threadpool(throttled_authenticate, db, token, throttle, client)
        cache.put(token, user)
    return user
