"""Users, roles and bearer tokens. A token is shown once, at creation; the database keeps only its SHA-256.

Operators run the service: they register the shared devices and see their trackers and keys; users submit
jobs and may register private devices of their own. Every token expires; a user's dashboard login mints a
session token of its own, which logging out revokes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import secrets
from typing import Literal, get_args

from sqlalchemy import select
from sqlalchemy.orm import Session

from hwnas.db._models import ApiToken, User
from hwnas.db._session import Database
from hwnas.exceptions import AuthError, DuplicateError, HwnasError, NotFoundError

__all__ = ["ROLES", "TOKEN_PREFIX", "Role", "TokenInfo", "UserInfo", "authenticate", "create_token", "create_user",
           "hash_token", "list_tokens", "list_users", "revoke_session", "revoke_token", "revoke_tokens", "set_role",
           "user_role"]

TOKEN_PREFIX = "hwnas_"
Role = Literal["operator", "user"]
ROLES: tuple[Role, ...] = get_args(Role)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # no '.': private device names are USER.NAME
_TOUCH_EVERY = dt.timedelta(minutes=1)  # last_used_at is a hint: not one write per request


@dataclasses.dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    created_at: dt.datetime
    tokens: int  # live ones: neither revoked nor expired
    role: Role = "user"


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    id: int
    user: str
    label: str | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None
    session: bool  # minted by a dashboard login; revoked by its logout

    def live(self, now: dt.datetime | None = None) -> bool:
        now = now or _now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _role(role: str) -> Role:
    if role not in ROLES:
        raise HwnasError(f"role '{role}' is not one of {', '.join(ROLES)}")
    return role


def create_user(db: Database, name: str, *, role: str = "user") -> UserInfo:
    if not _NAME.fullmatch(name):
        raise HwnasError(f"user name '{name}' must be 1-64 letters, digits, '_' or '-', starting alphanumeric")
    role_ = _role(role)
    with db.session() as s:
        if s.scalar(select(User).where(User.name == name)) is not None:
            raise DuplicateError(f"user '{name}' exists")
        user = User(name=name, role=role_)
        s.add(user)
        s.flush()
        return UserInfo(user.id, user.name, user.created_at, 0, role_)


def set_role(db: Database, name: str, role: str) -> UserInfo:
    role_ = _role(role)
    with db.session() as s:
        user = _user(s, name)
        user.role = role_
        return _info(user)


def user_role(db: Database, name: str) -> Role:
    with db.session() as s:
        return _role(_user(s, name).role)


def list_users(db: Database) -> list[UserInfo]:
    with db.session() as s:
        return [_info(u) for u in s.scalars(select(User).order_by(User.name))]


def _info(u: User) -> UserInfo:
    now = _now()
    live = sum(_token_info(t, u.name).live(now) for t in u.tokens)
    return UserInfo(u.id, u.name, u.created_at, live, _role(u.role))


def _user(s: Session, name: str) -> User:
    row = s.scalar(select(User).where(User.name == name))
    if row is None:
        raise NotFoundError(f"no user '{name}' (create it: hwnas users create {name})")
    return row


def create_token(db: Database, user: str, *, label: str | None = None, ttl: dt.timedelta = dt.timedelta(days=90),
                 session: bool = False) -> str:
    """A new token for `user` (256 random bits) that expires after `ttl`; only its hash is stored, so this is
    the one time it is seen."""
    if ttl <= dt.timedelta(0):
        raise HwnasError("a token's lifetime must be positive")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session() as s:
        row = _user(s, user)
        s.add(ApiToken(user_id=row.id, token_sha256=hash_token(token), label=label, expires_at=_now() + ttl,
                       session=session))
    return token


def list_tokens(db: Database, user: str | None = None) -> list[TokenInfo]:
    """Tokens of `user` (else everyone's), newest first: what they are for, when they expire, if revoked."""
    with db.session() as s:
        q = select(ApiToken, User.name).join(User).order_by(ApiToken.id.desc())
        if user is not None:
            _user(s, user)
            q = q.where(User.name == user)
        return [_token_info(t, name) for t, name in s.execute(q).all()]


def _token_info(t: ApiToken, user: str) -> TokenInfo:
    return TokenInfo(t.id, user, t.label, t.created_at, t.expires_at, t.last_used_at, t.revoked_at, t.session)


def revoke_token(db: Database, token_id: int, *, user: str | None = None) -> TokenInfo:
    """Revoke token `token_id` (when `user` is given, only if it is theirs: another's is 'no token')."""
    with db.session() as s:
        row = s.execute(select(ApiToken, User.name).join(User).where(ApiToken.id == token_id)).first()
        if row is None or (user is not None and row[1] != user):
            raise NotFoundError(f"no token {token_id}")
        tok, name = row
        if tok.revoked_at is None:
            tok.revoked_at = _now()
        return _token_info(tok, name)


def revoke_session(db: Database, token: str) -> bool:
    """Revoke `token` if it is a dashboard session's (a logout); whether one was revoked."""
    with db.session() as s:
        tok = s.scalar(select(ApiToken).where(ApiToken.token_sha256 == hash_token(token), ApiToken.session.is_(True)))
        if tok is None or tok.revoked_at is not None:
            return False
        tok.revoked_at = _now()
        return True


def revoke_tokens(db: Database, user: str) -> int:
    """Revoke every live token of `user`; returns how many."""
    with db.session() as s:
        live = [t for t in _user(s, user).tokens if t.revoked_at is None]
        for t in live:
            t.revoked_at = _now()
        return len(live)


def authenticate(db: Database, token: str) -> str:
    """The name of the user holding `token`. Raises AuthError for an unknown, revoked or expired token."""
    with db.session() as s:
        row = s.execute(select(ApiToken, User.name).join(User)
                        .where(ApiToken.token_sha256 == hash_token(token))).first()
        if row is None or row[0].revoked_at is not None:
            raise AuthError("invalid or revoked token")
        tok, name = row
        now = _now()
        if tok.expires_at is not None and tok.expires_at <= now:
            raise AuthError(f"token expired at {tok.expires_at:%Y-%m-%d %H:%M} UTC (ask for a new one)")
        if tok.last_used_at is None or now - tok.last_used_at > _TOUCH_EVERY:
            tok.last_used_at = now
        return name
