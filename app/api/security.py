"""The API key check shared by every route that runs a model."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

# The OpenAPI document names this scheme on the routes that need the key (see app.main).
SCHEME = "bearerAuth"


async def require_api_key(request: Request) -> None:
    """Refuse the request with 401 unless it carries ``Authorization: Bearer <key>``.

    Does nothing when ``NNSERVE_API_KEY`` is unset. The header is read directly rather than
    through ``fastapi.security.HTTPBearer``: a nested dependency costs more per request than
    the whole check.
    """
    key = request.app.state.settings.api_key
    if not key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            status_code=401,
            detail="missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # compare_digest takes time independent of where the strings differ.
    if not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise HTTPException(
            status_code=401,
            detail="invalid API key",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
