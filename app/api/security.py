"""The API key check: a FastAPI dependency of every route that runs a model."""

from __future__ import annotations

import hmac

from fastapi import Request

from app.errors import UnauthorizedError

# The OpenAPI document names this scheme on the routes that need the key (see app.main).
SCHEME = "bearerAuth"


async def require_api_key(request: Request) -> None:
    """Refuse the request unless it carries ``Authorization: Bearer <key>``.

    Does nothing when ``NNSERVE_API_KEY`` is unset. The key is compared as UTF-8 bytes with
    the header's bytes as sent (HTTP headers are bytes; Starlette hands them over decoded
    as latin-1, which maps each byte to one character and back), so a non-ASCII key
    matches when the client sends it in UTF-8, the way curl, httpx and browsers do.
    """
    key: bytes | None = request.app.state.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip(" \t")
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})
    # compare_digest takes time independent of where the strings differ.
    if not hmac.compare_digest(token.encode("latin-1"), key):
        raise UnauthorizedError("invalid API key",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
