"""Routes that answer the dataplane's errors in their protocol's words.

FastAPI documents ``APIRoute.get_route_handler`` as the place to wrap a route's handling
("Custom Request and APIRoute class"): the wrapped handler still resolves the route's
dependencies, validates its parameters and runs the endpoint exactly as FastAPI does, and
a :class:`~app.errors.ServingError` raised anywhere in that (the API-key dependency
included) becomes the protocol's answer. Anything else goes on to the application's
handlers, a 500 in the end.

A route whose endpoint needs nothing FastAPI would resolve (see :func:`takes_only_request`)
calls the endpoint itself: for those, FastAPI's handler reads no body, solves an empty set
of dependencies and validates no value, at about 10 µs per request, the cost of a forward
pass of the shipped networks. The decision is made from the route's ``dependant``, FastAPI's
own account of what the endpoint needs, when the route is built: a route given a
dependency, a query parameter or a constrained path parameter takes FastAPI's handler.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.errors import ServingError

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

# Headers both protocols share: the client's routing key in, the serving version out.
ROUTING_HEADER = "x-routing-key"
VERSION_HEADER = "X-Model-Version"


def header_values(request: Request, *names: str) -> list[str | None]:
    """Return the first value of each header in ``names`` (lower-case), None when absent.

    One pass over the request's raw headers. (``request.headers.get`` looks each name up
    separately, and raises and catches a KeyError for every absent one: most of the
    optional headers of an inference request are absent.)
    """
    keys = [name.encode("latin-1") for name in names]
    values: list[str | None] = [None] * len(keys)
    for key, value in request.scope["headers"]:
        if key in keys:
            index = keys.index(key)
            if values[index] is None:
                values[index] = value.decode("latin-1")
    return values


def _returns_response(call: Callable[..., Any]) -> bool:
    try:
        returned = typing.get_type_hints(call).get("return")
    except (NameError, TypeError):  # an annotation that cannot be resolved: ask FastAPI
        return False
    return isinstance(returned, type) and issubclass(returned, Response)


def takes_only_request(dependant: Dependant) -> bool:
    """Say whether FastAPI would give the endpoint only the request and its path strings.

    True when the endpoint is a coroutine function annotated to return a ``Response`` (so
    FastAPI would not serialise what it returns), takes the ``Request`` and otherwise only
    path parameters typed plain ``str`` with no constraint (FastAPI would pass Starlette's
    path strings through unchanged), and has no dependency, query, header, cookie or body
    parameter, and none of the other objects FastAPI can inject.
    """
    if (dependant.dependencies or dependant.query_params or dependant.header_params
            or dependant.cookie_params or dependant.body_params):
        return False
    if (dependant.request_param_name is None or dependant.websocket_param_name
            or dependant.http_connection_param_name or dependant.response_param_name
            or dependant.background_tasks_param_name or dependant.security_scopes_param_name):
        return False
    for field in dependant.path_params:
        info = field.field_info
        if info.annotation is not str or info.metadata or field.alias != field.name:
            return False
    call = dependant.call
    return inspect.iscoroutinefunction(call) and _returns_response(call)


class ProtocolRoute(APIRoute):
    """An APIRoute whose :class:`ServingError` s are answered by :meth:`error_response`."""

    @staticmethod
    def error_response(error: ServingError) -> Response:  # pragma: no cover - abstract
        """Answer ``error`` in the protocol's shape and status."""
        raise NotImplementedError

    def get_route_handler(self) -> Handler:
        answer = self.error_response
        if takes_only_request(self.dependant):
            handle = self._endpoint_handler()
        else:
            handle = super().get_route_handler()

        async def handle_serving_errors(request: Request) -> Response:
            try:
                return await handle(request)
            except ServingError as error:
                return answer(error)

        return handle_serving_errors

    def _endpoint_handler(self) -> Handler:
        endpoint = self.dependant.call
        request_name = self.dependant.request_param_name
        path_names = tuple(field.name for field in self.dependant.path_params)
        if not path_names:
            return lambda request: endpoint(**{request_name: request})

        def call(request: Request) -> Coroutine[Any, Any, Response]:
            params = request.path_params
            return endpoint(**{request_name: request}, **{name: params[name]
                                                          for name in path_names})

        return call
