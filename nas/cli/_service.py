"""`hwnas serve`, `hwnas users ...`, `hwnas tokens ...`: run the API; manage who may use it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from hwnas.cli._common import console, db, settings

users_app = typer.Typer(no_args_is_help=True, help="Users of the service (admin).")
tokens_app = typer.Typer(no_args_is_help=True, help="Bearer tokens of the service's users (admin).")
UserArg = Annotated[str, typer.Argument(help="User name")]


def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    db_url: Annotated[str | None, typer.Option("--db", help="Database URL (default: $HWNAS_DB_URL or SQLite "
                                                            "under $HWNAS_HOME)")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster running the jobs (default: "
                                                                          "$HWNAS_RAY_ADDRESS, $RAY_ADDRESS or a "
                                                                          "local Ray)")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run the REST API and dashboard; search jobs run on Ray, never in this process."""
    import uvicorn

    from hwnas.api import create_app
    from hwnas.db import Database
    from hwnas.jobs import RayLauncher

    overrides = {k: v for k, v in (("db_url", db_url), ("ray_address", ray_address)) if v}
    current = settings().model_copy(update=overrides)
    # Database and Ray first, on this (the main) thread: a bad URL or an unreachable cluster is one line here,
    # not a failed startup inside uvicorn; and a local Ray lives as long as this thread (see create_app).
    with Database(current.database_url()) as database:
        url = database.url
    launcher = RayLauncher(url, address=current.ray_address)
    # uvicorn's log config keeps existing loggers: hwnas's (configured by settings()) still reach stderr
    uvicorn.run(create_app(settings=current, launcher=launcher), host=host, port=port, log_level=log_level)


@users_app.command("create")
def users_create(name: UserArg, operator: Annotated[bool, typer.Option(
        "--operator", help="An operator: registers shared devices and sees their trackers and keys")] = False
                 ) -> None:
    """Create a user (then give them a token: hwnas tokens create NAME)."""
    from hwnas.db import create_user

    user = create_user(db(), name, role="operator" if operator else "user")
    console.print(f"created {user.role} '{user.name}'")


@users_app.command("role")
def users_role(name: UserArg, role: Annotated[str, typer.Argument(help="operator or user")]) -> None:
    """Make a user an operator, or an operator a user."""
    from hwnas.db import set_role

    user = set_role(db(), name, role)
    console.print(f"'{user.name}' is now {'an' if user.role == 'operator' else 'a'} {user.role}")


@users_app.command("list")
def users_list() -> None:
    from hwnas.db import list_users

    table = Table("user", "role", "live tokens", "created")
    for u in list_users(db()):
        table.add_row(u.name, u.role, str(u.tokens), f"{u.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


@tokens_app.command("create")
def tokens_create(name: UserArg, label: Annotated[str | None, typer.Option(help="What the token is for")] = None,
                  days: Annotated[float | None, typer.Option(
                      min=0.001, help="Lifetime in days (default: the settings' token_ttl_days, 90)")] = None
                  ) -> None:
    """Print a new bearer token for a user. Only its hash is stored: copy it now."""
    import datetime as dt

    from hwnas.db import create_token

    lifetime = dt.timedelta(days=days if days is not None else settings().token_ttl_days)
    typer.echo(create_token(db(), name, label=label, ttl=lifetime))


@tokens_app.command("list")
def tokens_list(name: Annotated[str | None, typer.Argument(help="A user (default: everyone)")] = None) -> None:
    """Tokens with their id, label, expiry and state (never the tokens themselves: only hashes are kept)."""
    from hwnas.db import list_tokens

    table = Table("id", "user", "label", "created", "expires", "last used", "state")
    for t in list_tokens(db(), name):
        state = "revoked" if t.revoked_at else "live" if t.live() else "expired"
        table.add_row(str(t.id), t.user, (t.label or "") + (" (session)" if t.session else ""),
                      f"{t.created_at:%Y-%m-%d %H:%M}", f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "never",
                      f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "-", state)
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(name: Annotated[str | None, typer.Argument(help="Revoke all of this user's tokens")] = None,
                  token_id: Annotated[int | None, typer.Option("--id", min=1, help="Revoke this one token")] = None
                  ) -> None:
    """Revoke one token (--id, from hwnas tokens list) or all of a user's tokens."""
    from hwnas.db import revoke_token, revoke_tokens
    from hwnas.exceptions import HwnasError

    if (name is None) == (token_id is None):
        raise HwnasError("name a user (all their tokens) or give --id (one token), not both")
    if token_id is not None:
        t = revoke_token(db(), token_id)
        console.print(f"revoked token {t.id} of '{t.user}'")
    else:
        console.print(f"revoked {revoke_tokens(db(), str(name))} token(s) of '{name}'")
