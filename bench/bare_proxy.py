"""The floor: a bare aiohttp reverse proxy that does nothing but relay (no auth, ledger, scanner, transcripts).

A reference target for ``bench/run.py overhead --compare-bare``: what the gateway's request path would cost if it
only moved bytes with the same libraries (aiohttp server in front, one aiohttp ``ClientSession`` to the upstream,
``iter_any`` and one ``write`` per upstream chunk). The gap between this and the gateway is the cost of the
gateway's own work; the gap between this and direct is the cost of having a Python proxy at all.

Usage: python -m bench.bare_proxy --port 9200 --upstream http://127.0.0.1:9100 --key UPSTREAM_KEY [--uvloop]
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

from bench.fake_upstream_server import loopback

DROP = frozenset({"host", "content-length", "x-api-key", "authorization", "accept-encoding", "connection",
                  "transfer-encoding", "keep-alive"})
SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstream: str, key: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=600))
        yield
        await app[SESSION].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP}
        headers["x-api-key"] = key
        async with app[SESSION].request(request.method, upstream + request.path_qs, data=body,
                                        headers=headers) as reply:
            out = {k: v for k, v in reply.headers.items() if k.lower() not in DROP | {"date", "server"}}
            if not reply.headers.get("content-type", "").startswith("text/event-stream"):
                return web.Response(status=reply.status, body=await reply.read(), headers=out)
            response = web.StreamResponse(status=reply.status, headers=out)
            await response.prepare(request)
            async for chunk in reply.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/messages", relay)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", type=loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (pip install uvloop)")
    args = parser.parse_args()
    loop = None
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(make_app(args.upstream.rstrip("/"), args.key), host=args.host, port=args.port, access_log=None,
                print=None, backlog=4096, loop=loop)


if __name__ == "__main__":
    main()
