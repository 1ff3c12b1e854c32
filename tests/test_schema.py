"""The contract's tables and rules: band order, taxonomies, member checks, keys."""

from __future__ import annotations

import numpy as np
import pytest

from eoforge.shards.keys import KeyRuleError, TileId, check_key
from eoforge.shards.schema import (
    DYNAMIC_WORLD,
    S2_B10_INDEX,
    S2_BAND_NAMES,
    S2_BANDS,
    WORLDCOVER,
    WORLDCOVER_TO_DYNAMIC_WORLD,
    SchemaError,
    canonical_s2_band,
    check_arrays,
    worldcover_to_dynamic_world,
)


def test_s2_canonical_order_and_resolutions():
    assert S2_BAND_NAMES == ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
    assert S2_B10_INDEX == 10
    assert [b.gsd_m for b in S2_BANDS] == [60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 60, 20, 20]
    assert [b.name for b in S2_BANDS if not b.in_l2a] == ["B10"]
    assert sum(b.in_l2a for b in S2_BANDS) == 12


@pytest.mark.parametrize(("label", "name"), [("B02", "B2"), ("b8a", "B8A"), ("B08A", "B8A"), ("B12", "B12"), ("B8", "B8")])
def test_canonical_band_names(label, name):
    assert canonical_s2_band(label) == name


@pytest.mark.parametrize("label", ["B13", "SCL", "VV", "B00", ""])
def test_canonical_band_rejects(label):
    with pytest.raises(ValueError, match="not a Sentinel-2 band"):
        canonical_s2_band(label)


def test_worldcover_to_dynamic_world_mapping():
    assert set(WORLDCOVER_TO_DYNAMIC_WORLD) == set(WORLDCOVER.codes)
    wc = np.array([[0, 10, 20, 30], [40, 50, 60, 70], [80, 90, 95, 100]], dtype=np.uint8)
    dw = worldcover_to_dynamic_world(wc)
    names = [DYNAMIC_WORLD.names[c] if c != 255 else None for c in dw.ravel()]
    assert names == [
        None, "trees", "shrub_and_scrub", "grass",
        "crops", "built", "bare", "snow_and_ice",
        "water", "flooded_vegetation", "flooded_vegetation", "grass",
    ]


def test_taxonomy_lookup_maps_codes_to_indices():
    table = WORLDCOVER.lookup()
    assert table[10] == 0 and table[100] == 10 and table[0] == -1 and table[15] == -1
    assert DYNAMIC_WORLD.lookup()[8] == 8 and DYNAMIC_WORLD.lookup()[255] == -1


def _arrays(t=2, h=8, w=8):
    return {
        "s2": np.ones((t, 13, h, w), np.uint16),
        "s1": np.zeros((t, 2, h, w), np.float16),
        "s1valid": np.ones((t, h, w), bool),
        "lc": np.ones((1, h, w), np.uint8),
    }


def test_check_arrays_accepts_valid_and_static_landcover():
    """A static land-cover map (T = 1) and one per time step (T = 2) are both valid, and such a
    sample survives encode -> decode unchanged; any other T of ``lc`` is refused."""
    from conftest import make_sample

    from eoforge.shards.reader import decode_sample
    from eoforge.shards.sample import Sample, encode_sample

    for lc_steps in (1, 2):
        sample = make_sample(0, steps=2)
        sample.arrays["lc"] = np.repeat(sample.arrays["lc"][:1], lc_steps, axis=0)
        assert check_arrays("k", sample.arrays) is None
        encoded = encode_sample(Sample(sample.arrays, sample.meta))
        raw = {"__key__": sample.meta.key, **{info.name: b"".join(parts) for info, parts in encoded.members}}
        decoded = decode_sample(raw)
        for name, arr in sample.arrays.items():
            assert decoded[name].dtype == arr.dtype and np.array_equal(decoded[name], arr, equal_nan=True), name
    a = _arrays()
    a["lc"] = np.ones((3, 8, 8), np.uint8)
    with pytest.raises(SchemaError, match=r"k\.lc: .*3"):
        check_arrays("k", a)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(s2=a["s2"].astype(np.int16)), "k.s2: dtype int16"),
        (lambda a: a.update(s2=np.ones((2, 12, 8, 8), np.uint16)), "k.s2: 12 channels, expected 13"),
        (lambda a: a.update(s1=np.zeros((2, 2, 8, 9), np.float16)), "k.s1: H, W"),
        (lambda a: a.update(s1valid=np.ones((3, 8, 8), bool)), "k.s1valid: 3 time steps"),
        (lambda a: a.pop("s1valid"), "'s1' and 's1valid' go together"),
        (lambda a: a.update(rgb=np.ones((2, 3, 8, 8), np.uint8)), "unknown member 'rgb'"),
        (lambda a: a.update(s2=np.ones((13, 8, 8), np.uint16)), "does not have dims TCHW"),
        (lambda a: [a.pop(k) for k in ("s2", "s1", "s1valid")], "needs an 's2' or 's1' member"),
    ],
)
def test_check_arrays_rejects(change, message):
    a = _arrays()
    change(a)
    with pytest.raises(SchemaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_arrays("k", a)


@pytest.mark.parametrize(
    ("key", "rule"),
    [("32n_00001.x", "dot"), ("Tile", "lowercase"), ("", "non-empty"), ("a" * 81, "longer"), ("-ab", "starting"), ("a b", "lowercase")],
)
def test_check_key_rejects(key, rule):
    with pytest.raises(KeyRuleError, match=rule):
        check_key(key)


def test_tile_id_roundtrip_epsg_and_spatial_sort():
    t = TileId(32, "n", 123, 4567)
    assert str(t) == "32n_00123_04567"
    assert TileId.parse(str(t)) == t
    assert t.epsg == 32632 and TileId(19, "s", 1, 2).epsg == 32719
    check_key(str(t))
    ids = [TileId(33, "n", 1, 1), TileId(32, "n", 2, 0), TileId(32, "n", 1, 5), TileId(32, "n", 1, 4)]
    # string order == (zone, west->east, south->north) order
    assert sorted(map(str, ids)) == [str(i) for i in sorted(ids)]
    assert sorted(map(str, ids))[0] == "32n_00001_00004"
    with pytest.raises(KeyRuleError):
        TileId.parse("32N_00123_04567")
    with pytest.raises(KeyRuleError):
        TileId(61, "n", 0, 0)


@pytest.mark.parametrize("name", S2_BAND_NAMES)
def test_file_label_is_the_inverse_of_canonical_name(name):
    from eoforge.shards.schema import s2_file_label

    assert canonical_s2_band(s2_file_label(name)) == name
    assert s2_file_label("B2") == "B02" and s2_file_label("B8A") == "B8A"
