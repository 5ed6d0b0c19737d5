"""``/openapi.json``: the gateway's API description."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.openapi import build_openapi

__all__ = ["setup"]

_DOC = web.AppKey("openapi_doc", bytes)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_DOC], content_type="application/json")


def setup(app: web.Application) -> None:
    app[_DOC] = orjson.dumps(build_openapi())
    app.router.add_get("/openapi.json", openapi_json)
