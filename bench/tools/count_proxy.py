#!/usr/bin/env python3
"""A TCP proxy that counts the bytes it relays, for measuring what a node costs on the wire.

usage: count_proxy.py LISTEN_PORT TARGET_HOST:TARGET_PORT COUNTS_FILE

Listens on 127.0.0.1:LISTEN_PORT, relays every connection to the target unchanged (TLS
included: what is counted is what a link would carry above TCP), and rewrites COUNTS_FILE
every second with `<unix time> <bytes up> <bytes down> <connections>`: up is client to
target (node to server), down the other way.
"""
import asyncio
import os
import sys
import time

up = 0
down = 0
connections = 0


async def pipe(reader, writer, direction):
    global up, down
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if direction == "up":
                up += len(data)
            else:
                down += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_reader, client_writer, host, port):
    global connections
    connections += 1
    try:
        server_reader, server_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        pipe(client_reader, server_writer, "up"),
        pipe(server_reader, client_writer, "down"),
    )


async def report(path):
    while True:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{time.time():.3f} {up} {down} {connections}\n")
        os.replace(tmp, path)
        await asyncio.sleep(1)


async def main():
    listen_port = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, host, int(port)), "127.0.0.1", listen_port
    )
    asyncio.get_running_loop().create_task(report(sys.argv[3]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
