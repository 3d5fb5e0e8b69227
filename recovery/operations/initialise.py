"""``safereplay init``: from nothing to a working store, without a line of Python.

In one directory it creates the key ring and the audit key (mode 0600), sets up
every component's tables (the schema migration, audited as ``bootstrap``),
creates the first admin (audited) and writes that admin's token to a 0600 file.
It says which ``export`` lines point the other commands at the store; it never
prints a token, a key or a DSN's password.

It runs only on nothing: if any of its files, the SQLite store, or (PostgreSQL)
a principal already exists, it refuses before anything is written. If a step
fails half-way, the files it made in this run are removed again, so running it
once more after fixing the cause starts from the same nothing.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from safereplay.domain import DomainSettings, KeyRing
from safereplay.projections import ProjectionSettings
from safereplay.recovery.errors import InvalidRequest
from safereplay.recovery.operations.context import RecoveryContext
from safereplay.recovery.operations.schema import migrate_bootstrap, needs_bootstrap
from safereplay.recovery.operations.security import bootstrap_admin
from safereplay.recovery.operations.store_check import check_postgres, check_sqlite_path
from safereplay.recovery.security.audit import AuditKey
from safereplay.recovery.settings import RecoverySettings

__all__ = [
    "InitReport",
    "StoreExists",
    "initialise",
    "reserved_secret_file",
    "write_secret_file",
]

KEY_RING = "keyring.json"
AUDIT_KEY = "audit.key"
EVENTS = "events.db"


class StoreExists(InvalidRequest):
    """``init`` found a store, or files of one, where it was to make a new one."""


@dataclass(frozen=True)
class InitReport:
    directory: Path
    backend: str
    admin: str
    key_file: Path
    audit_key_file: Path
    token_file: Path
    sqlite_path: Path | None
    postgres_schema: str | None
    components: list[str]
    exports: list[str] = field(default_factory=list)


def write_secret_file(path: Path, text: str) -> None:
    """A new file readable by its owner only (0600 from its creation; never replaced)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text + "\n")


@contextmanager
def reserved_secret_file(path: Path) -> Iterator[Callable[[str], None]]:
    """A new 0600 file, created (exclusively) before its secret exists: the body
    writes the secret with the function it is given; if the body fails, the file
    is removed again. An existing file is never replaced (:class:`StoreExists`)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise StoreExists(f"refusing to overwrite {str(path)!r}: it exists") from None
    except OSError as exc:
        raise InvalidRequest(f"cannot create {str(path)!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:

            def write(text: str) -> None:
                handle.write(text + "\n")

            yield write
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def export_lines(
    *,
    backend: str,
    key_file: Path,
    audit_key_file: Path,
    token_file: Path,
    sqlite_path: Path | None = None,
    postgres_schema: str | None = None,
) -> list[str]:
    """The shell lines that point every other command at a store (no secret in them)."""
    lines = [f"export SAFEREPLAY_BACKEND={backend}"]
    if sqlite_path is not None:
        lines.append(f"export SAFEREPLAY_SQLITE_PATH={shlex.quote(str(sqlite_path))}")
    else:
        lines.append(
            "# SAFEREPLAY_POSTGRES_DSN: keep it as set now (not printed: it may hold a password)"
        )
        lines.append(f"export SAFEREPLAY_POSTGRES_SCHEMA={shlex.quote(str(postgres_schema))}")
    lines += [
        f"export SAFEREPLAY_KEY_FILE={shlex.quote(str(key_file))}",
        f"export SAFEREPLAY_AUDIT_KEY_FILE={shlex.quote(str(audit_key_file))}",
        f"export SAFEREPLAY_TOKEN_FILE={shlex.quote(str(token_file))}",
    ]
    if "SAFEREPLAY_TOKEN" in os.environ:
        lines.append("unset SAFEREPLAY_TOKEN  # the token file takes its place")
    return lines


def initialise(directory: Path, *, admin: str = "admin") -> InitReport:
    """A new store with its keys and first admin; see the module's docstring.

    The backend is ``SAFEREPLAY_BACKEND`` (SQLite by default, in ``directory``;
    PostgreSQL: ``SAFEREPLAY_POSTGRES_DSN`` and ``SAFEREPLAY_POSTGRES_SCHEMA``).
    Raises :class:`StoreExists` (nothing changed) if there is something to overwrite.
    """
    directory = directory.expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise InvalidRequest(f"{str(directory)!r} is a file: give init a directory (--dir)")
    key_file = directory / KEY_RING
    audit_key_file = directory / AUDIT_KEY
    token_file = directory / f"{admin}.token"
    backend = os.environ.get("SAFEREPLAY_BACKEND", "sqlite").strip().lower() or "sqlite"
    overrides: dict[str, object] = {"backend": backend, "key_file": key_file, "encryption": True}
    if backend == "sqlite":
        overrides["sqlite_path"] = directory / EVENTS
    settings = DomainSettings.from_env(**overrides)
    sqlite_path = settings.sqlite_path if backend == "sqlite" else None
    ours = [key_file, audit_key_file, token_file] + ([sqlite_path] if sqlite_path else [])
    found = [str(p) for p in ours if p.exists()]
    if found:
        raise StoreExists(
            f"refusing to initialise: {', '.join(found)} already exist(s), nothing was "
            "changed. To use that store, export the variables `safereplay init` printed "
            "when it made it; to start over, move those files away first"
        )
    if sqlite_path is not None:
        if directory.exists():
            check_sqlite_path(sqlite_path, create=True)
        projections = ProjectionSettings.from_env().sqlite_store_path(settings)
        if projections != sqlite_path:
            check_sqlite_path(
                projections, create=True, variable="SAFEREPLAY_PROJECTIONS_SQLITE_PATH"
            )
    else:
        assert settings.postgres_dsn is not None
        check_postgres(settings.postgres_conninfo())
    context = RecoveryContext(
        domain=settings,
        recovery=RecoverySettings.from_env(audit_key_file=audit_key_file, audit_key=None),
        check_schema=False,
    )
    made: list[Path] = []
    made_directory = not directory.exists()
    try:
        if sqlite_path is None and not needs_bootstrap(context):
            raise StoreExists(
                f"refusing to initialise: PostgreSQL schema {settings.postgres_schema!r} "
                "already has principals (it is initialised); nothing was changed. Ask its "
                "admin for a token"
            )
        directory.mkdir(parents=True, exist_ok=True)
        if made_directory:
            os.chmod(directory, 0o700)
        KeyRing.generate("key-1").save(key_file)
        made.append(key_file)
        AuditKey.generate().save(audit_key_file)
        made.append(audit_key_file)
        if sqlite_path is not None:
            made += [sqlite_path, Path(f"{sqlite_path}-wal"), Path(f"{sqlite_path}-shm")]
        report = migrate_bootstrap(context, reason="safereplay init: a new store")
        token = bootstrap_admin(context, admin)
        write_secret_file(token_file, token)
        made.append(token_file)
    except BaseException:
        context.close()
        for path in made:
            path.unlink(missing_ok=True)
        if made_directory and directory.exists() and not any(directory.iterdir()):
            directory.rmdir()
        raise
    context.close()
    return InitReport(
        directory=directory,
        backend=backend,
        admin=admin,
        key_file=key_file,
        audit_key_file=audit_key_file,
        token_file=token_file,
        sqlite_path=sqlite_path,
        postgres_schema=None if sqlite_path else settings.postgres_schema,
        components=[str(a["component"]) for a in report["applied"]],
        exports=export_lines(
            backend=backend,
            key_file=key_file,
            audit_key_file=audit_key_file,
            token_file=token_file,
            sqlite_path=sqlite_path,
            postgres_schema=None if sqlite_path else settings.postgres_schema,
        ),
    )
