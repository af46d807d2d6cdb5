"""permessage-deflate peers for tests/deflate.rs, built on the `websockets` library.

    ws_peer.py server          echo server with compression on 127.0.0.1, port 0; prints
                               "PORT <n>" once listening; exits when stdin closes.
                               The message "__extensions__" is answered with a JSON view of
                               the server side of the handshake instead of an echo.
    ws_peer.py client URL      connects with compression, checks that a set of messages
                               (compressible, binary, fragmented, empty) echo intact, then
                               prints one JSON line describing both ends' negotiation.

Every wait is bounded; any failure exits non-zero with the reason on stderr.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

TIMEOUT = 20.0


def extension_names(ws):
    return [ext.name for ext in ws.protocol.extensions]


async def handler(ws):
    async for message in ws:
        if message == "__extensions__":
            await ws.send(
                json.dumps(
                    {
                        "offered": ws.request.headers.get("Sec-WebSocket-Extensions"),
                        "answered": ws.response.headers.get("Sec-WebSocket-Extensions"),
                        "negotiated": extension_names(ws),
                    }
                )
            )
        else:
            await ws.send(message)


async def run_server():
    async with serve(handler, "127.0.0.1", 0, compression="deflate", max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        # Serve until the test closes our stdin (or kills us).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def run_client(url):
    messages = [
        "hello through wsbeat",
        "abc" * 100_000,  # 300 kB that compresses to a few hundred bytes
        bytes(range(256)) * 64,
        "",
    ]
    async with connect(url, compression="deflate", max_size=None, open_timeout=TIMEOUT) as ws:
        for message in messages:
            await ws.send(message)
            echoed = await asyncio.wait_for(ws.recv(), TIMEOUT)
            if echoed != message:
                raise SystemExit(f"echo differs for a message of {len(message)} characters/bytes")
        # A fragmented message: websockets sends each item as one frame.
        await ws.send(["frag-1 ", "frag-2 ", "frag-3"])
        echoed = await asyncio.wait_for(ws.recv(), TIMEOUT)
        if echoed != "frag-1 frag-2 frag-3":
            raise SystemExit(f"fragmented echo differs: {echoed!r}")
        await ws.send("__extensions__")
        server_view = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        result = {
            "client_answered": ws.response.headers.get("Sec-WebSocket-Extensions"),
            "client_negotiated": extension_names(ws),
            "server": server_view,
            "messages": len(messages) + 1,
            "payload_bytes": sum(len(m) for m in messages),
        }
        print(json.dumps(result), flush=True)


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "server":
        asyncio.run(run_server())
    elif len(sys.argv) == 3 and sys.argv[1] == "client":
        asyncio.run(asyncio.wait_for(run_client(sys.argv[2]), TIMEOUT * 3))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
