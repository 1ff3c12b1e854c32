"""A sample in memory, and its tar members in their fixed order."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from eoforge.shards.encoding import DEFAULT_CODEC, SUFFIX, encode_array, encode_json
from eoforge.shards.meta import SampleMeta
from eoforge.shards.schema import MEMBER_ORDER, META_MEMBER, SchemaError, check_arrays


@dataclass
class Sample:
    """One tile: its arrays (see :mod:`eoforge.shards.schema`) and its metadata."""

    arrays: dict[str, np.ndarray]
    meta: SampleMeta

    @property
    def key(self) -> str:
        return self.meta.key

    def validate(self) -> None:
        """Raise :class:`~eoforge.shards.schema.SchemaError` when arrays and metadata disagree."""
        check_arrays(self.key, self.arrays)
        steps = {a.shape[0] for n, a in self.arrays.items() if n != "lc"}
        if steps != {len(self.meta.time_steps)}:
            raise SchemaError(
                f"{self.key}: arrays have {sorted(steps)} time steps,"
                f" metadata has {len(self.meta.time_steps)}"
            )
        h, w = next(iter(self.arrays.values())).shape[-2:]
        if (h, w) != (self.meta.height, self.meta.width):
            raise SchemaError(
                f"{self.key}: arrays are {h}x{w}, metadata says {self.meta.height}x{self.meta.width}"
            )


@dataclass(frozen=True)
class MemberInfo:
    """What the manifest records about one tar member."""

    name: str  # member name without the key: "s2.npy.zst", "json"
    sha256: str
    nbytes: int
    dtype: str | None  # None for the JSON member
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class EncodedSample:
    """A sample as its tar members, in :data:`MEMBER_ORDER`, and its metadata.

    Each member is ``(info, parts)``: its bytes are the concatenation of ``parts`` (a writer
    that assembles members from encoded pieces never joins them in memory)."""

    meta: SampleMeta
    members: list[tuple[MemberInfo, tuple[bytes, ...]]]

    @property
    def key(self) -> str:
        return self.meta.key


def array_member(name: str, parts: tuple[bytes, ...], dtype: str, shape: tuple[int, ...],
                 codec: str) -> tuple[MemberInfo, tuple[bytes, ...]]:
    """The ``(info, parts)`` of an array member encoded elsewhere (``name`` without suffix)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    info = MemberInfo(f"{name}.{SUFFIX[codec]}", digest.hexdigest(), sum(map(len, parts)), dtype, tuple(shape))
    return info, parts


def meta_member(meta: SampleMeta) -> tuple[MemberInfo, tuple[bytes, ...]]:
    """The ``(info, parts)`` of the JSON metadata member."""
    data = encode_json(meta.to_dict())
    return MemberInfo(META_MEMBER, _sha256(data), len(data), None, None), (data,)


def encode_sample(sample: Sample, codec: str = DEFAULT_CODEC) -> EncodedSample:
    """Validate and serialise a sample into its members, in :data:`MEMBER_ORDER`."""
    sample.validate()
    out: list[tuple[MemberInfo, tuple[bytes, ...]]] = []
    for name in MEMBER_ORDER:
        if name == META_MEMBER:
            out.append(meta_member(sample.meta))
        elif name in sample.arrays:
            arr = sample.arrays[name]
            out.append(array_member(name, (encode_array(arr, codec),), arr.dtype.name, arr.shape, codec))
    return EncodedSample(sample.meta, out)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
