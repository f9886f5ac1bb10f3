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
def users_create(name: UserArg) -> None:
    """Create a user (then give them a token: hwnas tokens create NAME)."""
    from hwnas.api import create_user

    user = create_user(db(), name)
    console.print(f"created user '{user.name}'")


@users_app.command("list")
def users_list() -> None:
    from hwnas.api import list_users

    table = Table("user", "live tokens", "created")
    for u in list_users(db()):
        table.add_row(u.name, str(u.tokens), f"{u.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


@tokens_app.command("create")
def tokens_create(name: UserArg, label: Annotated[str | None, typer.Option(help="What the token is for")] = None
                  ) -> None:
    """Print a new bearer token for a user. Only its hash is stored: copy it now."""
    from hwnas.api import create_token

    typer.echo(create_token(db(), name, label=label))


@tokens_app.command("revoke")
def tokens_revoke(name: UserArg) -> None:
    """Revoke all of a user's tokens."""
    from hwnas.api import revoke_tokens

    console.print(f"revoked {revoke_tokens(db(), name)} token(s) of '{name}'")
