"""The `hwnas` command line (`hwnas.cli`, folder `nas/cli/`): a face over the library; nothing imports it.

Errors from hwnas reach the user as one line and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from hwnas.cli._latency import devices_app, kernels_app, latency_app
from hwnas.cli._quickstart import quickstart_command
from hwnas.cli._search import export_command, search_app
from hwnas.cli._service import serve_command, tokens_app, users_app
from hwnas.cli._subnet import subnet_app
from hwnas.cli._supernet import data_app, spaces_app, supernet_app
from hwnas.exceptions import HwnasError

__all__ = ["app", "main"]

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Hardware-aware neural architecture search for Transformers (HAT).")


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"hwnas {version('hwnas')}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print hwnas's version and exit")] = False) -> None:
    """Hardware-aware neural architecture search for Transformers (HAT)."""


app.add_typer(spaces_app, name="spaces")
app.add_typer(supernet_app, name="supernet")
app.add_typer(data_app, name="data")
app.add_typer(subnet_app, name="subnet")
app.add_typer(devices_app, name="devices")
app.add_typer(kernels_app, name="kernels")
app.add_typer(latency_app, name="latency")
app.add_typer(search_app, name="search")
app.command("export")(export_command)
app.command("quickstart")(quickstart_command)
app.command("serve")(serve_command)
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")


def main() -> None:
    try:
        app()
    except HwnasError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
