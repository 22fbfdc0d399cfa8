"""The key checks: FastAPI dependencies of the routes that run a model or change the models."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.errors import ForbiddenError, UnauthorizedError

# The OpenAPI document names this scheme on the routes that need the key (see app.main).
SCHEME = "bearerAuth"


def _check_bearer(request: Request, key: bytes, what: str) -> None:
    """Raise :class:`UnauthorizedError` unless ``Authorization: Bearer <key>`` was sent.

    The key is compared as UTF-8 bytes with the header's bytes as sent (HTTP headers are
    bytes; Starlette hands them over decoded as latin-1, which maps each byte to one
    character and back), so a non-ASCII key matches when the client sends it in UTF-8, the
    way curl, httpx and browsers do.
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip(" \t")
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError(f"missing {what}: send 'Authorization: Bearer <{what}>'",
                                headers={"WWW-Authenticate": "Bearer"})
    # compare_digest takes time independent of where the strings differ.
    if not hmac.compare_digest(token.encode("latin-1"), key):
        raise UnauthorizedError(f"invalid {what}",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


async def require_api_key(request: Request) -> None:
    """Refuse the request unless it carries ``Authorization: Bearer <key>``.

    Does nothing when ``NNSERVE_API_KEY`` is unset.
    """
    key: bytes | None = request.app.state.api_key
    if key is not None:
        _check_bearer(request, key, "API key")


async def require_admin_key(request: Request) -> None:
    """Refuse a repository change unless it carries ``Authorization: Bearer <admin key>``.

    With no ``NNSERVE_ADMIN_KEY`` configured the calls are off (403): a model server
    reachable by its clients must not let them swap its models by default.
    """
    key: bytes | None = request.app.state.admin_key
    if key is None:
        raise ForbiddenError("the repository API's load and unload are off: start the server "
                             "with NNSERVE_ADMIN_KEY set and send 'Authorization: Bearer "
                             "<admin key>'")
    _check_bearer(request, key, "admin key")
