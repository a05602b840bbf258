"""A Modbus TCP server from pymodbus (a peer we did not write) with a known
register map, for the Modbus connector tests.

Usage: python modbus_server.py PORT

Prints READY once it listens. Wire addresses (0-based, as sent):

holding   0      int16   -1234
holding   10-11  float32 123.456, word order CDAB
holding   14     uint16  0b1000 (bit 3 set)
holding   16     int16   7      (15 does not exist: a joined read 14-16 fails)
holding   20-23  float64 -2.5e10, byte order DCBA
holding   30-32  string  "LN-1" (NUL padded)
holding   40     uint16  a counter, +1 every 100 ms
input     0-1    uint32  4000000000, ABCD
coil      0, 1   True, False
discrete  5      True
Everything else answers IllegalDataAddress (exception 2).
"""

import asyncio
import struct
import sys
import time

from pymodbus.server import StartAsyncTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def words(fmt, value):
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def regs(address, values):
    return SimData(address, values=values, datatype=DataType.REGISTERS)


def holding():
    f32 = words("f", 123.456)
    raw = struct.pack("<d", -2.5e10)  # DCBA: fully little-endian
    f64 = [int.from_bytes(raw[2 * i : 2 * i + 2], "big") for i in range(4)]
    text = b"LN-1\0\0"
    name = [int.from_bytes(text[2 * i : 2 * i + 2], "big") for i in range(3)]
    return [
        regs(0, words("h", -1234)),
        regs(10, [f32[1], f32[0]]),  # CDAB: low word first
        regs(14, [0b1000]),
        regs(16, [7]),
        regs(20, f64),
        regs(30, name),
        regs(40, [0]),
    ]


async def counter(function_code, start_address, address, count, current_registers, set_values):
    """Register 40 counts tenths of a second, so every read sees it move."""
    if function_code == 3 and start_address <= 40 < start_address + len(current_registers):
        current_registers[40 - start_address] = int(time.time() * 10) % 65536
    return None


async def main(port):
    device = SimDevice(
        id=1,
        simdata=(
            [SimData(0, values=[True, False], datatype=DataType.BITS)],
            [SimData(5, values=[True], datatype=DataType.BITS)],
            holding(),
            [regs(0, words("I", 4_000_000_000))],
        ),
        action=counter,
    )
    asyncio.get_running_loop().call_later(0.2, lambda: print("READY", flush=True))
    await StartAsyncTcpServer(context=device, address=("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
