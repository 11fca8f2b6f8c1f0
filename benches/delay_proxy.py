"""A TCP proxy on loopback that delays every chunk coming back from the server by --delay-ms, so
each request/response round trip through it costs that much more: the network distance to a
remote sink, for benches/remote.sh. Order is kept per connection. Runs until killed.
"""

import argparse
import asyncio


async def pump(reader, writer, delay):
    """Copies reader to writer; each chunk is written `delay` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await queue.put((loop.time() + delay, data))
    finally:
        await queue.put((0, None))
        await sender


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True, help="127.0.0.1:PORT")
    ap.add_argument("--to", required=True, help="127.0.0.1:PORT of the server")
    ap.add_argument("--delay-ms", type=float, required=True)
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    up_host, up_port = args.to.rsplit(":", 1)
    assert host.startswith("127.") and up_host.startswith("127."), "loopback only"
    delay = args.delay_ms / 1000

    async def handle(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection(up_host, int(up_port))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            pump(client_r, server_w, 0.0),
            pump(server_r, client_w, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, host, int(port))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
