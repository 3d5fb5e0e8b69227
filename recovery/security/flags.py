"""Recovery flags and the operations switch: persisted, with a history of every change.

A **recovery flag** lets one safe procedure run unattended for one projection or
reaction (its *target*, ``projection:NAME`` or ``reaction:NAME``). The flags are a
closed set (:class:`FlagName`); each is off unless set, and a set flag applies to
the partitions of its :class:`Rollout` only: every partition, the listed ones, or
a share in percent. A partition is in a share by a stable hash of the target and
the partition, so raising the share only ever adds partitions.

Safe defaults (what an unset flag means): every flag off. ``auto_rebuild``
changes a live build (it swaps) and stays off unless an operator sets it;
``auto_catch_up``'s backlog threshold defaults to :data:`DEFAULT_BACKLOG_THRESHOLD`
events, ``auto_restart_stalled`` to :data:`DEFAULT_MAX_RESTARTS` restarts per
:data:`DEFAULT_WINDOW_SECONDS` seconds.

The **operations switch** is one row: while someone holds it (``held_by``),
operations are frozen: the dispatch gate of :mod:`safereplay.recovery.operations.flags`
refuses every operation that changes state with :class:`OperationsFrozen`, for
everyone but the holder.

Every change of a flag, a threshold or the switch appends a history row (who,
when, old value, new value, why) in the same transaction. Writers serialise on
the switch's row (``FOR UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite),
so the next history ``seq`` is read and written under that lock: two concurrent
writers never get the same number.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from safereplay.recovery.database import Database, Tx, recorded_rows
from safereplay.recovery.errors import InvalidRequest, OperationsFrozen

__all__ = [
    "DEFAULT_BACKLOG_THRESHOLD",
    "DEFAULT_MAX_RESTARTS",
    "DEFAULT_WINDOW_SECONDS",
    "SWITCH_SUBJECT",
    "Flag",
    "FlagChange",
    "FlagName",
    "FlagStore",
    "HistoryEntry",
    "Rollout",
    "SwitchState",
    "check_target",
    "parse_partitions",
]

#: ``auto_catch_up``: a follower starting behind by more events than this catches up
#: in a partitioned job instead of event by event.
DEFAULT_BACKLOG_THRESHOLD = 10_000
#: ``auto_restart_stalled``: the most restarts of one follower per window...
DEFAULT_MAX_RESTARTS = 3
#: ... and the window, in seconds.
DEFAULT_WINDOW_SECONDS = 3600
#: The history's subject for changes of the operations switch.
SWITCH_SUBJECT = "switch"


class FlagName(StrEnum):
    """The recovery flags; each is off unless set."""

    AUTO_CATCH_UP = "auto_catch_up"
    AUTO_REDRIVE = "auto_redrive"
    AUTO_REBUILD = "auto_rebuild"
    AUTO_RESTART_STALLED = "auto_restart_stalled"


def _flag_name(value: str) -> FlagName:
    try:
        return FlagName(value)
    except ValueError:
        known = ", ".join(n.value for n in FlagName)
        raise InvalidRequest(f"unknown flag {value!r}; known: {known}") from None


def check_target(target: str) -> str:
    """``target`` if it names one projection or one reaction, else InvalidRequest."""
    kind, _, name = target.partition(":")
    if kind not in ("projection", "reaction") or not name or name == "*":
        raise InvalidRequest(f"a flag's target is projection:NAME or reaction:NAME, not {target!r}")
    if not all(c.isalnum() or c == "_" for c in name) or len(name) > 63:
        raise InvalidRequest(f"target {target!r}: a name of letters, digits and _")
    return target


@dataclass(frozen=True)
class Rollout:
    """Which partitions a flag applies to: all (the default), the listed ones, or a share.

    ``share`` (1 to 100 percent): a partition is in when a stable hash of the target
    and the partition falls under it, so a larger share keeps every partition a
    smaller one had.
    """

    partitions: tuple[str, ...] | None = None
    share: int | None = None

    def __post_init__(self) -> None:
        if self.partitions is not None and self.share is not None:
            raise InvalidRequest("a rollout lists partitions or gives a share, not both")
        if self.partitions is not None and not self.partitions:
            raise InvalidRequest("a rollout's partition list is empty")
        if self.share is not None and not 1 <= self.share <= 100:
            raise InvalidRequest(f"a rollout's share is 1 to 100 percent, not {self.share}")

    def covers(self, target: str, partition: str) -> bool:
        """Is ``partition`` (a label, or a job partition's index as text) in the rollout?"""
        if self.partitions is not None:
            return partition in self.partitions
        if self.share is not None:
            return _bucket(target, partition) < self.share
        return True

    def describe(self) -> str:
        if self.partitions is not None:
            return "partitions " + ",".join(self.partitions)
        if self.share is not None:
            return f"{self.share}% of partitions"
        return "all partitions"

    def to_json(self) -> dict[str, Any]:
        return {
            "partitions": None if self.partitions is None else list(self.partitions),
            "share": self.share,
        }


def _bucket(target: str, partition: str) -> int:
    digest = hashlib.sha256(f"{target}/{partition}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


@dataclass(frozen=True)
class Flag:
    """One flag's value for one target. Thresholds apply to their own flag only."""

    name: FlagName
    target: str
    enabled: bool = False
    rollout: Rollout = field(default_factory=Rollout)
    #: auto_catch_up: backlog (events behind the head) above which it acts.
    backlog_threshold: int | None = None
    #: auto_restart_stalled: the most restarts per window, and the window (seconds).
    max_restarts: int | None = None
    window_seconds: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _flag_name(str(self.name)))
        check_target(self.target)
        if self.name == FlagName.AUTO_CATCH_UP:
            if self.backlog_threshold is None:
                object.__setattr__(self, "backlog_threshold", DEFAULT_BACKLOG_THRESHOLD)
            if self.backlog_threshold is not None and self.backlog_threshold < 0:
                raise InvalidRequest("backlog_threshold is a number of events, 0 or more")
        elif self.backlog_threshold is not None:
            raise InvalidRequest("backlog_threshold is a threshold of auto_catch_up only")
        if self.name == FlagName.AUTO_RESTART_STALLED:
            if self.max_restarts is None:
                object.__setattr__(self, "max_restarts", DEFAULT_MAX_RESTARTS)
            if self.window_seconds is None:
                object.__setattr__(self, "window_seconds", DEFAULT_WINDOW_SECONDS)
            if self.max_restarts is not None and not 1 <= self.max_restarts <= 100:
                raise InvalidRequest("max_restarts is 1 to 100")
            if self.window_seconds is not None and not 60 <= self.window_seconds <= 604_800:
                raise InvalidRequest("window_seconds is 60 to 604800 (a week)")
        elif self.max_restarts is not None or self.window_seconds is not None:
            raise InvalidRequest(
                "max_restarts and window_seconds are thresholds of auto_restart_stalled only"
            )
        if self.target.startswith("reaction:") and self.name in (
            FlagName.AUTO_CATCH_UP,
            FlagName.AUTO_REBUILD,
        ):
            raise InvalidRequest(f"{self.name} applies to projections, not to {self.target}")

    def applies_to(self, partition: str) -> bool:
        """Is the flag on for ``partition`` of its target?"""
        return self.enabled and self.rollout.covers(self.target, partition)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name.value,
            "target": self.target,
            "enabled": self.enabled,
            "rollout": self.rollout.to_json(),
            "backlog_threshold": self.backlog_threshold,
            "max_restarts": self.max_restarts,
            "window_seconds": self.window_seconds,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Flag:
        rollout = value.get("rollout") or {}
        partitions = rollout.get("partitions")
        return cls(
            name=FlagName(value["name"]),
            target=str(value["target"]),
            enabled=bool(value["enabled"]),
            rollout=Rollout(
                partitions=None if partitions is None else tuple(str(p) for p in partitions),
                share=rollout.get("share"),
            ),
            backlog_threshold=value.get("backlog_threshold"),
            max_restarts=value.get("max_restarts"),
            window_seconds=value.get("window_seconds"),
        )


@dataclass(frozen=True)
class SwitchState:
    """The operations switch: frozen while ``held_by`` is set."""

    held_by: str | None = None
    since: float | None = None
    reason: str | None = None

    @property
    def frozen(self) -> bool:
        return self.held_by is not None

    def refusal(self, operation: str) -> OperationsFrozen:
        """The error that refuses ``operation`` while the switch is frozen."""
        return OperationsFrozen(
            held_by=self.held_by or "",
            since=self.since or 0.0,
            reason=self.reason or "",
            operation=operation,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "frozen": self.frozen,
            "held_by": self.held_by,
            "since": self.since,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class HistoryEntry:
    """One change: of a flag (``flag:NAME:TARGET``) or of the switch (``switch``)."""

    seq: int
    subject: str
    actor: str
    at: float
    reason: str
    old_value: Mapping[str, Any] | None
    new_value: Mapping[str, Any] | None


@dataclass(frozen=True)
class FlagChange:
    """What a set or unset changed (``old``/``new`` None: the flag was/is unset)."""

    old: Flag | None
    new: Flag | None
    entry: HistoryEntry


_CREATE_FLAGS = """
CREATE TABLE IF NOT EXISTS {flags} (
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (name, target)
)"""
_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS {flag_history} (
    seq BIGINT PRIMARY KEY,
    subject TEXT NOT NULL,
    actor TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT
)"""
_CREATE_SWITCH = """
CREATE TABLE IF NOT EXISTS {operations_switch} (
    id INTEGER PRIMARY KEY,
    held_by TEXT,
    since DOUBLE PRECISION,
    reason TEXT
)"""
# What an automatic action last acted on, per flag and target (auto_redrive: the
# projection's code version its parked events were last seen or re-driven under).
_CREATE_MARKS = """
CREATE TABLE IF NOT EXISTS {flag_marks} (
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    mark TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (name, target)
)"""
_MARK = "SELECT mark FROM {flag_marks} WHERE name = %(name)s AND target = %(target)s"
_SET_MARK = """
INSERT INTO {flag_marks} (name, target, mark, updated_at)
VALUES (%(name)s, %(target)s, %(mark)s, %(at)s)
ON CONFLICT (name, target) DO UPDATE SET mark = excluded.mark, updated_at = excluded.updated_at"""

_ENSURE_SWITCH_ROW = """
INSERT INTO {operations_switch} (id, held_by, since, reason) VALUES (1, NULL, NULL, NULL)
ON CONFLICT DO NOTHING"""
_SWITCH = "SELECT held_by, since, reason FROM {operations_switch} WHERE id = 1"
_SET_SWITCH = """
UPDATE {operations_switch} SET held_by = %(held_by)s, since = %(since)s, reason = %(reason)s
WHERE id = 1"""
_NEXT_SEQ = "SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM {flag_history}"
_ADD_HISTORY = """
INSERT INTO {flag_history} (seq, subject, actor, at, reason, old_value, new_value)
VALUES (%(seq)s, %(subject)s, %(actor)s, %(at)s, %(reason)s, %(old_value)s, %(new_value)s)"""
_FLAG = "SELECT value FROM {flags} WHERE name = %(name)s AND target = %(target)s"
_FLAGS = "SELECT value FROM {flags} ORDER BY target, name"
_UPSERT_FLAG = """
INSERT INTO {flags} (name, target, value, updated_by, updated_at)
VALUES (%(name)s, %(target)s, %(value)s, %(actor)s, %(at)s)
ON CONFLICT (name, target) DO UPDATE SET value = excluded.value,
    updated_by = excluded.updated_by, updated_at = excluded.updated_at"""
_DELETE_FLAG = "DELETE FROM {flags} WHERE name = %(name)s AND target = %(target)s"
_HISTORY = "SELECT * FROM {flag_history} ORDER BY seq DESC LIMIT %(limit)s"
_HISTORY_OF = """
SELECT * FROM {flag_history} WHERE subject = %(subject)s ORDER BY seq DESC LIMIT %(limit)s"""


def _subject(name: FlagName, target: str) -> str:
    return f"flag:{name.value}:{target}"


def _dumps(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _loads(value: str | None) -> dict[str, Any] | None:
    return None if value is None else dict(json.loads(value))


class FlagStore:
    """The flags, their history and the operations switch, in the recovery database."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @staticmethod
    def schema_statements() -> list[str]:
        """The tables' DDL (templates), run by the ``recovery`` schema step."""
        return [_CREATE_FLAGS, _CREATE_HISTORY, _CREATE_SWITCH, _CREATE_MARKS]

    def create_tables(self) -> None:
        """Run the DDL directly (tools and tests)."""
        with self.database.transaction(write=True) as tx:
            for statement in self.schema_statements():
                tx.execute(statement)

    # -- flags ---------------------------------------------------------------------------

    def flags(self) -> list[Flag]:
        """Every set flag (on or off), by target then name."""
        return [
            Flag.from_json(json.loads(r["value"])) for r in recorded_rows(self.database, _FLAGS, {})
        ]

    def get(self, name: FlagName | str, target: str) -> Flag | None:
        """The flag as set, or None when it is not set (off)."""
        rows = recorded_rows(
            self.database, _FLAG, {"name": _flag_name(str(name)).value, "target": target}
        )
        return Flag.from_json(json.loads(rows[0]["value"])) if rows else None

    def effective(self, name: FlagName | str, target: str) -> Flag:
        """The flag as set, or its default (off) when it is not."""
        flag_name = _flag_name(str(name))
        return self.get(flag_name, target) or Flag(flag_name, check_target(target))

    def set(self, flag: Flag, *, actor: str, reason: str) -> FlagChange:
        """Set ``flag`` (its name and target), recording the old and new value."""
        with self.database.transaction(write=True) as tx:
            self._lock(tx)
            old = self._get(tx, flag.name, flag.target)
            at = tx.now()
            tx.execute(
                _UPSERT_FLAG,
                {
                    "name": flag.name.value,
                    "target": flag.target,
                    "value": json.dumps(flag.to_json(), sort_keys=True),
                    "actor": actor,
                    "at": at,
                },
            )
            entry = self._record(
                tx,
                _subject(flag.name, flag.target),
                actor,
                reason,
                None if old is None else old.to_json(),
                flag.to_json(),
            )
        return FlagChange(old, flag, entry)

    def update(
        self, name: FlagName | str, target: str, *, actor: str, reason: str, **changes: Any
    ) -> FlagChange:
        """Change some fields of the flag (its default if unset), keeping the others."""
        return self.set(
            replace(self.effective(name, target), **changes), actor=actor, reason=reason
        )

    def unset(self, name: FlagName | str, target: str, *, actor: str, reason: str) -> FlagChange:
        """Unset the flag (back to its default: off), recording its old value."""
        flag_name = _flag_name(str(name))
        check_target(target)
        with self.database.transaction(write=True) as tx:
            self._lock(tx)
            old = self._get(tx, flag_name, target)
            if old is None:
                raise InvalidRequest(f"flag {flag_name} is not set on {target}: nothing to unset")
            tx.execute(_DELETE_FLAG, {"name": flag_name.value, "target": target})
            entry = self._record(
                tx, _subject(flag_name, target), actor, reason, old.to_json(), None
            )
        return FlagChange(old, None, entry)

    def history(self, *, subject: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """The latest changes first (of one subject, if given)."""
        if subject is None:
            rows = recorded_rows(self.database, _HISTORY, {"limit": limit})
        else:
            rows = recorded_rows(self.database, _HISTORY_OF, {"subject": subject, "limit": limit})
        return [
            HistoryEntry(
                seq=int(r["seq"]),
                subject=str(r["subject"]),
                actor=str(r["actor"]),
                at=float(r["at"]),
                reason=str(r["reason"]),
                old_value=_loads(r["old_value"]),
                new_value=_loads(r["new_value"]),
            )
            for r in rows
        ]

    # -- marks of automatic actions -------------------------------------------------------

    def mark(self, name: FlagName | str, target: str) -> str | None:
        """What the flag's automatic action last acted on for ``target`` (None: never)."""
        rows = recorded_rows(
            self.database, _MARK, {"name": _flag_name(str(name)).value, "target": target}
        )
        return str(rows[0]["mark"]) if rows else None

    def set_mark(self, name: FlagName | str, target: str, mark: str) -> None:
        """Record what the flag's automatic action acted on (bookkeeping: not a change
        of the flag, so not in its history; the action itself is audited)."""
        with self.database.transaction(write=True) as tx:
            tx.execute(
                _SET_MARK,
                {
                    "name": _flag_name(str(name)).value,
                    "target": target,
                    "mark": mark,
                    "at": tx.now(),
                },
            )

    # -- the operations switch -----------------------------------------------------------

    def switch(self) -> SwitchState:
        """The switch as it is now (not frozen if never set)."""
        rows = recorded_rows(self.database, _SWITCH, {})
        if not rows or rows[0]["held_by"] is None:
            return SwitchState()
        row = rows[0]
        return SwitchState(str(row["held_by"]), float(row["since"]), str(row["reason"]))

    def freeze(self, *, actor: str, reason: str, operation: str = "freeze") -> SwitchState:
        """Freeze operations, held by ``actor``; OperationsFrozen if someone holds it."""
        with self.database.transaction(write=True) as tx:
            old = self._lock(tx)
            if old.frozen:
                if old.held_by == actor:
                    raise InvalidRequest(f"operations are already frozen by {actor!r}")
                raise old.refusal(operation)
            new = SwitchState(actor, tx.now(), reason)
            tx.execute(_SET_SWITCH, {"held_by": actor, "since": new.since, "reason": reason})
            self._record(tx, SWITCH_SUBJECT, actor, reason, old.to_json(), new.to_json())
        return new

    def unfreeze(self, *, actor: str, reason: str, may_override: bool = False) -> SwitchState:
        """Unfreeze: by the holder, or by anyone ``may_override`` allows (an admin).
        Returns the state it ended (who held it, since when, why)."""
        with self.database.transaction(write=True) as tx:
            old = self._lock(tx)
            if not old.frozen:
                raise InvalidRequest("operations are not frozen: nothing to unfreeze")
            if old.held_by != actor and not may_override:
                raise InvalidRequest(
                    f"operations are frozen by {old.held_by!r}: only they or an admin "
                    "(administer on *) may unfreeze them"
                )
            tx.execute(_SET_SWITCH, {"held_by": None, "since": None, "reason": None})
            self._record(tx, SWITCH_SUBJECT, actor, reason, old.to_json(), SwitchState().to_json())
        return old

    # -- inside a write transaction ------------------------------------------------------

    def _lock(self, tx: Tx) -> SwitchState:
        """Hold the switch's row until the transaction ends: every writer of this store
        takes it first, so writers are serial (and the history's seq is safe)."""
        tx.execute(_ENSURE_SWITCH_ROW)
        row = tx.rows(_SWITCH, for_update=True)[0]
        if row["held_by"] is None:
            return SwitchState()
        return SwitchState(str(row["held_by"]), float(row["since"]), str(row["reason"]))

    def _get(self, tx: Tx, name: FlagName, target: str) -> Flag | None:
        rows = tx.rows(_FLAG, {"name": name.value, "target": target})
        return Flag.from_json(json.loads(rows[0]["value"])) if rows else None

    def _record(
        self,
        tx: Tx,
        subject: str,
        actor: str,
        reason: str,
        old: Mapping[str, Any] | None,
        new: Mapping[str, Any] | None,
    ) -> HistoryEntry:
        seq = int(tx.rows(_NEXT_SEQ)[0]["seq"])
        at = tx.now()
        tx.execute(
            _ADD_HISTORY,
            {
                "seq": seq,
                "subject": subject,
                "actor": actor,
                "at": at,
                "reason": reason,
                "old_value": _dumps(old),
                "new_value": _dumps(new),
            },
        )
        return HistoryEntry(seq, subject, actor, at, reason, old, new)


def parse_partitions(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Partitions given as ``a,b,c`` (the CLI) or a list (the API); None if not given."""
    if value is None:
        return None
    if not isinstance(value, str | list | tuple):
        # A number or a mapping from a library caller or a hostile API body: refused
        # naming the parameter, not a TypeError from iterating it.
        raise InvalidRequest(
            f"partitions must be a comma-separated text or a list, not {type(value).__name__}"
        )
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    parts = tuple(p.strip() for p in items if p.strip())
    return parts or None
