"""What went wrong with an input, as ingest records it: one :class:`ErrorRow` per problem,
a row of ``DS/errors.parquet`` (:data:`ERRORS_SCHEMA`).

Scan, plan, the read tasks and the shard tasks all make them; the read tasks' rows travel
inside their JSON reports (:meth:`ErrorRow.to_dict` / :meth:`ErrorRow.from_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

ERRORS_SCHEMA = pa.schema([
    ("path", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("product_id", pa.string()),
])


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """One problem with an input.

    Attributes:
        path: the file, STAC item, product folder or shard the problem is in.
        stage: ``"scan"``, ``"plan"`` or ``"materialize"`` (reads and shard writes).
        reason: why, in words, naming what to fix where that is known.
        product_id: the product concerned, when known (a folder may hold several).
    """

    path: str
    stage: str
    reason: str
    product_id: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "stage": self.stage, "reason": self.reason, "product_id": self.product_id}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> ErrorRow:
        return cls(str(row["path"]), str(row["stage"]), str(row["reason"]), row.get("product_id"))
