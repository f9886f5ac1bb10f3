"""Users and bearer tokens. A token is shown once, at creation; the database keeps only its SHA-256."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import re
import secrets
import threading
import time

from sqlalchemy import select
from starlette.requests import Request

from hwnas.db import ApiToken, Database, User
from hwnas.exceptions import DuplicateError, HwnasError, NotFoundError

TOKEN_PREFIX = "hwnas_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOUCH_EVERY = dt.timedelta(minutes=1)  # last_used_at is a hint: not one write per request


class AuthError(HwnasError):
    """A missing, unknown or revoked token (HTTP 401)."""


class ThrottledError(HwnasError):
    """Too many failed token checks from one client (HTTP 429)."""


@dataclasses.dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    created_at: dt.datetime
    tokens: int


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_user(db: Database, name: str) -> UserInfo:
    if not _NAME.fullmatch(name):
        raise HwnasError(f"user name '{name}' must be 1-64 letters, digits, '_', '.' or '-', starting alphanumeric")
    with db.session() as s:
        if s.scalar(select(User).where(User.name == name)) is not None:
            raise DuplicateError(f"user '{name}' exists")
        user = User(name=name)
        s.add(user)
        s.flush()
        return UserInfo(user.id, user.name, user.created_at, 0)


def list_users(db: Database) -> list[UserInfo]:
    with db.session() as s:
        return [UserInfo(u.id, u.name, u.created_at, sum(t.revoked_at is None for t in u.tokens))
                for u in s.scalars(select(User).order_by(User.name))]


def create_token(db: Database, user: str, *, label: str | None = None) -> str:
    """A new token for `user` (256 random bits); only its hash is stored, so this is the one time it is seen."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session() as s:
        row = s.scalar(select(User).where(User.name == user))
        if row is None:
            raise NotFoundError(f"no user '{user}' (create it: hwnas users create {user})")
        s.add(ApiToken(user_id=row.id, token_sha256=hash_token(token), label=label))
    return token


def revoke_tokens(db: Database, user: str) -> int:
    """Revoke every live token of `user`; returns how many."""
    with db.session() as s:
        row = s.scalar(select(User).where(User.name == user))
        if row is None:
            raise NotFoundError(f"no user '{user}'")
        live = [t for t in row.tokens if t.revoked_at is None]
        for t in live:
            t.revoked_at = _now()
        return len(live)


def authenticate(db: Database, token: str) -> str:
    """The name of the user holding `token`. Raises AuthError for an unknown or revoked token."""
    with db.session() as s:
        row = s.execute(select(ApiToken, User.name).join(User)
                        .where(ApiToken.token_sha256 == hash_token(token))).first()
        if row is None or row[0].revoked_at is not None:
            raise AuthError("invalid or revoked token")
        tok, name = row
        now = _now()
        if tok.last_used_at is None or now - tok.last_used_at > _TOUCH_EVERY:
            tok.last_used_at = now
        return name


class TokenCache:
    """token SHA-256 -> (user, until): a status poll costs no token query. A revoked token keeps working for
    at most `ttl_s` seconds on an API process that saw it just before."""

    def __init__(self, ttl_s: float = 10.0, max_entries: int = 10_000):
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[str, tuple[str, float]] = {}

    def get(self, token: str) -> str | None:
        hit = self._entries.get(hash_token(token))
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

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
            recent = self._recent(client) or self._failures.setdefault(client, collections.deque())
            recent.append(time.monotonic())

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


async def user_for_token(db: Database, cache: TokenCache, token: str, *, throttle: AuthThrottle | None = None,
                         client: str = "") -> str:
    """`authenticate` behind the cache, off the event loop; the one token check of the API and the dashboard.
    With a `throttle`, a `client` past its failures is refused before any lookup, and each failure counts."""
    from fastapi.concurrency import run_in_threadpool

    user = cache.get(token)
    if user is None:
        if throttle is not None:
            throttle.check(client)
        try:
            user = await run_in_threadpool(authenticate, db, token)
        except AuthError:
            if throttle is not None:
                throttle.failed(client)
            raise
        cache.put(token, user)
    return user
