"""Windowed reads of one source band onto a target pixel grid (a cluster of grid tiles).

Two paths, chosen per file:

- **aligned**: the source is in the target CRS and its pixel grid lines up with the target
  grid at an integer ratio (S2 in its own UTM zone: 10 m bands 1:1, 20/60 m bands 2:1 and
  6:1). One ``DatasetReader.read`` of the window (plus a one-pixel halo) at the source's
  own resolution, upsampled in numpy (:func:`upsample`: separable bilinear that leaves
  nodata out of the weights, or nearest); 10 m values are copied exactly.
- **warped**: anything else (another UTM zone, EPSG:4326 S1 and land cover, unaligned
  grids) goes through a ``WarpedVRT`` onto the target grid; GDAL reads only the source
  blocks the target needs and skips nodata in the resampling kernel.

Either way memory is the target window, never the scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from eoforge.ingest.scan import gdal_path

#: GDAL settings for reading inputs: never write ``.aux.xml`` next to a user's files.
GDAL_READ_ENV: dict[str, Any] = {"GDAL_PAM_ENABLED": "NO", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


@dataclass(frozen=True)
class TargetGrid:
    """A north-up pixel grid: CRS (EPSG code), affine and size in pixels."""

    epsg: int
    transform: Affine
    width: int
    height: int

    @property
    def crs(self) -> CRS:
        return CRS.from_epsg(self.epsg)


class SourceCache:
    """Open datasets of one task, reused across the task's windows (GDAL's block cache then
    serves neighbouring windows); closed at the end of the task."""

    def __init__(self) -> None:
        self._open: dict[str, Any] = {}

    def get(self, path: str) -> Any:
        if path not in self._open:
            self._open[path] = rasterio.open(gdal_path(path))
        return self._open[path]

    def close(self) -> None:
        for ds in self._open.values():
            ds.close()
        self._open.clear()

    def __enter__(self) -> "SourceCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _aligned_ratio(src: Any, target: TargetGrid) -> int | None:
    """Integer source/target pixel ratio when the source grid lines up with the target, else None."""
    if src.crs is None or src.crs.to_epsg() != target.epsg:
        return None
    s, t = src.transform, target.transform
    if s.b or s.d or t.b or t.d or s.a <= 0 or s.e >= 0:
        return None
    ratio = s.a / t.a
    r = round(ratio)
    if r < 1 or abs(ratio - r) > 1e-9 or abs(s.e / t.e - r) > 1e-9:
        return None
    # Source pixel edges must fall on target pixel edges.
    ox, oy = (t.c - s.c) / s.a, (s.f - t.f) / -s.e
    if abs(ox - round(ox)) > 1e-6 or abs(oy - round(oy)) > 1e-6:
        return None
    return r


def _bilinear_axis(a: np.ndarray, axis: int, ratio: int, first: int, n_out: int) -> np.ndarray:
    """Upsample ``axis`` (0 or 1) of ``a`` (float32, padded by one edge pixel on each side) by
    ``ratio``: target pixel j sits at source coordinate ``first + (j + 0.5) / ratio - 0.5``.

    Target pixels come in ``ratio`` phases with fixed weights, so each phase is two slices
    and one blend (no fancy-indexed copies)."""
    k = -(-n_out // ratio)  # source pixels spanned
    p = first + 1  # index of source pixel ``first`` in the padded array
    shape = (k, ratio, a.shape[1]) if axis == 0 else (a.shape[0], k, ratio)
    out = np.empty(shape, dtype=np.float32)
    for m in range(ratio):
        f = (m + 0.5) / ratio - 0.5  # offset from the source pixel centre, in source pixels
        lo, w = (p - 1, 1.0 + f) if f < 0 else (p, f)  # blend pixels lo and lo + 1, weight w on lo + 1
        if axis == 0:
            dst, x0, x1 = out[:, m], a[lo:lo + k], a[lo + 1:lo + 1 + k]
        else:
            dst, x0, x1 = out[:, :, m], a[:, lo:lo + k], a[:, lo + 1:lo + 1 + k]
        np.multiply(x0, 1.0 - w, out=dst)
        dst += x1 * w
    out = out.reshape((k * ratio, a.shape[1]) if axis == 0 else (a.shape[0], k * ratio))
    return out[:n_out] if axis == 0 else out[:, :n_out]


def upsample(data: np.ndarray, ratio: int, resampling: Resampling, first_row: int, first_col: int,
             n_rows: int, n_cols: int, nodata: float | None) -> np.ndarray:
    """``n_rows x n_cols`` target pixels from source ``data`` at ``ratio`` target pixels per
    source pixel; the target's first pixel lies in source pixel (``first_row``, ``first_col``)
    of ``data``. Nearest repeats pixels; bilinear is separable, rows then columns, with source
    pixels equal to ``nodata`` left out of the weights (0 weight everywhere -> ``nodata``).

    ``data`` must hold one source pixel of margin around the target where the source has one
    (a halo), so tile values do not depend on where a read window starts; indices past the
    edge of ``data`` are clamped (edge pixels repeated).
    """
    if resampling == Resampling.nearest:
        rows = np.arange(n_rows) // ratio + first_row
        cols = np.arange(n_cols) // ratio + first_col
        return data[rows[:, None], cols[None, :]]
    src = data.astype(np.float32)
    has_nodata = nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)) \
        and bool((data == nodata).any())
    weight = (data != nodata).astype(np.float32) if has_nodata else None
    if weight is not None:
        src *= weight

    def interp(a: np.ndarray) -> np.ndarray:
        a = np.pad(a, 1, mode="edge")  # clamp at the edges of ``data``
        rows = _bilinear_axis(a, 0, ratio, first_row, n_rows)
        return _bilinear_axis(rows, 1, ratio, first_col, n_cols)

    out = interp(src)
    if weight is not None:
        total = interp(weight)
        with np.errstate(invalid="ignore", divide="ignore"):
            out /= total
        out[total < 1e-6] = nodata
    if np.issubdtype(data.dtype, np.integer):
        np.rint(out, out=out)
    return out.astype(data.dtype, copy=False)


def read_band(cache: SourceCache, path: str, index: int, target: TargetGrid, resampling: Resampling,
              dtype: str, src_nodata: float | None, fill: float) -> np.ndarray:
    """Band ``index`` of ``path`` on ``target`` as ``dtype`` ``[height, width]``; ``fill``
    where the source has no pixels (outside its extent or nodata)."""
    src = cache.get(path)
    out = np.full((target.height, target.width), fill, dtype=dtype)
    ratio = _aligned_ratio(src, target)
    if ratio is not None:
        s, t = src.transform, target.transform
        col0 = round((t.c - s.c) / s.a)  # source pixel of the target's first column
        row0 = round((s.f - t.f) / -s.e)
        n_cols = math.ceil(target.width / ratio)
        n_rows = math.ceil(target.height / ratio)
        halo = 1 if ratio > 1 else 0  # bilinear needs the neighbours of edge pixels
        c0, r0 = max(col0 - halo, 0), max(row0 - halo, 0)
        c1, r1 = min(col0 + n_cols + halo, src.width), min(row0 + n_rows + halo, src.height)
        if c1 <= c0 or r1 <= r0:
            return out
        data = src.read(index, window=Window(c0, r0, c1 - c0, r1 - r0))
        # Target pixels covered by the source, and where they start in ``data``.
        y0, x0 = max(0, -row0) * ratio, max(0, -col0) * ratio
        y1 = min(target.height, (src.height - row0) * ratio)
        x1 = min(target.width, (src.width - col0) * ratio)
        if y1 <= y0 or x1 <= x0:
            return out
        if ratio > 1:
            block = upsample(data, ratio, resampling, row0 + y0 // ratio - r0, col0 + x0 // ratio - c0,
                             y1 - y0, x1 - x0, src_nodata)
        else:
            block = data[row0 + y0 - r0:row0 + y1 - r0, col0 + x0 - c0:col0 + x1 - c0]
        if block.dtype != out.dtype and np.issubdtype(out.dtype, np.integer):
            info = np.iinfo(out.dtype)  # saturate like GDAL's conversion, never wrap
            block = np.clip(block, info.min, info.max)
        out[y0:y1, x0:x1] = block
        if src_nodata is not None and not (isinstance(src_nodata, float) and math.isnan(src_nodata)) \
                and src_nodata != fill:
            out[out == src_nodata] = fill
        return out
    with WarpedVRT(src, crs=target.crs, transform=target.transform, width=target.width, height=target.height,
                   resampling=resampling, src_nodata=src_nodata, nodata=fill, dtype=dtype) as vrt:
        vrt.read(index, out=out)
    return out
