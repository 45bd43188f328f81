#!/usr/bin/env python3
"""A tiny HTTP/1.1 upstream for the chaos run: answers chat-completion POSTs
with JSON, or with SSE when the body asks for a stream; with --rate-limit P it
answers a share P of requests 429 (Retry-After: 1). Each request it receives
is appended to --log (one line), so counts survive a SIGKILL.

    mock.py --port N --log FILE [--rate-limit 0.3]
"""
import argparse
import asyncio
import json
import random

EVENTS = 5
EVENT_GAP = 0.002


async def handle(reader, writer, args, log):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            log.write("r\n")
            log.flush()
            if args.rate_limit and random.random() < args.rate_limit:
                msg = b'{"error":{"message":"rate limited","type":"requests"}}'
                writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(msg), msg))
                await writer.drain()
                continue
            if b'"stream": true' in body or b'"stream":true' in body:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(EVENTS):
                    event = b'data: {"i": %d}\n\n' % i
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                    await asyncio.sleep(EVENT_GAP)
                done = b"data: [DONE]\n\n"
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
            else:
                msg = json.dumps({"id": "x", "choices": [{"message": {"content": "ok"}}]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(msg), msg))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--rate-limit", type=float, default=0.0)
    args = parser.parse_args()
    log = open(args.log, "a")
    server = await asyncio.start_server(lambda r, w: handle(r, w, args, log), "127.0.0.1", args.port,
                                        reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
