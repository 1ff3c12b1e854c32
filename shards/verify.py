"""Prove a dataset folder is whole: manifest and tars agree member by member.

Checks, per shard (in parallel across shards):

- every manifest row's members are in its tar, with the recorded sha256 and size;
- every tar member has a manifest row (no extra members, no duplicates);
- every array member decodes to the recorded dtype and shape, every JSON to its key;
- the tar is readable to its end (truncation and header corruption are caught).

And across the dataset: no duplicate keys, no manifest row whose shard file is missing,
no shard file that the manifest does not list. Leftover ``*.tar.tmp`` files (an interrupted
write) are reported as warnings.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eoforge.shards.encoding import DecodeError, decode_array, decode_json, split_member_name
from eoforge.shards.manifest import ManifestError, read_manifest
from eoforge.shards.schema import META_MEMBER


@dataclass(frozen=True)
class Problem:
    """One mismatch: where (shard, key, member) and what."""

    shard: str
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.shard + (f" [{self.key}]" if self.key else "")
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    shards_checked: int = 0
    samples_checked: int = 0
    members_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# expected[key][member] = (sha256, nbytes, dtype, shape)
_Expected = dict[str, dict[str, tuple[str, int, str | None, tuple[int, ...] | None]]]


def _check_shard(root: str, shard: str, expected: _Expected) -> tuple[int, int, list[Problem]]:
    """Stream one tar and compare it with its manifest rows."""
    problems: list[Problem] = []
    seen: dict[str, set[str]] = defaultdict(set)
    members = 0
    try:
        with tarfile.open(Path(root) / shard, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    problems.append(Problem(shard, None, f"unexpected tar entry {info.name!r} (not a file)"))
                    continue
                key, member, suffix = split_member_name(info.name)
                name = member + (f".{suffix}" if suffix else "")
                fh = tar.extractfile(info)
                data = fh.read() if fh else b""
                members += 1
                if name in seen[key]:
                    problems.append(Problem(shard, key, f"duplicate member {name!r}"))
                    continue
                seen[key].add(name)
                if key not in expected:
                    problems.append(Problem(shard, key, f"member {name!r} has no manifest row"))
                    continue
                want = expected[key].get(name)
                if want is None:
                    problems.append(Problem(shard, key, f"extra member {name!r} not in the manifest"))
                    continue
                sha, nbytes, dtype, shape = want
                if len(data) != nbytes:
                    problems.append(Problem(shard, key, f"{name}: {len(data)} bytes, manifest says {nbytes}"))
                if hashlib.sha256(data).hexdigest() != sha:
                    problems.append(Problem(shard, key, f"{name}: content hash differs from the manifest"))
                    continue
                problems.extend(_check_decodes(shard, key, member, suffix, data, dtype, shape))
    except (tarfile.TarError, EOFError, OSError) as err:
        problems.append(Problem(shard, None, f"unreadable tar (truncated or corrupt): {err}"))
    for key, wanted in expected.items():
        missing = sorted(set(wanted) - seen.get(key, set()))
        if missing:
            problems.append(Problem(shard, key, f"missing member(s) {', '.join(missing)}"))
    return len(expected), members, problems


def _check_decodes(
    shard: str, key: str, member: str, suffix: str, data: bytes, dtype: str | None, shape: tuple[int, ...] | None
) -> list[Problem]:
    try:
        if member == META_MEMBER:
            meta = decode_json(data)
            if meta.get("key") != key:
                return [Problem(shard, key, f"json: key {meta.get('key')!r} does not match")]
            return []
        arr = decode_array(data, suffix)
    except DecodeError as err:
        return [Problem(shard, key, f"{member}: {err}")]
    if arr.dtype.name != dtype or tuple(arr.shape) != tuple(shape or ()):
        return [Problem(shard, key, f"{member}: decoded {arr.dtype}{list(arr.shape)}, manifest says {dtype}{list(shape or ())}")]
    return []


def _expected_by_shard(rows: Iterable[dict[str, Any]]) -> dict[str, _Expected]:
    out: dict[str, _Expected] = defaultdict(dict)
    for r in rows:
        out[r["shard"]][r["key"]] = {
            m["name"]: (m["sha256"], m["nbytes"], m["dtype"], tuple(m["shape"]) if m["shape"] is not None else None)
            for m in r["members"]
        }
    return out


def verify_dataset(root: str | os.PathLike[str], workers: int | None = None, progress: bool = False) -> VerifyReport:
    """Verify the dataset folder ``root``; never raises for data problems, returns them."""
    root = Path(root)
    report = VerifyReport()
    try:
        table = read_manifest(root, columns=["key", "shard", "members"])
    except ManifestError as err:
        report.problems.append(Problem(str(root), None, str(err)))
        return report
    rows = table.to_pylist()
    for key, n in Counter(r["key"] for r in rows).items():
        if n > 1:
            report.problems.append(Problem("manifest.parquet", key, f"key appears in {n} manifest rows"))
    by_shard = _expected_by_shard(rows)
    on_disk = {p.relative_to(root).as_posix() for p in (root / "shards").glob("*/*.tar")}
    for extra in sorted(on_disk - set(by_shard)):
        report.problems.append(Problem(extra, None, "shard file is not listed in the manifest"))
    for tmp in sorted((root / "shards").glob("*/*.tar.tmp")):
        report.warnings.append(f"{tmp.relative_to(root)}: leftover temporary file of an interrupted write")
    present = []
    for shard in sorted(by_shard):
        if shard in on_disk:
            present.append(shard)
        else:
            report.problems.append(Problem(shard, None, f"shard file is missing ({len(by_shard[shard])} manifest rows)"))
    workers = max(1, min(workers or os.cpu_count() or 1, len(present)))
    bar = tqdm(total=len(present), unit="shard", desc="verify", disable=not progress)
    if workers == 1:
        results: Iterable[tuple[int, int, list[Problem]]] = (
            _check_shard(str(root), s, by_shard[s]) for s in present
        )
        for samples, members, problems in results:
            _add(report, samples, members, problems)
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_check_shard, str(root), s, by_shard[s]) for s in present]
            for fut in futures:
                _add(report, *fut.result())
                bar.update()
    bar.close()
    return report


def _add(report: VerifyReport, samples: int, members: int, problems: list[Problem]) -> None:
    report.shards_checked += 1
    report.samples_checked += samples
    report.members_checked += members
    report.problems.extend(problems)
