"""python-hl7's MLLP, on both ends of phivault's relay in a test.

  hl7_mllp.py receive FILE     an MLLP receiver on a free loopback port (printed),
                               appending each frame's message to FILE and
                               acknowledging it (MSA|AA) as python-hl7 does
  hl7_mllp.py send PORT FILE   sends each message of FILE (parted by a blank
                               line) and prints each acknowledgement's MSA-1
                               and MSA-2, one per line
"""

import asyncio
import sys

import hl7
import hl7.client
import hl7.mllp


def receive(path):
    async def handle(reader, writer):
        while not reader.at_eof():
            try:
                block = await reader.readblock()
            except asyncio.IncompleteReadError:
                break
            with open(path, "ab") as f:
                f.write(block + b"\n\n")
            writer.writemessage(hl7.parse(block.decode("utf-8")).create_ack())
            await writer.drain()
        writer.close()

    async def main():
        server = await hl7.mllp.start_hl7_server(handle, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def send(port, path):
    messages = [m for m in open(path, "rb").read().split(b"\n\n") if m.strip()]
    with hl7.client.MLLPClient("127.0.0.1", int(port)) as client:
        for message in messages:
            ack = hl7.parse(client.send_message(message).strip(b"\x0b\x1c\r").decode("utf-8"))
            msa = ack.segment("MSA")
            print(f"{msa[1]} {msa[2]}", flush=True)


if __name__ == "__main__":
    {"receive": receive, "send": send}[sys.argv[1]](*sys.argv[2:])
