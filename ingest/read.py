"""Windowed reads of one source band onto a target pixel grid (a cluster of grid tiles).

Two paths, chosen per file:

- **aligned**: the source is in the target CRS and its pixel grid lines up with the target
  grid at an integer ratio (S2 in its own UTM zone: 10 m bands 1:1, 20/60 m bands 2:1 and
  6:1). One ``DatasetReader.read`` of the window, upsampled by GDAL with the given
  resampling; 10 m values are copied exactly.
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
        c0, r0 = max(col0, 0), max(row0, 0)
        c1, r1 = min(col0 + n_cols, src.width), min(row0 + n_rows, src.height)
        if c1 <= c0 or r1 <= r0:
            return out
        window = Window(c0, r0, c1 - c0, r1 - r0)
        data = src.read(index, window=window, out_shape=((r1 - r0) * ratio, (c1 - c0) * ratio),
                        resampling=resampling, out_dtype=dtype) if ratio > 1 else \
            src.read(index, window=window, out_dtype=dtype)
        y0, x0 = (r0 - row0) * ratio, (c0 - col0) * ratio
        h = min(data.shape[0], target.height - y0)
        w = min(data.shape[1], target.width - x0)
        out[y0:y0 + h, x0:x0 + w] = data[:h, :w]
        if src_nodata is not None and not (isinstance(src_nodata, float) and math.isnan(src_nodata)) \
                and src_nodata != fill:
            out[out == src_nodata] = fill
        return out
    with WarpedVRT(src, crs=target.crs, transform=target.transform, width=target.width, height=target.height,
                   resampling=resampling, src_nodata=src_nodata, nodata=fill, dtype=dtype) as vrt:
        vrt.read(index, out=out)
    return out
