"""Open Inference Protocol (V2): the codec (:mod:`.codec`), the routes (:mod:`.routes`) and
the bodies they document (:mod:`.schemas`)."""

from app.api.v2.routes import STATUS, add_routes, openapi_components

__all__ = ["STATUS", "add_routes", "openapi_components"]
