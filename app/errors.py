"""The errors of the service: one hierarchy, raised by the dataplane and the protocol codecs.

Every error a client can cause is a :class:`ServingError`; its class says what went wrong,
never how to answer it. Each protocol owns one table from these classes to an HTTP status
(``app.api.native.STATUS``, ``app.api.v2.routes.STATUS``) and one body shape, so the rule
is written once per protocol:

- the native API answers 400 for a body that is not JSON and 422 for JSON that is not a
  usable request (FastAPI's convention, and what its request validation answers);
- the Open Inference Protocol answers 400 for every bad request, as Triton does.

Anything that is not a :class:`ServingError` is a bug: a 500, logged with its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class ServingError(Exception):
    """A request the service refuses; ``str(error)`` is the message the client reads."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers

    def __str__(self) -> str:
        return self.message


class MalformedRequestError(ServingError):
    """The body cannot be read at all: not valid JSON, a bad length header, bad framing."""


class InvalidInputError(ServingError):
    """The request is well-formed but is not a usable input for the model."""


class InferenceError(ServingError):
    """The network gave no usable probabilities for this input (e.g. it overflowed)."""


class ModelNotFoundError(ServingError):
    """No loaded model has the requested name (or version)."""

    def __init__(self, name: str, known: Iterable[str] = (), *, version: str | None = None,
                 versions: Iterable[str] = ()) -> None:
        if version is not None:
            message = (f"model {name!r} has no version {version!r}; "
                       f"loaded versions: {', '.join(versions) or 'none'}")
        else:
            known = sorted(known)
            hint = f"; loaded models: {', '.join(known)}" if known else "; no model is loaded"
            message = f"model {name!r} is not loaded{hint}"
        super().__init__(message)
        self.name = name


class NotReadyError(ServingError):
    """The server takes no inference now: it is draining, or serves no model."""


class UnauthorizedError(ServingError):
    """An API key is required and the request's is missing or wrong."""


class ForbiddenError(ServingError):
    """The request is not allowed on this server at all (e.g. an admin call with no admin
    key configured)."""


class UnsupportedMediaTypeError(ServingError):
    """The body's Content-Type or Content-Encoding is not one the protocol reads."""


class PayloadTooLargeError(ServingError):
    """The body, as sent or once inflated, is larger than the limit."""


__all__ = [
    "ForbiddenError",
    "InferenceError",
    "InvalidInputError",
    "MalformedRequestError",
    "ModelNotFoundError",
    "NotReadyError",
    "PayloadTooLargeError",
    "ServingError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
]
