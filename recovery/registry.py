"""Which projections recovery knows: loaded from ``SAFEREPLAY_PROJECTIONS`` entries.

Workers on other machines must run the same projection code as the operator who
started a job; they find a job's projection here by name. Each entry is
``module:attribute`` naming a :class:`~projections.Projection` subclass or a
sequence of them (default: the reference projections).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from safereplay.projections import Projection
from safereplay.recovery.errors import InvalidRequest, UnregisteredProjection

__all__ = ["ProjectionRegistry"]


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
        for entry in (part.strip() for part in spec.split(",")):
            if not entry:
                continue
            module_name, _, attribute = entry.partition(":")
            if not module_name or not attribute:
                raise InvalidRequest(
                    f"SAFEREPLAY_PROJECTIONS entry {entry!r} is not 'module:attribute'"
                )
            try:
                value = getattr(importlib.import_module(module_name), attribute)
            except (ImportError, AttributeError) as exc:
                raise InvalidRequest(
                    f"SAFEREPLAY_PROJECTIONS entry {entry!r} cannot be imported: {exc}"
                ) from exc
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
