"""The hwnas service (`hwnas.api`, folder `nas/api/`): REST API and dashboard (`hwnas serve`); users and tokens
(`hwnas.db`) re-exported for the service's users.

    from hwnas.api import create_app
    from hwnas.settings import Settings
    app = create_app(settings=Settings(db_url="postgresql://hwnas@db/hwnas", ray_address="head:6380"))

Jobs and exports run through `hwnas.jobs`' launchers and reconciler, never in the web process.
"""

from hwnas.api._app import create_app
from hwnas.db import UserInfo, authenticate, create_token, create_user, list_users, revoke_tokens
from hwnas.exceptions import AuthError

__all__ = [
    "AuthError",
    "UserInfo",
    "authenticate",
    "create_app",
    "create_token",
    "create_user",
    "list_users",
    "revoke_tokens",
]
