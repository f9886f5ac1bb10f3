"""The hwnas service: REST API and dashboard (`hwnas serve`), users and tokens, job launchers.

    from hwnas.api import ServiceSettings, create_app
    app = create_app(settings=ServiceSettings(db_url="postgresql://hwnas@db/hwnas", ray_address="head:6380"))
"""

from hwnas.api._app import create_app
from hwnas.api._auth import AuthError, UserInfo, authenticate, create_token, create_user, list_users, revoke_tokens
from hwnas.api._launch import Launcher, RayLauncher, reconcile, run_export
from hwnas.api._settings import ServiceSettings

__all__ = [
    "AuthError",
    "Launcher",
    "RayLauncher",
    "ServiceSettings",
    "UserInfo",
    "authenticate",
    "create_app",
    "create_token",
    "create_user",
    "list_users",
    "reconcile",
    "revoke_tokens",
    "run_export",
]
