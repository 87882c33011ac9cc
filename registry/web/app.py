"""`registry serve`: a read-only Starlette app over the registry database.

HTML pages (server-rendered, Jinja2) and a JSON API under `/api/` with the command line's
`--json` field names. The database is opened read-only once; every request reads it through its
own session. The only files served are this package's `static/` folder (Starlette's
`StaticFiles` refuses paths that leave it).
"""

from __future__ import annotations

from typing import Any

from registry.errors import RegistryError, UsageError

from . import data, pages
from .render import STATIC_DIR, Links, Renderer


def _page_number(request: Any) -> int:
    try:
        return max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        return 1


def _filters(request: Any) -> dict[str, str | None]:
    return {key: request.query_params.get(key) or None for key in ("variant", "family", "user", "job", "since", "until")}


def create_app(reg: Any) -> Any:
    """The ASGI app over an open (read-only) `Registry`."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    renderer = Renderer(Links(static=False), reg.url_display)

    def html(render: Any) -> Any:
        def endpoint(request: Any) -> Any:
            try:
                return HTMLResponse(render(request))
            except UsageError as exc:
                return HTMLResponse(pages.error_page(renderer, exc.message), status_code=404)
            except RegistryError as exc:
                return HTMLResponse(pages.error_page(renderer, exc.message), status_code=500)
        return endpoint

    def api(answer: Any) -> Any:
        def endpoint(request: Any) -> Any:
            try:
                return JSONResponse(answer(request))
            except UsageError as exc:
                return JSONResponse({"error": exc.message}, status_code=404)
            except RegistryError as exc:
                return JSONResponse({"error": exc.message}, status_code=500)
        return endpoint

    def params(request: Any, name: str) -> Any:
        return request.path_params[name]

    def chain_json(request: Any) -> dict[str, Any]:
        found = data.chain(reg, params(request, "root"), renderer.links, full=request.query_params.get("full") == "1")
        found.pop("svg")
        return found

    routes = [
        Route("/", lambda request: RedirectResponse("index.html")),
        Route("/index.html", html(lambda r: pages.variants_page(renderer, reg, _page_number(r)))),
        Route("/variant-{variant_id:int}.html", html(lambda r: pages.variant_page(renderer, reg, params(r, "variant_id")))),
        Route("/lineage.html", html(lambda r: pages.lineage_page(renderer, reg, _page_number(r), **_filters(r)))),
        Route("/chain-{root}-full.html", html(lambda r: pages.chain_page(renderer, reg, params(r, "root"), full=True))),
        Route("/chain-{root}.html", html(lambda r: pages.chain_page(renderer, reg, params(r, "root")))),
        Route("/run-{run_id}.html", html(lambda r: pages.run_page(renderer, reg, params(r, "run_id")))),
        Route("/checkpoint-{checkpoint_id:int}.html",
              html(lambda r: pages.checkpoint_page(renderer, reg, params(r, "checkpoint_id")))),
        Route("/unmatched.html", html(lambda r: pages.unmatched_page(renderer, reg, _page_number(r)))),
        Route("/search.html", html(lambda r: pages.search_page(renderer, reg, r.query_params.get("q", "")))),
        Route("/api/variants", api(lambda r: data.variants(reg, _page_number(r)))),
        Route("/api/variants/{variant_id:int}", api(lambda r: data.variant(reg, params(r, "variant_id")))),
        Route("/api/lineage", api(lambda r: data.lineage(reg, page=_page_number(r), **_filters(r)))),
        Route("/api/chains/{root}", api(chain_json)),
        Route("/api/runs/{run_id}", api(lambda r: data.run(reg, params(r, "run_id")))),
        Route("/api/checkpoints/{checkpoint_id:int}", api(lambda r: data.checkpoint(reg, params(r, "checkpoint_id")))),
        Route("/api/unmatched", api(lambda r: data.unmatched(reg, _page_number(r)))),
        Route("/api/search", api(lambda r: data.search(reg, r.query_params.get("q", "")))),
        Mount("/static", app=StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ]
    return Starlette(routes=routes)


def listen(host: str, port: int) -> Any:
    """A socket bound to `host`:`port`, bound here so a busy port is one clear error (exit 2)
    before anything is printed, instead of uvicorn's log line and exit code.

    Raises `UsageError` when the address cannot be bound (in use, not this machine's, no permission).
    """
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         hint="choose another --port (or --host)") from None
    return sock


def serve(reg: Any, sock: Any) -> None:
    """Serve the app on the bound socket `sock` until interrupted (uvicorn, one process)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(reg), log_level="warning"))
    server.run(sockets=[sock])
