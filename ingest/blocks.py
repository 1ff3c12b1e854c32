"""Where a local raster file's compressed bytes lie, read from its headers without decoding.

Decoding time follows the compressed bytes more closely than the pixel count: a JPEG 2000
tile of open sea or of nodata decodes several times faster than one of mountains. Read
planning cuts a scene that is read by several tasks where this work is shared equally
(:func:`~eoforge.ingest.plan.plan_reads`), so the scan records it per block row of each band
file (:func:`inspect_blocks`, :func:`decode_estimate`, ``Scene.decode_rows``):

- a GeoTIFF lists every block's offset and size (``TileOffsets`` / ``TileByteCounts``, which
  GDAL gives as ``BLOCK_OFFSET_<col>_<row>`` and ``BLOCK_SIZE_<col>_<row>`` in its ``TIFF``
  metadata domain);
- a JPEG 2000 codestream (ISO 15444-1) is a chain of tile-parts, each starting with an SOT
  marker segment that gives its tile index and length (``Psot``): walking the chain reads 12
  bytes per tile-part. ``SIZ`` gives the tile grid.

Remote files and other formats give None: their scenes are balanced by valid area only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any


#: Bands of rows of a scene's :attr:`~eoforge.ingest.scene.Scene.valid_profile`.
PROFILE_BINS = 64
#: Decoding cost per compressed byte, in milliseconds per MB, one single-threaded GDAL
#: process (the bench's 10980 px scene: JPEG 2000 80.6 s for 643 MB, DEFLATE GeoTIFFs 4.7 s
#: for 796 MB, on the 2-core bench VM). Only the ratio to a tile's other work matters.
DECODE_MS_PER_MB = {"jpeg2000": 125.0, "geotiff": 6.0}
JP2_DRIVERS = ("JP2OpenJPEG", "JPEG2000", "JP2KAK", "JP2ECW")


def gtiff_blocks(src: Any) -> Iterator[tuple[int, int, int, int, int] | None]:
    """(band, block row, block col, offset, length) of every full-resolution block of an open
    GeoTIFF, one None (then stop) when this GDAL does not say. A pixel-interleaved file's
    blocks hold every band and are given once."""
    for bidx in src.indexes:
        bh, bw = src.block_shapes[bidx - 1]
        for row in range(math.ceil(src.height / bh)):
            for col in range(math.ceil(src.width / bw)):
                offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=bidx)
                length = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=bidx)
                if offset is None or length is None:
                    yield None
                    return
                yield bidx, row, col, int(offset), int(length)
        if src.interleaving is not None and src.interleaving.name == "pixel":
            return


def jp2_codestream(f: Any, size: int) -> tuple[int, int] | str:
    """(start, end) of the codestream of an open JPEG 2000 file of ``size`` bytes (a raw
    codestream, or the ``jp2c`` box of a JP2 file), or why it has none whole: a box that
    runs past the end of the file."""
    f.seek(0)
    if f.read(2) == b"\xff\x4f":  # a raw codestream (.j2k) starts with SOC
        return 0, size
    pos = 0
    while pos + 8 <= size:
        f.seek(pos)
        head = f.read(16)
        length, box, header = int.from_bytes(head[:4], "big"), head[4:8], 8
        if length == 1:
            length, header = int.from_bytes(head[8:16], "big"), 16
        elif length == 0:  # the last box runs to the end of the file
            length = size - pos
        if length < header:
            return f"box {box!r} at byte {pos} has length {length}"
        if pos + length > size:
            return f"box {box!r} at byte {pos} needs {pos + length} bytes, the file has {size}"
        if box == b"jp2c":
            return pos + header, pos + length
        pos += length
    return "no codestream box (jp2c)"


def _jp2_tile_rows(f: Any, start: int, end: int) -> list[tuple[int, int, int]] | None:
    """(first pixel row, end pixel row, compressed bytes) of each tile row of the codestream
    at bytes ``start:end`` of an open file, from its SIZ and SOT marker segments; None when it
    does not parse."""
    f.seek(start)
    if f.read(2) != b"\xff\x4f":  # SOC
        return None
    pos, siz = start + 2, None
    while True:  # the main header's marker segments, up to the first SOT
        f.seek(pos)
        head = f.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return None
        marker, length = head[1], int.from_bytes(head[2:4], "big")
        if marker == 0x90:
            break
        if marker == 0x51:  # SIZ: Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz
            fields = f.read(34)
            siz = [int.from_bytes(fields[2 + 4 * i:6 + 4 * i], "big") for i in range(8)]
        pos += 2 + length
    if siz is None:
        return None
    xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz = siz
    if xtsiz == 0 or ytsiz == 0 or xsiz <= xtosiz or ysiz <= ytosiz:
        return None  # a SIZ cut short or not ISO 15444-1's
    tiles_x = math.ceil((xsiz - xtosiz) / xtsiz)
    tile_rows = math.ceil((ysiz - ytosiz) / ytsiz)
    nbytes = [0] * tile_rows
    while pos + 12 <= end:
        f.seek(pos)
        sot = f.read(12)
        if sot[:2] != b"\xff\x90":
            break  # EOC, or the end of the tile-parts
        tile, psot = int.from_bytes(sot[4:6], "big"), int.from_bytes(sot[6:10], "big")
        if psot == 0:  # the last tile-part runs to EOC
            psot = end - 2 - pos
        if psot < 12 or tile // tiles_x >= tile_rows:
            return None
        nbytes[tile // tiles_x] += psot
        pos += psot
    return [(max(yosiz, ytosiz + r * ytsiz) - yosiz, min(ysiz, ytosiz + (r + 1) * ytsiz) - yosiz, n)
            for r, n in enumerate(nbytes)]


def _jp2_blocks(path: str) -> tuple[str, list[tuple[int, int, int]] | None]:
    """One pass over a JPEG 2000 file (JP2 boxes or a raw codestream): (``""`` when it holds
    its whole codestream, ending with EOC (``FF D9``, which ISO 15444-1 puts last in every
    codestream), else why not; its tile rows, :func:`_jp2_tile_rows`, or None)."""
    with open(path, "rb") as f:
        span = jp2_codestream(f, os.path.getsize(path))
        if isinstance(span, str):
            return span, None
        start, end = span
        f.seek(end - 2)
        missing = "" if f.read(2) == b"\xff\xd9" else "the codestream does not end with EOC"
        return missing, _jp2_tile_rows(f, start, end)


def jp2_tile_rows(path: str) -> list[tuple[int, int, int]] | None:
    """(first pixel row, end pixel row, compressed bytes) of each tile row of a JPEG 2000
    file's codestream, from its SIZ and SOT marker segments; None when the codestream does
    not parse (the file's pixel reads then say what is wrong)."""
    return _jp2_blocks(path)[1]


#: A file's compressed bytes per block row: (codec family, [(first row, end row, bytes)]).
BlockLayout = tuple[str, list[tuple[int, int, int]]]


def inspect_blocks(src: Any, path: str) -> tuple[str | None, BlockLayout | None]:
    """One walk of an open local file's block table, no pixel decoded: (whether the file
    holds every byte its header promises: ``""`` whole, else why not, None when it cannot be
    told this way; its compressed bytes per block row, or None). A GeoTIFF is whole when
    every full-resolution block ends within the file; a JPEG 2000 file when its codestream
    box fits the file and ends with EOC. Remote files and other formats give (None, None).
    At archive scale this keeps the scan probe to header bytes: decoding a block of each of
    13 JP2 bands costs ~1 s per product."""
    if not os.path.isfile(path):
        return None, None
    if src.driver == "GTiff":
        size = os.path.getsize(path)
        rows: dict[int, int] = {}
        missing = ""
        # full resolution only: that is what ingest reads (a damaged overview fails the B1 look)
        for block in gtiff_blocks(src):
            if block is None:
                return None, None  # this GDAL does not say: the caller decodes instead
            bidx, row, col, offset, length = block
            if not missing and offset + length > size:
                missing = (f"block (row {row}, column {col}) of band {bidx} ends at byte {offset + length}, "
                           f"the file has {size} bytes")
            rows[row] = rows.get(row, 0) + length
        bh = src.block_shapes[0][0]
        return missing, ("geotiff", [(r * bh, min(src.height, (r + 1) * bh), n) for r, n in sorted(rows.items())])
    if src.driver in JP2_DRIVERS:
        missing, tile_rows = _jp2_blocks(path)
        return missing, None if tile_rows is None else ("jpeg2000", tile_rows)
    return None, None


def decode_estimate(layout: BlockLayout, height: int) -> list[tuple[float, float, float]]:
    """A file's :data:`BlockLayout` as decoding time per block row: (first row, end row) as
    fractions of its ``height`` from the north, and milliseconds (:data:`DECODE_MS_PER_MB`). A
    read decodes every block it touches whole, so a task that reads part of a block row pays
    for all of it."""
    codec, rows = layout
    ms_per_byte = DECODE_MS_PER_MB[codec] / 1e6
    return [(first / height, last / height, nbytes * ms_per_byte) for first, last, nbytes in rows]

