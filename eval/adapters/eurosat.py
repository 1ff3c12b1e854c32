"""EuroSAT-MS -> labelled shards.

Source layout (Helber et al. 2019; the ``EuroSAT_MS`` / ``EuroSAT-MS`` zip)::

    SRC/AnnualCrop/AnnualCrop_1.tif     13-band uint16 Sentinel-2 L1C, 64 x 64 px at 10 m, UTM
    SRC/Forest/Forest_1.tif
    ...                                  one folder per class (10 classes, 27 000 images)

Each GeoTIFF becomes one sample: ``s2`` uint16 ``[1, 13, 64, 64]`` in the canonical band order
(the files' order; a 12-band L2A variant gets a zero B10 inserted and flagged), its own CRS
and transform, and single-label ``labels`` in the ``eurosat`` taxonomy (one-hot over the 10
classes, whatever subset of class folders is present). EuroSAT records no acquisition dates,
so ``datetime`` is None. Class folders are matched to the 10 official names
case-insensitively; any other folder is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

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
from eoforge.shards.schema import EUROSAT, S2_B10_INDEX, S2_BAND_NAMES

_SUFFIXES = (".tif", ".tiff")


def find_images(src: str | os.PathLike[str]) -> dict[str, tuple[Path, str]]:
    """``{image stem: (path, class name)}`` of every GeoTIFF in the class folders of ``src``.

    Raises:
        AdapterError: a folder that is not a EuroSAT class, no images at all, or a stem twice.
    """
    src = Path(src)
    if not src.is_dir():
        raise AdapterError(f"{src}: not a folder")
    by_lower = {n.lower(): n for n in EUROSAT.names}
    out: dict[str, tuple[Path, str]] = {}
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        cls = by_lower.get(folder.name.lower())
        if cls is None:
            raise AdapterError(f"{folder}: not a EuroSAT class folder (classes: {', '.join(EUROSAT.names)})")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in _SUFFIXES:
                continue
            if path.stem in out:
                raise AdapterError(f"{path}: image name {path.stem!r} also in {out[path.stem][0].parent}")
            out[path.stem] = (path, cls)
    if not out:
        raise AdapterError(f"{src}: no GeoTIFFs in class folders (expected SRC/<Class>/<Class>_<n>.tif)")
    return out


def read_sample(path: Path, cls: str, split: str) -> Sample:
    """One EuroSAT GeoTIFF as a labelled sample.

    Raises:
        AdapterError: not 12/13 bands, negative values, or no CRS.
    """
    with rasterio.open(path) as src:
        data = src.read()
        crs, transform = src.crs, src.transform
    if crs is None or crs.to_epsg() is None:
        raise AdapterError(f"{path}: no EPSG CRS")
    if data.shape[0] == len(S2_BAND_NAMES) - 1:
        data = np.insert(data, S2_B10_INDEX, 0, axis=0)  # L2A-style 12 bands: zero B10
        b10_zero = True
    elif data.shape[0] == len(S2_BAND_NAMES):
        b10_zero = False
    else:
        raise AdapterError(f"{path}: {data.shape[0]} bands, expected 13 (L1C) or 12 (L2A)")
    if data.dtype.kind not in "ui" or (data.dtype.kind == "i" and data.min() < 0) or data.max() > 65535:
        raise AdapterError(f"{path}: values of dtype {data.dtype} outside uint16 DN")
    hot = [int(n == cls) for n in EUROSAT.names]
    meta = SampleMeta(
        key=key_from_name(path.stem),
        epsg=int(crs.to_epsg()),
        transform=tuple(transform)[:6],
        width=data.shape[2],
        height=data.shape[1],
        split=split,
        time_steps=[TimeStep(datetime=None, s2_level="L1C" if not b10_zero else "L2A", s2_b10_zero=b10_zero,
                             s2_valid_fraction=float((data != 0).all(0).mean()))],
        labels=Labels(taxonomy=EUROSAT.name, names=list(EUROSAT.names), multi_hot=hot, source="EuroSAT-MS"),
        extra={"dataset": "eurosat", "source": f"{path.parent.name}/{path.name}"},
    )
    return Sample({"s2": data.astype(np.uint16)[None]}, meta)


def adapt_eurosat(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    val_fraction: float = 0.2,
    split_lists: dict[str, str | os.PathLike[str]] | None = None,
    seed: int = 0,
    samples_per_shard: int = 1000,
    progress: bool = False,
) -> AdaptResult:
    """Write the EuroSAT-MS folder ``src`` as a labelled dataset in ``out``.

    Args:
        src: the folder holding one sub-folder per class.
        out: new dataset folder.
        val_fraction: share of images (by seeded name hash) in ``val`` when no split lists.
        split_lists: ``{split: file}`` listing image file names (e.g. the torchgeo
            ``eurosat-train.txt`` / ``-val.txt`` / ``-test.txt``); unlisted images are left out.
        seed: split hash and write-order seed.
    """
    images = find_images(src)
    listed = read_split_lists(split_lists, lambda n: Path(n).stem) if split_lists else None
    rule = SplitRule(val_fraction, seed, listed)

    def make(stem: str) -> Sample | tuple[None, str]:
        split = rule(stem)
        if split is None:
            return None, "not in any split list"
        path, cls = images[stem]
        return read_sample(path, cls, split)

    return write_dataset(out, iter_guarded(mixed_order(images, seed), make), adapter="eurosat",
                         source=[str(src)], split_rule=rule, samples_per_shard=samples_per_shard, progress=progress)
