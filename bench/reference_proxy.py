"""The reference proxy: the floor of what a Python proxy can do.

Starlette + uvicorn (uvloop, httptools, no access log) with one keep-alive aiohttp session.
It forwards ``POST /v1/chat/completions`` bodies verbatim and relays the answer: whole when
plain, chunk by chunk as it arrives when the upstream streams SSE.

Run: ``python bench/reference_proxy.py --port 9002 --upstream http://127.0.0.1:9001/v1``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def build_app(upstream: str) -> Starlette:
    url = upstream.rstrip("/") + "/chat/completions"
    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector) as session:
            state["session"] = session
            yield

    async def chat(request: Request) -> Response:
        headers = {"content-type": "application/json"}
        if auth := request.headers.get("authorization"):
            headers["authorization"] = auth
        resp = await state["session"].post(url, data=await request.body(), headers=headers)
        if resp.content_type != "text/event-stream":
            async with resp:
                body = await resp.read()
            return Response(body, resp.status, media_type=resp.content_type)

        async def relay() -> AsyncIterator[bytes]:
            async with resp:
                async for chunk in resp.content.iter_any():
                    yield chunk

        return StreamingResponse(relay(), resp.status, media_type="text/event-stream")

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="reference proxy for the benchmark")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--upstream", default="http://127.0.0.1:9001/v1")
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.upstream),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
