"""BigEarthNet(-MM) v1 patch folders -> labelled shards in the 19-class nomenclature.

Source layout (Sumbul et al. 2019/2021; ``BigEarthNet-S2`` and optionally ``BigEarthNet-S1``)::

    SRC/S2A_MSIL2A_20170617T113321_4_55/
        S2A_MSIL2A_20170617T113321_4_55_B01.tif      60 m, 20 x 20 px   (uint16 L2A DN)
        ..._B02.tif ..._B03.tif ..._B04.tif ..._B08.tif   10 m, 120 x 120 px
        ..._B05 ..._B06 ..._B07 ..._B8A ..._B11 ..._B12  20 m, 60 x 60 px
        ..._B09.tif                                   60 m
        S2A_MSIL2A_20170617T113321_4_55_labels_metadata.json   CORINE 2018 labels (43 classes)
    SRC_S1/S1A_IW_GRDH_1SDV_20170617T064724_29UPU_4_55/
        ..._VV.tif ..._VH.tif                         10 m dB float32, 120 x 120 px
        ..._labels_metadata.json                      with "corresponding_s2_patch"

(files of one patch may also sit together in one folder). One sample per S2 patch:

- ``s2`` uint16 ``[1, 13, 120, 120]``: the 12 L2A bands on the 10 m grid of B02 with a zero
  B10 inserted at index 10 (``s2_b10_zero``); 20 m and 60 m bands are upsampled to 10 m with
  nearest resampling by default (their grids nest exactly in the 10 m grid, so every stored
  value is a source value), or bilinear;
- ``s1`` / ``s1valid`` when an S1 patch names it in ``corresponding_s2_patch`` (VV, VH dB;
  invalid where not finite or exactly 0);
- ``labels``: the JSON's CORINE names mapped to BigEarthNet-19 with :data:`CORINE43_TO_BEN19`
  (the official table of Sumbul et al. 2020); a patch with no 19-class label left (e.g. only
  "Burnt areas") is skipped, as in the official 19-class release.

Patches of processing baseline >= 04.00 (from ``tile_source``) get the +1000 DN offset removed,
like ingest does; BigEarthNet v1 (2017-2018) predates it.
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
from rasterio.enums import Resampling

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
from eoforge.shards.schema import BIGEARTHNET19, S2_B10_INDEX, S2_BAND_NAMES, s2_file_label

#: The 43 CORINE Land Cover level-3 class names used in BigEarthNet v1 label JSONs, in the
#: dataset's original label order.
CORINE43: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

#: CORINE (43) -> BigEarthNet-19 class name (Sumbul et al. 2020, "BigEarthNet-MM", Table I;
#: ``label_indices.json`` "label_conversion"). Classes without an entry (road/rail, port,
#: airports, mineral extraction, dump, construction, green urban, sport/leisure, bare rock,
#: burnt areas, intertidal flats) are dropped from the 19-class nomenclature.
CORINE43_TO_BEN19: dict[str, str] = {
    "Continuous urban fabric": "Urban fabric",
    "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Non-irrigated arable land": "Arable land",
    "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops",
    "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops",
    "Annual crops associated with permanent crops": "Permanent crops",
    "Pastures": "Pastures",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas": "Agro-forestry areas",
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Beaches, dunes, sands": "Beaches, dunes, sands",
    "Inland marshes": "Inland wetlands",
    "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands",
    "Salines": "Coastal wetlands",
    "Water courses": "Inland waters",
    "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters",
    "Estuaries": "Marine waters",
    "Sea and ocean": "Marine waters",
}

LABELS_SUFFIX = "_labels_metadata.json"
#: The 12 bands of BigEarthNet S2 patches (L2A: no B10), canonical names.
BEN_S2_BANDS: tuple[str, ...] = tuple(b for b in S2_BAND_NAMES if b != "B10")
RESAMPLINGS = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear}


def _norm(name: str) -> str:
    """Label spelling without case, spacing and punctuation differences (v1 vs v2 spellings)."""
    return re.sub(r"[^a-z]+", "", name.lower())


_CORINE_BY_NORM = {_norm(n): n for n in CORINE43}
_BEN19_BY_NORM = {_norm(n): n for n in BIGEARTHNET19.names}


def map_labels(corine: list[str]) -> list[str]:
    """BigEarthNet-19 class names (nomenclature order, no duplicates) of CORINE labels.

    Names already in the 19-class nomenclature (BigEarthNet v2 metadata) pass through.

    Raises:
        AdapterError: a name that is neither a CORINE-43 nor a BigEarthNet-19 class.
    """
    out: set[str] = set()
    for name in corine:
        key = _norm(name)
        if key in _CORINE_BY_NORM:
            mapped = CORINE43_TO_BEN19.get(_CORINE_BY_NORM[key])
            if mapped is not None:
                out.add(mapped)
        elif key in _BEN19_BY_NORM:
            out.add(_BEN19_BY_NORM[key])
        else:
            raise AdapterError(f"unknown CORINE label {name!r}")
    return [n for n in BIGEARTHNET19.names if n in out]


def _iso(text: str | None) -> str | None:
    """``"2017-06-17 11:33:21"`` / ``"2017-06-17T06:47:24"`` -> ``"2017-06-17T11:33:21Z"``."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace(" ", "T").rstrip("Z")).strftime("%Y-%m-%dT%H:%M:%SZ")


def _baseline(tile_source: str | None) -> str | None:
    m = re.search(r"_N(\d{2})(\d{2})_", tile_source or "")
    return f"{m[1]}.{m[2]}" if m else None


def find_patches(sources: list[str | os.PathLike[str]]) -> tuple[dict[str, Path], dict[str, Path]]:
    """``({s2 patch: folder}, {s2 patch: s1 folder stem path})`` from label JSONs under ``sources``.

    An S2 patch is a JSON whose folder holds ``<patch>_B02.tif``; an S1 patch a JSON whose folder
    holds ``<patch>_VV.tif`` and that names its S2 patch in ``corresponding_s2_patch``.
    The S1 value is the path prefix ``<folder>/<s1 patch>`` (``_VV.tif`` / ``_VH.tif`` appended).
    """
    s2: dict[str, Path] = {}
    s1: dict[str, Path] = {}
    for src in sources:
        src = Path(src)
        if not src.is_dir():
            raise AdapterError(f"{src}: not a folder")
        for js in sorted(src.rglob(f"*{LABELS_SUFFIX}")):
            patch = js.name[: -len(LABELS_SUFFIX)]
            if (js.parent / f"{patch}_B02.tif").is_file():
                s2.setdefault(patch, js.parent)
            elif (js.parent / f"{patch}_VV.tif").is_file():
                target = json.loads(js.read_text()).get("corresponding_s2_patch")
                if target:
                    s1.setdefault(target, js.parent / patch)
    if not s2:
        raise AdapterError(f"{', '.join(map(str, sources))}: no BigEarthNet S2 patch (<patch>/<patch>_B02.tif + "
                           f"<patch>{LABELS_SUFFIX})")
    return s2, s1


def read_s2(folder: Path, patch: str, resampling: str = "nearest") -> tuple[np.ndarray, Any, Any]:
    """``(s2 uint16 [13, H, W] on the 10 m grid with zero B10, transform, crs)`` of one patch.

    Raises:
        AdapterError: a band file is missing or does not share the 10 m grid's footprint.
    """
    ref = folder / f"{patch}_B02.tif"
    with rasterio.open(ref) as src:
        height, width, transform, crs, bounds = src.height, src.width, src.transform, src.crs, src.bounds
    out = np.zeros((len(S2_BAND_NAMES), height, width), dtype=np.uint16)
    for band in BEN_S2_BANDS:
        path = folder / f"{patch}_{s2_file_label(band)}.tif"
        if not path.is_file():
            raise AdapterError(f"{path}: band {band} missing")
        with rasterio.open(path) as src:
            if src.crs != crs or not np.allclose(tuple(src.bounds), tuple(bounds)):
                raise AdapterError(f"{path}: footprint {tuple(src.bounds)} differs from B02's {tuple(bounds)}")
            out[S2_BAND_NAMES.index(band)] = src.read(1, out_shape=(height, width),
                                                      resampling=RESAMPLINGS[resampling])
    return out, transform, crs


def read_s1(prefix: Path, height: int, width: int, transform: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(s1 float32 [2, H, W] dB with NaN where invalid, s1valid bool [H, W])``.

    Raises:
        AdapterError: VV/VH missing or not on the S2 patch's 10 m grid.
    """
    bands = []
    for pol in ("VV", "VH"):
        path = prefix.parent / f"{prefix.name}_{pol}.tif"
        if not path.is_file():
            raise AdapterError(f"{path}: missing")
        with rasterio.open(path) as src:
            if (src.height, src.width) != (height, width) or not src.transform.almost_equals(transform):
                raise AdapterError(f"{path}: not on the S2 patch's 10 m grid")
            bands.append(src.read(1).astype(np.float32))
    s1 = np.stack(bands)
    valid = np.isfinite(s1).all(0) & (s1 != 0).all(0)
    s1[:, ~valid] = np.nan
    return s1, valid


def read_sample(folder: Path, patch: str, split: str, s1_prefix: Path | None = None,
                resampling: str = "nearest") -> Sample | tuple[None, str]:
    """One BigEarthNet patch as a labelled sample (or ``(None, reason)`` when it has no 19-class label)."""
    js = folder / f"{patch}{LABELS_SUFFIX}"
    meta_json = json.loads(js.read_text())
    try:
        names = map_labels(list(meta_json.get("labels", [])))
    except AdapterError as err:
        raise AdapterError(f"{js}: {err}") from err
    if not names:
        return None, "no BigEarthNet-19 label after mapping"
    s2, transform, crs = read_s2(folder, patch, resampling)
    baseline = _baseline(meta_json.get("tile_source"))
    offset = 1000 if baseline is not None and baseline >= "04.00" else 0
    if offset:
        data = s2 != 0
        s2[data] = np.maximum(s2[data].astype(np.int32) - offset, 1).astype(np.uint16)
    arrays: dict[str, np.ndarray] = {"s2": s2[None]}
    s2_time = _iso(meta_json.get("acquisition_date"))
    step = TimeStep(datetime=s2_time, s2_product_id=(meta_json.get("tile_source") or "").removesuffix(".SAFE") or None,
                    s2_level="L2A", s2_processing_baseline=baseline, s2_offset_removed=offset, s2_b10_zero=True,
                    s2_valid_fraction=float((np.delete(s2, S2_B10_INDEX, 0) != 0).all(0).mean()))
    extra: dict[str, Any] = {"dataset": "bigearthnet", "patch": patch, "corine_labels": meta_json.get("labels", [])}
    if s1_prefix is not None:
        s1, valid = read_s1(s1_prefix, s2.shape[1], s2.shape[2], transform)
        arrays.update(s1=s1[None], s1valid=valid[None])
        s1_json = json.loads((s1_prefix.parent / f"{s1_prefix.name}{LABELS_SUFFIX}").read_text())
        s1_time = _iso(s1_json.get("acquisition_time"))
        step.s1_product_id = s1_json.get("scene_source")
        step.s1_datetime = s1_time
        step.s1_source_unit = "db"
        step.s1_valid_fraction = float(valid.mean())
        if s1_time and s2_time:
            dt = datetime.fromisoformat(s1_time[:-1]) - datetime.fromisoformat(s2_time[:-1])
            step.dt_days = dt.total_seconds() / 86400
        extra["s1_patch"] = s1_prefix.name
    meta = SampleMeta(
        key=key_from_name(patch), epsg=int(crs.to_epsg()), transform=tuple(transform)[:6],
        width=s2.shape[2], height=s2.shape[1], split=split, time_steps=[step],
        labels=Labels(taxonomy=BIGEARTHNET19.name, names=list(BIGEARTHNET19.names),
                      multi_hot=[int(n in names) for n in BIGEARTHNET19.names], source=js.name),
        extra=extra,
    )
    return Sample(arrays, meta)


def adapt_bigearthnet(
    sources: list[str | os.PathLike[str]] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    include_s1: bool = True,
    resampling: str = "nearest",
    val_fraction: float = 0.2,
    split_lists: dict[str, str | os.PathLike[str]] | None = None,
    seed: int = 0,
    samples_per_shard: int = 1000,
    progress: bool = False,
) -> AdaptResult:
    """Write BigEarthNet patch folders as a labelled (BigEarthNet-19) dataset in ``out``.

    Args:
        sources: folders searched recursively for patch label JSONs (S2, and S1 when given).
        out: new dataset folder.
        include_s1: pair S1 patches (``corresponding_s2_patch``) into the samples.
        resampling: ``"nearest"`` or ``"bilinear"`` for the 20 m / 60 m bands.
        val_fraction: share of patches (seeded name hash) in ``val`` when no split lists.
        split_lists: ``{split: csv}`` of the official splits (S2 patch names, first column);
            unlisted patches are left out (the official lists already exclude the patches
            covered by seasonal snow, clouds and shadows).
        seed: split hash and write-order seed.
    """
    if resampling not in RESAMPLINGS:
        raise ValueError(f"resampling must be one of {sorted(RESAMPLINGS)}, got {resampling!r}")
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    s2, s1 = find_patches(sources)
    listed = read_split_lists(split_lists, lambda n: n.removesuffix(".tif")) if split_lists else None
    rule = SplitRule(val_fraction, seed, listed)

    def make(patch: str) -> Sample | tuple[None, str]:
        split = rule(patch)
        if split is None:
            return None, "not in any split list"
        return read_sample(s2[patch], patch, split, s1.get(patch) if include_s1 else None, resampling)

    return write_dataset(out, iter_guarded(mixed_order(s2, seed), make), adapter="bigearthnet",
                         source=[str(s) for s in sources], split_rule=rule, samples_per_shard=samples_per_shard,
                         progress=progress)
