"""Canonical rows, their digests and checksums, and the comparison of two builds.

Each row becomes canonical JSON (the same on both backends), a SHA-256 per row,
and a SHA-256 per (table, partition) over the row digests sorted by key. A
row's partition is :func:`safereplay.projections.partition_of` of the first key
column that holds a UUID (the aggregate the row belongs to); a key without one
is hashed (SHA-256 of its canonical JSON).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from safereplay.projections import (
    Projection,
    partition_of,
)
from safereplay.recovery.drills.views import ReadView, canonical_json

__all__ = [
    "MAX_LISTED_DIFFERENCES",
    "Digests",
    "PartitionComparison",
    "RowDifference",
    "checksum",
    "compare",
    "digest_rows",
    "row_partition",
]

#: Differing row keys listed per (table, partition); the count is always complete.
MAX_LISTED_DIFFERENCES = 100
DifferenceKind = Literal["differs", "missing in live", "missing in sandbox"]


def row_partition(key: Sequence[Any], count: int) -> int:
    """The partition of a row: its first UUID key column's, else a hash of the key."""
    if count == 1:
        return 0
    for part in key:
        if isinstance(part, str):
            try:
                return partition_of(UUID(part), count)
            except ValueError:
                continue
    digest = hashlib.sha256(canonical_json(list(key)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % count


#: (table, partition) -> canonical key JSON -> (key, row digest)
Digests = dict[tuple[str, int], dict[str, tuple[tuple[Any, ...], str]]]


def digest_rows(cls: type[Projection], view: ReadView, build: int, count: int) -> Digests:
    digests: Digests = {(t.name, p): {} for t in cls.tables for p in range(count)}
    for table in cls.tables:
        for key, values in view.rows(cls.name, build, table):
            key_json = canonical_json(list(key))
            row = canonical_json([list(key), values]).encode("utf-8")
            digests[(table.name, row_partition(key, count))][key_json] = (
                key,
                hashlib.sha256(row).hexdigest(),
            )
    return digests


def checksum(rows: Mapping[str, tuple[tuple[Any, ...], str]]) -> str:
    """SHA-256 over ``key<TAB>row digest`` lines sorted by canonical key."""
    digest = hashlib.sha256()
    for key_json in sorted(rows):
        digest.update(f"{key_json}\t{rows[key_json][1]}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class RowDifference:
    """A row that differs: its key only (read-model values are never reported)."""

    key: tuple[Any, ...]
    kind: DifferenceKind


@dataclass(frozen=True)
class PartitionComparison:
    table: str
    partition: int
    partition_count: int
    live_checksum: str
    sandbox_checksum: str
    live_rows: int
    sandbox_rows: int
    match: bool
    #: How many rows differ (all of them), and the first MAX_LISTED_DIFFERENCES.
    differing_rows: int = 0
    differences: tuple[RowDifference, ...] = ()


def compare(live: Digests, sandbox: Digests, count: int) -> tuple[PartitionComparison, ...]:
    comparisons = []
    for table, partition in sorted(live):
        ours, theirs = live[(table, partition)], sandbox[(table, partition)]
        differences = [
            RowDifference(
                key=(ours.get(k) or theirs[k])[0],
                kind=(
                    "missing in live"
                    if k not in ours
                    else "missing in sandbox"
                    if k not in theirs
                    else "differs"
                ),
            )
            for k in sorted(ours.keys() | theirs.keys())
            if k not in ours or k not in theirs or ours[k][1] != theirs[k][1]
        ]
        live_sum, sandbox_sum = checksum(ours), checksum(theirs)
        comparisons.append(
            PartitionComparison(
                table=table,
                partition=partition,
                partition_count=count,
                live_checksum=live_sum,
                sandbox_checksum=sandbox_sum,
                live_rows=len(ours),
                sandbox_rows=len(theirs),
                match=live_sum == sandbox_sum,
                differing_rows=len(differences),
                differences=tuple(differences[:MAX_LISTED_DIFFERENCES]),
            )
        )
    return tuple(comparisons)
