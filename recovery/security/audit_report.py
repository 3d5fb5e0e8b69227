"""What ``audit verify`` reports: the trail's state, and the changes whose outcome is
unknown; and what ``audit list`` shows of a row that cannot be read.

A state-changing operation writes an *intent* entry (outcome ``started``) before
it runs and an outcome entry naming it (``intent_seq``) after. An intent without
its outcome is not tampering — the process was killed between the two, or the
operation (a worker, a follower) is still running — so it never fails the
verification; the report names each one, because its change may or may not
have been made and someone should look (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "ListedEntry",
    "OutcomeUnknown",
    "UnreadableEntry",
    "VerificationReport",
    "outcomes_unknown",
]


@dataclass(frozen=True)
class OutcomeUnknown:
    """An intent entry with no outcome entry: its change may or may not have been made."""

    operation: str
    seq: int
    at: str
    principal: str
    scope: str

    def __str__(self) -> str:
        where = f"{self.operation} on {self.scope}"
        return f"entry {self.seq} at {self.at}: {where} by {self.principal}"


@dataclass(frozen=True)
class VerificationReport:
    """What ``audit verify`` found. ``status`` is ``intact``, ``tampered``,
    ``truncated``, ``rolled back``, ``emptied`` or ``dropped``; ``anchor`` says what
    the trail was checked against outside the database (or that nothing was);
    ``outcome_unknown`` lists the intents without an outcome (never a failure)."""

    ok: bool
    entries_checked: int
    first_bad_seq: int | None = None
    problem: str = ""
    status: str = ""
    anchor: str = ""
    notes: tuple[str, ...] = ()
    outcome_unknown: tuple[OutcomeUnknown, ...] = ()

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", "intact" if self.ok else "tampered")

    def __str__(self) -> str:
        if self.ok:
            text = (
                f"audit trail verified: {self.entries_checked} entries, chain and signatures intact"
            )
        else:
            text = (
                f"audit trail {self.status.upper()} at entry {self.first_bad_seq}: {self.problem}"
            )
        lines = [text, *([self.anchor] if self.anchor else []), *self.notes]
        if self.outcome_unknown:
            lines.append(
                f"{len(self.outcome_unknown)} operation(s) with outcome unknown (an intent entry "
                "and no outcome: still running, or the process died; check whether the change "
                "was made):"
            )
            lines.extend(f"  {pending}" for pending in self.outcome_unknown)
        return "\n".join(lines)


@dataclass(frozen=True)
class ListedEntry:
    """What ``audit list`` shows of every row, readable or not: which, when, who did
    what where, why, and how it ended."""

    seq: int | str
    at: str
    actor: str
    action: str
    scope: str
    reason: str
    outcome: str


@dataclass(frozen=True)
class UnreadableEntry(ListedEntry):
    """A stored row that cannot be read back as an entry: tampered with (listed, never
    trusted; ``audit verify`` names it)."""

    unreadable: str

    @classmethod
    def of(cls, row: Mapping[str, Any], error: Exception) -> UnreadableEntry:
        def text(name: str) -> str:
            return str(row.get(name, ""))

        seq = row.get("seq")
        return cls(
            seq=seq if isinstance(seq, int) else text("seq"),
            at=text("at"),
            actor=text("actor"),
            action=text("action"),
            scope=text("scope"),
            reason=text("reason"),
            outcome=text("outcome"),
            unreadable=f"this row cannot be read ({type(error).__name__}): tampered with? "
            "run `safereplay audit verify`",
        )


class _Entry(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def at(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def parameters(self) -> Mapping[str, Any]: ...


def outcomes_unknown(entries: Iterable[_Entry]) -> tuple[OutcomeUnknown, ...]:
    """The intent entries (outcome ``started``) that no later entry names as its intent."""
    intents: dict[int, _Entry] = {}
    for entry in entries:
        if entry.outcome == "started":
            intents[entry.seq] = entry
        else:
            named = entry.parameters.get("intent_seq")
            if isinstance(named, int) and not isinstance(named, bool):
                intents.pop(named, None)
    return tuple(OutcomeUnknown(e.action, e.seq, e.at, e.actor, e.scope) for e in intents.values())
