"""Sample keys and grid tile ids: the join key of the whole pipeline.

WebDataset splits a member name at its first dot into key and extension, so keys never
contain dots. Keys and tile ids are lowercase ``[a-z0-9_-]``, deterministic, and sort
spatially: a tile id is ``{zone:02d}{n|s}_{col:05d}_{row:05d}`` where ``col``/``row`` index
the tile's lower-left corner in multiples of the tile size along the zone's easting and
northing (UTM, metres), so ids sort by zone, then west -> east, then south -> north.
The grid itself (tile size in pixels, resolution in metres) is a dataset-level setting
recorded in every sample's metadata and in the manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Longest key accepted; member names must fit a 100-byte ustar name field.
MAX_KEY_LENGTH = 80
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
TILE_ID_RE = re.compile(r"^(?P<zone>\d{2})(?P<hemi>[ns])_(?P<col>\d{5})_(?P<row>\d{5})$")


class KeyRuleError(ValueError):
    """A key or tile id breaks the rules; the message says which rule."""


def check_key(key: str) -> str:
    """Return ``key`` when it is a valid sample key, else raise :class:`KeyRuleError`."""
    if not isinstance(key, str) or not key:
        raise KeyRuleError(f"sample key must be a non-empty string, got {key!r}")
    if "." in key:
        raise KeyRuleError(f"sample key {key!r} contains a dot (WebDataset splits keys at dots)")
    if len(key) > MAX_KEY_LENGTH:
        raise KeyRuleError(f"sample key {key!r} is longer than {MAX_KEY_LENGTH} characters")
    if not KEY_RE.match(key):
        raise KeyRuleError(f"sample key {key!r} must be lowercase [a-z0-9_-], starting alphanumeric")
    return key


def key_from_name(name: str) -> str:
    """A valid sample key from a source's own name (a patch or chip id, a file stem), for
    datasets that are not on the grid: lowercase, each run of other characters -> ``_``,
    cut to :data:`MAX_KEY_LENGTH`.

    Raises:
        KeyRuleError: ``name`` has no usable character.
    """
    key = re.sub(r"[^a-z0-9_-]+", "_", name.lower()).strip("_-")
    if not key:
        raise KeyRuleError(f"{name!r}: no usable characters for a sample key")
    return check_key(key[:MAX_KEY_LENGTH].rstrip("_-"))


@dataclass(frozen=True, order=True)
class TileId:
    """A grid tile: UTM zone, hemisphere and the tile's column/row in that zone.

    ``col * tile_m`` and ``row * tile_m`` are the easting and northing (metres) of the tile's
    lower-left corner, with ``tile_m = tile_size_px * resolution_m``.
    """

    zone: int
    hemisphere: str
    col: int
    row: int

    def __post_init__(self) -> None:
        if not 1 <= self.zone <= 60:
            raise KeyRuleError(f"UTM zone {self.zone} outside 1..60")
        if self.hemisphere not in ("n", "s"):
            raise KeyRuleError(f"hemisphere must be 'n' or 's', got {self.hemisphere!r}")
        if not (0 <= self.col < 100_000 and 0 <= self.row < 100_000):
            raise KeyRuleError(f"tile column/row ({self.col}, {self.row}) outside 0..99999")

    @property
    def epsg(self) -> int:
        """EPSG code of the tile's UTM zone (WGS 84)."""
        return (32600 if self.hemisphere == "n" else 32700) + self.zone

    def __str__(self) -> str:
        return f"{self.zone:02d}{self.hemisphere}_{self.col:05d}_{self.row:05d}"

    @classmethod
    def parse(cls, tile_id: str) -> TileId:
        m = TILE_ID_RE.match(tile_id)
        if not m:
            raise KeyRuleError(f"tile id {tile_id!r} is not of the form 32n_00123_01234")
        return cls(int(m["zone"]), m["hemi"], int(m["col"]), int(m["row"]))
