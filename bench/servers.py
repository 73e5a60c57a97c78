"""Bare aiohttp servers for the baselines and the orchestrators of the fan-out benchmark.

Run in a process of their own: `python -m bench.servers ROLE ...`.

- `static`: answers GET `--path` with a fixed body and status (the probe baseline).
- `accept`: parses a JSON body on POST `--path` and answers 202 (the intake baseline).
- `orchestrators`: one webhook receiver per port (the demo's, `market_data_sidecar.demo.
  webhooks`), recording when each event arrives; the `--hanging` ones accept requests
  and never answer. `GET /_receipts` returns
  what one port received, `POST /_reset` forgets it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from pathlib import Path

from aiohttp import web

from market_data_sidecar.demo.webhooks import Attempt, WebhookReceiver


def static_app(path: str, body: bytes, status: int, content_type: str) -> web.Application:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get(path, handler)
    return app


def accept_app(path: str) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        accepted = len(data) if isinstance(data, list) else 1
        return web.json_response({"accepted": accepted}, status=202)

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post(path, handler)
    return app


def orchestrator_app(*, hanging: bool) -> web.Application:
    """The demo's webhook receiver, with what the benchmark reads across processes;
    events carry their sequence number as `reason: "seq:N"`."""
    receipts: list[tuple[int, float]] = []
    counts = {"requests": 0}

    def arrived(attempt: Attempt) -> None:
        # Only (seq, arrival) is kept: the receivers share the load generator's core.
        counts["requests"] += 1
        reason = attempt.json.get("reason") or ""
        if reason.startswith("seq:"):
            receipts.append((int(reason[4:]), attempt.at))

    receiver = WebhookReceiver(record=False, on_attempt=arrived)
    if hanging:
        receiver.hang()

    async def results(_request: web.Request) -> web.Response:
        return web.json_response({"requests": counts["requests"], "receipts": receipts})

    async def reset(_request: web.Request) -> web.Response:
        receipts.clear()
        counts["requests"] = 0
        return web.Response(status=204)

    app = receiver.app()
    app.router.add_get("/_receipts", results)
    app.router.add_post("/_reset", reset)
    return app


async def serve(apps: list[tuple[web.Application, int]]) -> None:
    runners = []
    for app, port in apps:
        runner = web.AppRunner(app, access_log=None, handle_signals=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        runners.append(runner)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("role", choices=["static", "accept", "orchestrators"])
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--hanging", type=int, action="append", default=[])
    parser.add_argument("--path", default="/")
    parser.add_argument("--body-file", type=Path)
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()

    if args.role == "static":
        body = args.body_file.read_bytes() if args.body_file else b"{}"
        apps = [(static_app(args.path, body, args.status, args.content_type), args.port[0])]
    elif args.role == "accept":
        apps = [(accept_app(args.path), args.port[0])]
    else:
        apps = [(orchestrator_app(hanging=port in args.hanging), port) for port in args.port]
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(apps))


if __name__ == "__main__":
    main()
