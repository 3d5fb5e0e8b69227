"""Which projections and reactions recovery knows: ``SAFEREPLAY_PROJECTIONS`` and
``SAFEREPLAY_REACTIONS`` entries.

Workers on other machines must run the same projection code as the operator who
started a job; they find a job's projection here by name. Each entry is
``module:attribute`` naming a :class:`~projections.Projection` subclass or a
sequence of them (default: the reference projections). A reaction entry names a
:class:`~reactions.Reaction` *instance* (it carries its destinations) or a sequence
of them (default: the reference reaction, ``run_completions``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from safereplay.projections import Projection
from safereplay.reactions import Reaction
from safereplay.recovery.errors import InvalidRequest, UnregisteredProjection, UnregisteredReaction

__all__ = ["ProjectionRegistry", "ReactionRegistry"]


def _entries(spec: str, variable: str) -> list[tuple[str, Any]]:
    """``(entry, value)`` for every ``module:attribute`` entry of ``spec``."""
    found: list[tuple[str, Any]] = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        module_name, _, attribute = entry.partition(":")
        if not module_name or not attribute:
            raise InvalidRequest(f"{variable} entry {entry!r} is not 'module:attribute'")
        try:
            value = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise InvalidRequest(f"{variable} entry {entry!r} cannot be imported: {exc}") from exc
        found.append((entry, value))
    return found


@dataclass(frozen=True)
class ProjectionRegistry(Mapping[str, type[Projection]]):
    """Projection classes by name."""

    classes: Mapping[str, type[Projection]]

    @classmethod
    def of(cls, projections: Iterable[type[Projection]]) -> ProjectionRegistry:
        classes: dict[str, type[Projection]] = {}
        for projection in projections:
            if projection.name in classes and classes[projection.name] is not projection:
                raise InvalidRequest(f"two projections are named {projection.name!r}")
            classes[projection.name] = projection
        return cls(classes)

    @classmethod
    def load(cls, spec: str) -> ProjectionRegistry:
        """Import every ``module:attribute`` entry of the comma-separated ``spec``."""
        found: list[type[Projection]] = []
        for entry, value in _entries(spec, "SAFEREPLAY_PROJECTIONS"):
            values = [value] if isinstance(value, type) else list(value)
            for item in values:
                if not (isinstance(item, type) and issubclass(item, Projection)):
                    raise InvalidRequest(
                        f"SAFEREPLAY_PROJECTIONS entry {entry!r} holds {item!r}, "
                        "not a Projection class"
                    )
                found.append(item)
        return cls.of(found)

    def __getitem__(self, name: str) -> type[Projection]:
        try:
            return self.classes[name]
        except KeyError:
            known = ", ".join(sorted(self.classes)) or "none"
            raise UnregisteredProjection(
                f"unknown projection {name!r}; known projections: {known} "
                "(SAFEREPLAY_PROJECTIONS lists them)"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.classes))

    def __len__(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class ReactionRegistry(Mapping[str, Reaction]):
    """Reaction instances by name."""

    reactions: Mapping[str, Reaction]

    @classmethod
    def of(cls, reactions: Iterable[Reaction]) -> ReactionRegistry:
        found: dict[str, Reaction] = {}
        for reaction in reactions:
            if reaction.name in found and found[reaction.name] is not reaction:
                raise InvalidRequest(f"two reactions are named {reaction.name!r}")
            found[reaction.name] = reaction
        return cls(found)

    @classmethod
    def load(cls, spec: str) -> ReactionRegistry:
        """Import every ``module:attribute`` entry of the comma-separated ``spec``."""
        found: list[Reaction] = []
        for entry, value in _entries(spec, "SAFEREPLAY_REACTIONS"):
            # A sequence of them, or one (anything else is refused below, by name).
            values = list(value) if isinstance(value, list | tuple) else [value]
            for item in values:
                if not isinstance(item, Reaction):
                    raise InvalidRequest(
                        f"SAFEREPLAY_REACTIONS entry {entry!r} holds {item!r}, not a Reaction "
                        "instance (a reaction is given with its destinations)"
                    )
                found.append(item)
        return cls.of(found)

    def __getitem__(self, name: str) -> Reaction:
        try:
            return self.reactions[name]
        except KeyError:
            known = ", ".join(sorted(self.reactions)) or "none"
            raise UnregisteredReaction(
                f"unknown reaction {name!r}; known reactions: {known} "
                "(SAFEREPLAY_REACTIONS lists them)"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.reactions))

    def __len__(self) -> int:
        return len(self.reactions)
