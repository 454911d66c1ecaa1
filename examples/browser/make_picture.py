#!/usr/bin/env python3
"""Writes picture.png, the browser example's default picture: a 160x120 RGB scene (sky,
hills, a sun, a house) with structure at every scale, drawn with the standard library."""
import math
import struct
import zlib
from pathlib import Path

W, H = 160, 120


def pixel(x, y):
    # Sky to horizon, a sun, two hills, a house with a window and a door.
    r, g, b = 90 + y, 150 + y // 2, 235
    if (x - 120) ** 2 + (y - 28) ** 2 < 14 ** 2:
        r, g, b = 250, 220, 90
    hill = 78 + 10 * math.sin(x / 17.0) + 6 * math.sin(x / 5.0 + 1.0)
    if y > hill:
        shade = int(20 * math.sin(x * 0.9) * math.sin(y * 0.7))
        r, g, b = 60 + shade, 140 + shade, 60
    if 30 <= x < 70 and 60 <= y < 100:
        r, g, b = 200, 190, 170
        if 38 <= x < 50 and 68 <= y < 80:
            r, g, b = 70, 110, 160
        if 55 <= x < 64 and 80 <= y < 100:
            r, g, b = 110, 70, 40
    if 26 <= x < 74 and 40 <= y < 60 and abs(x - 50) < (y - 40) * 1.2 + 1:
        r, g, b = 170, 50, 40
    return bytes(max(0, min(255, v)) for v in (r, g, b))


def png(width, height, rows):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + row for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


rows = [b"".join(pixel(x, y) for x in range(W)) for y in range(H)]
out = Path(__file__).with_name("picture.png")
out.write_bytes(png(W, H, rows))
print(f"wrote {out} ({W}x{H})")
