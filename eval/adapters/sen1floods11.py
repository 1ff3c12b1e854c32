"""Sen1Floods11 hand-labelled chips -> labelled shards with a water segmentation label.

Source layout (Bonafilia et al. 2020, ``v1.1/data/flood_events/HandLabeled``; the three files
of a chip may also sit in one folder)::

    S1Hand/Spain_7370579_S1Hand.tif        2 bands VV, VH, float32 dB, NaN nodata
    S2Hand/Spain_7370579_S2Hand.tif        13 bands L1C, int16 DN (reflectance x 10000), 0 nodata
    LabelHand/Spain_7370579_LabelHand.tif  int16: -1 no label, 0 dry, 1 water
    (512 x 512 px, EPSG:4326, ~10 m)

One sample per chip with a ``LabelHand`` file, on the chip's own grid (no reprojection, so
every label pixel is kept exactly):

- ``s2`` uint16 ``[1, 13, H, W]`` (L1C, B10 real), ``s1`` float32 ``[1, 2, H, W]`` dB with
  ``s1valid`` (finite and not exactly 0), whichever the chip has (at least one);
- ``lc`` uint8 ``[1, H, W]`` in the ``sen1floods11`` taxonomy: 0 dry, 1 water, 255 no label;
- ``labels``: fractions of dry / water over labelled pixels, multi-hot at ``threshold``.

Dates: Sen1Floods11 keeps them per flood event in ``Sen1Floods11_Metadata.geojson``
(``location``, ``s1_date``, ``s2_date``); when that file is given (or found under the sources)
the chip's event (its name before the last ``_``) gets them, else ``datetime`` is None.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from eoforge.eval.adapters.common import (
    AdapterError,
    AdaptResult,
    SplitRule,
    iter_guarded,
    mixed_order,
    read_split_lists,
    write_dataset,
)
from eoforge.shards.keys import key_from_name
from eoforge.shards.meta import Labels, SampleMeta, TimeStep
from eoforge.shards.sample import Sample
from eoforge.shards.schema import S2_BAND_NAMES, SEN1FLOODS11

KINDS = ("S1Hand", "S2Hand", "LabelHand")
METADATA_NAME = "Sen1Floods11_Metadata.geojson"
#: LabelHand value -> stored lc code
LABEL_TO_CODE = {-1: SEN1FLOODS11.nodata, 0: 0, 1: 1}


def chip_name(file_name: str) -> str:
    """``"Spain_7370579_S1Hand.tif"`` -> ``"Spain_7370579"`` (split-list entries too)."""
    stem = Path(file_name).name.split(".")[0]
    for kind in KINDS:
        stem = stem.removesuffix(f"_{kind}")
    return stem


def _event(name: str) -> str:
    return re.sub(r"[^a-z]+", "", name.rsplit("_", 1)[0].lower())


def find_chips(sources: list[str | os.PathLike[str]]) -> dict[str, dict[str, Path]]:
    """``{chip: {"S1Hand": path, "S2Hand": path, "LabelHand": path}}`` for chips with a LabelHand file."""
    found: dict[str, dict[str, Path]] = {}
    for src in sources:
        src = Path(src)
        if not src.is_dir():
            raise AdapterError(f"{src}: not a folder")
        for kind in KINDS:
            for path in sorted(src.rglob(f"*_{kind}.tif")):
                found.setdefault(chip_name(path.name), {}).setdefault(kind, path)
    chips = {c: files for c, files in found.items() if "LabelHand" in files}
    if not chips:
        raise AdapterError(f"{', '.join(map(str, sources))}: no *_LabelHand.tif chips")
    return chips


def read_event_dates(path: str | os.PathLike[str]) -> dict[str, dict[str, str | None]]:
    """``{event: {"s1": ISO datetime, "s2": ISO datetime, "orbit": ...}}`` from the metadata GeoJSON."""
    features = json.loads(Path(path).read_text()).get("features", [])
    out: dict[str, dict[str, str | None]] = {}
    for f in features:
        p = f.get("properties") or {}
        loc = p.get("location") or p.get("country") or p.get("event")
        if not loc:
            continue
        out[_event(f"{loc}_0")] = {"s1": _iso(p.get("s1_date")), "s2": _iso(p.get("s2_date")),
                                    "orbit": (p.get("orbit") or "").lower() or None}
    return out


def _iso(date: Any) -> str | None:
    if not date:
        return None
    text = str(date).replace("/", "-")
    try:
        return datetime.fromisoformat(text.rstrip("Z")).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def read_sample(chip: str, files: dict[str, Path], split: str, dates: dict[str, str | None] | None = None,
                threshold: float = 0.01) -> Sample:
    """One chip as a labelled sample.

    Raises:
        AdapterError: no S1/S2 image, grids that differ, or label values other than -1/0/1.
    """
    with rasterio.open(files["LabelHand"]) as src:
        label = src.read(1)
        crs, transform, shape = src.crs, src.transform, (src.height, src.width)
    values = set(np.unique(label).tolist())
    if not values <= set(LABEL_TO_CODE):
        raise AdapterError(f"{files['LabelHand']}: label values {sorted(values - set(LABEL_TO_CODE))} "
                           f"(expected -1 no label, 0 dry, 1 water)")
    lc = np.full(shape, SEN1FLOODS11.nodata, dtype=np.uint8)
    lc[label == 0] = 0
    lc[label == 1] = 1
    arrays: dict[str, np.ndarray] = {}
    dates = dates or {}
    step = TimeStep(datetime=dates.get("s2") or dates.get("s1"))
    if "S2Hand" in files:
        with rasterio.open(files["S2Hand"]) as src:
            _same_grid(src, shape, transform, files["S2Hand"])
            s2 = src.read()
        if s2.shape[0] != len(S2_BAND_NAMES):
            raise AdapterError(f"{files['S2Hand']}: {s2.shape[0]} bands, expected 13")
        if s2.min() < 0 or s2.max() > 65535:
            raise AdapterError(f"{files['S2Hand']}: DN outside 0..65535")
        arrays["s2"] = s2.astype(np.uint16)[None]
        step.s2_level = "L1C"
        step.s2_valid_fraction = float((s2 != 0).all(0).mean())
    if "S1Hand" in files:
        with rasterio.open(files["S1Hand"]) as src:
            _same_grid(src, shape, transform, files["S1Hand"])
            s1 = src.read().astype(np.float32)
        if s1.shape[0] != 2:
            raise AdapterError(f"{files['S1Hand']}: {s1.shape[0]} bands, expected VV, VH")
        valid = np.isfinite(s1).all(0) & (s1 != 0).all(0)
        s1[:, ~valid] = np.nan
        arrays.update(s1=s1[None], s1valid=valid[None])
        step.s1_datetime = dates.get("s1")
        step.s1_source_unit = "db"
        step.s1_orbit_direction = dates.get("orbit")
        step.s1_valid_fraction = float(valid.mean())
        if dates.get("s1") and dates.get("s2"):
            dt = datetime.fromisoformat(dates["s1"][:-1]) - datetime.fromisoformat(dates["s2"][:-1])
            step.dt_days = dt.total_seconds() / 86400
    if not arrays.keys() & {"s1", "s2"}:
        raise AdapterError(f"{files['LabelHand']}: no S1Hand or S2Hand image for chip {chip}")
    arrays["lc"] = lc[None]
    counts = np.array([(lc == c).sum() for c in SEN1FLOODS11.codes], dtype=np.float64)
    fractions = counts / counts.sum() if counts.sum() else np.zeros(2)
    meta = SampleMeta(
        key=key_from_name(chip), epsg=int(crs.to_epsg()), transform=tuple(transform)[:6], width=shape[1],
        height=shape[0], split=split, time_steps=[step],
        labels=Labels(taxonomy=SEN1FLOODS11.name, names=list(SEN1FLOODS11.names),
                      multi_hot=[int(f >= threshold and f > 0) for f in fractions],
                      fractions=[round(float(f), 6) for f in fractions], threshold=threshold,
                      source=files["LabelHand"].name),
        extra={"dataset": "sen1floods11", "chip": chip, "label_pixels": int(counts.sum())},
    )
    return Sample(arrays, meta)


def _same_grid(src: Any, shape: tuple[int, int], transform: Any, path: Path) -> None:
    if (src.height, src.width) != shape or not src.transform.almost_equals(transform):
        raise AdapterError(f"{path}: not on the LabelHand grid ({src.height}x{src.width} vs {shape[0]}x{shape[1]})")


def adapt_sen1floods11(
    sources: list[str | os.PathLike[str]] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    metadata: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.2,
    split_lists: dict[str, str | os.PathLike[str]] | None = None,
    threshold: float = 0.01,
    seed: int = 0,
    samples_per_shard: int = 100,
    progress: bool = False,
) -> AdaptResult:
    """Write Sen1Floods11 hand-labelled chips as a labelled dataset in ``out``.

    Args:
        sources: folders searched recursively for ``*_S1Hand.tif``, ``*_S2Hand.tif``, ``*_LabelHand.tif``.
        out: new dataset folder.
        metadata: ``Sen1Floods11_Metadata.geojson`` (default: the first found under ``sources``).
        val_fraction: share of chips (seeded name hash) in ``val`` when no split lists.
        split_lists: ``{split: csv}``, e.g. ``{"train": "flood_train_data.csv", "val":
            "flood_valid_data.csv", "test": "flood_test_data.csv"}``; unlisted chips are left out.
        threshold: smallest class fraction that sets the class's multi-hot bit.
        seed: split hash and write-order seed.
        samples_per_shard: most chips per shard (a 512 px chip is ~8 MB before compression).
    """
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    chips = find_chips(sources)
    if metadata is None:
        metadata = next((p for s in sources for p in Path(s).rglob(METADATA_NAME)), None)
    events = read_event_dates(metadata) if metadata is not None else {}
    listed = read_split_lists(split_lists, chip_name) if split_lists else None
    rule = SplitRule(val_fraction, seed, listed)

    def make(chip: str) -> Sample | tuple[None, str]:
        split = rule(chip)
        if split is None:
            return None, "not in any split list"
        return read_sample(chip, chips[chip], split, events.get(_event(chip)), threshold)

    return write_dataset(out, iter_guarded(mixed_order(chips, seed), make), adapter="sen1floods11",
                         source=[str(s) for s in sources], split_rule=rule, samples_per_shard=samples_per_shard,
                         progress=progress)
