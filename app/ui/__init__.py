"""The demo page at GET /: try a loaded model in a browser, no build step and no CDN.

The page is static HTML, CSS and JavaScript shipped as package data (``app/ui/static``),
read once when the app is built and served from memory by plain FastAPI routes. It calls the
server's own JSON APIs (``GET /models``, ``POST /models/{name}/predict`` and ``/explain``).
Every answer carries a Content-Security-Policy that allows scripts, styles and connections
from this origin only and no inline script, so nothing on the page can run code from
elsewhere. ``NNSERVE_UI=false`` leaves the routes out (GET / is then a 404). They are added
after every API route: the router tries routes in order, and predict should not try a page
first.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request, Response

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The page's files, by URL name: nothing else under /ui is ever read.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "digits.json": "application/json",
    "icon.svg": "image/svg+xml",
}


def _load() -> dict[str, tuple[bytes, str]]:
    static = resources.files(__package__).joinpath("static")
    return {name: (static.joinpath(name).read_bytes(), media) for name, media in FILES.items()}


def add_routes(app: FastAPI) -> None:
    """Add GET /, GET /ui/settings and GET /ui/{file} (the page's files) to ``app``."""
    files = _load()

    def page_file(name: str) -> Response:
        content, media = files[name]
        return Response(content, media_type=media, headers=HEADERS)

    async def page() -> Response:
        return page_file("index.html")

    async def settings(request: Request) -> Response:
        # Whether to show the API-key field; the key itself never leaves the server.
        needs_key = request.app.state.api_key is not None
        return Response(b'{"api_key_required":%s}' % (b"true" if needs_key else b"false"),
                        media_type="application/json", headers=HEADERS)

    async def static_file(name: str) -> Response:
        if name not in files:
            return Response(b'{"detail":"no such file of the demo page"}', status_code=404,
                            media_type="application/json", headers=HEADERS)
        return page_file(name)

    add = app.router.add_api_route
    add("/", page, methods=["GET"], include_in_schema=False)
    add("/ui/settings", settings, methods=["GET"], include_in_schema=False)
    add("/ui/{name}", static_file, methods=["GET"], include_in_schema=False)


__all__ = ["CONTENT_SECURITY_POLICY", "add_routes"]
