"""Routes that answer the dataplane's errors in their protocol's words.

FastAPI documents ``APIRoute.get_route_handler`` as the place to wrap a route's handling
("Custom Request and APIRoute class"): the wrapped handler still resolves the route's
dependencies, validates its parameters and runs the endpoint exactly as FastAPI does, and
a :class:`~app.errors.ServingError` raised anywhere in that (the API-key dependency
included) becomes the protocol's answer. Anything else goes on to the application's
handlers, a 500 in the end.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from app.errors import ServingError


class ProtocolRoute(APIRoute):
    """An APIRoute whose :class:`ServingError` s are answered by :meth:`error_response`."""

    @staticmethod
    def error_response(error: ServingError) -> Response:  # pragma: no cover - abstract
        """Answer ``error`` in the protocol's shape and status."""
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        answer = self.error_response

        async def handle_serving_errors(request: Request) -> Response:
            try:
                return await handle(request)
            except ServingError as error:
                return answer(error)

        return handle_serving_errors
