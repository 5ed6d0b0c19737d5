"""The baseline the tokenize benchmark compares against: an aiohttp "hello world" JSON POST
service, with the same worker model as the gateway (N processes, SO_REUSEPORT).

    python bench/hello.py --port 8099 --workers 2
"""

from __future__ import annotations

import os
import sys

# Run as a script, bench/ is first on sys.path and bench/tokenize.py would shadow the stdlib's
# ``tokenize`` (imported by linecache, hence by logging and aiohttp): keep the directory last.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _BENCH] + [_BENCH]

import argparse  # noqa: E402
import multiprocessing  # noqa: E402

import orjson  # noqa: E402
from aiohttp import web  # noqa: E402


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    data = orjson.loads(body)
    return web.Response(
        status=201,
        body=orjson.dumps({"id": "tok_hello", "n": len(data)}),
        content_type="application/json",
    )


def _run(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/tokens", echo)
    app.router.add_get("/healthz", lambda _: web.json_response({"status": "ok"}))
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, access_log=None, print=None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    procs = [multiprocessing.Process(target=_run, args=(args.port,)) for _ in range(args.workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
