"""A TCP proxy that gives a link latency, jitter and loss, for hosts of a ``Cluster``:

    python -m tests.cluster.linkproxy LISTEN_HOST:PORT TARGET_HOST:PORT \\
        --delay-ms 10-25 --loss 0.01 --seed 1

Each chunk read, either way, is passed on after a one-way delay drawn from the range, in
order (a later chunk never overtakes an earlier one, as in TCP). A lost segment shows to the
applications on a TCP connection as a stall of one retransmission timeout (Linux's minimum
is 200 ms) with everything behind it held up: each chunk is "lost" with probability
``--loss`` and waits that much longer. The kernel here has no ``netem``, so this is the link.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random

RTO = 0.200  # seconds: Linux's minimum retransmission timeout


class Link:
    def __init__(self, delay: tuple[float, float], loss: float, rng: random.Random) -> None:
        self.delay, self.loss, self.rng = delay, loss, rng

    def one_way(self) -> float:
        stall = RTO if self.rng.random() < self.loss else 0.0
        return self.rng.uniform(*self.delay) + stall


async def _carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        due = 0.0
        while True:
            at, data = await queue.get()
            due = max(due, at)  # in order
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + link.one_way(), data))
    except OSError:
        pass
    queue.put_nowait((loop.time() + link.one_way(), b""))
    with contextlib.suppress(OSError):
        await sender


async def serve(listen: tuple[str, int], target: tuple[str, int], link: Link) -> None:
    async def connected(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_carry(client_r, server_w, link), _carry(server_r, client_w, link))
        for writer in (client_w, server_w):
            writer.close()

    server = await asyncio.start_server(connected, *listen, reuse_address=True)
    async with server:
        await server.serve_forever()


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("listen", type=_address)
    parser.add_argument("target", type=_address)
    parser.add_argument("--delay-ms", default="0-0", help="one-way delay range, ms (LOW-HIGH)")
    parser.add_argument("--loss", type=float, default=0.0, help="chance a chunk is lost")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    low, _, high = options.delay_ms.partition("-")
    delay = (float(low) / 1000, float(high or low) / 1000)
    link = Link(delay, options.loss, random.Random(options.seed))
    asyncio.run(serve(options.listen, options.target, link))


if __name__ == "__main__":
    main()
