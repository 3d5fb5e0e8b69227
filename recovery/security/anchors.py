"""Signed digests of the audit trail's head, kept outside the events database.

The audit trail's own head lives in the database it protects, so whoever owns
that database can cut the tail and put an older signed head back, or empty the
trail, and the chain alone still verifies. Like the signed log digests cloud
audit services deliver to separate storage, an *anchor* records the signed head
(sequence, hash, time, number of entries) somewhere a database owner cannot
rewrite; ``audit verify`` then checks the trail against the latest digest.

Each digest is HMAC-signed with the audit key and chained to the digest before
it (``prev_digest`` = SHA-256 of the previous digest's signed form), so a digest
removed from the middle, edited or forged is seen too. The one sink shipped,
:class:`DirectoryAnchorSink`, writes one file per digest, atomically (a
temporary file, fsync, then a link that never replaces an existing file), mode
0600; other sinks (object storage with retention, a transparency log) implement
:class:`AnchorSink`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

from safereplay.recovery.errors import RecoveryError
from safereplay.recovery.security.audit import GENESIS, AuditKey
from safereplay.recovery.settings import RecoverySettings

__all__ = [
    "AnchorError",
    "AnchorSink",
    "AuditDigest",
    "DirectoryAnchorSink",
    "check_digests",
    "sink_from_settings",
]

_FILE = re.compile(r"^digest-(\d{12})\.json$")


class AnchorError(RecoveryError):
    """An anchor cannot be written, or what it holds cannot be read."""


@dataclass(frozen=True)
class AuditDigest:
    """One signed record of the trail's head, the ``number``-th in its anchor."""

    number: int
    seq: int
    hash: str
    entries: int
    at: str
    prev_digest: str
    mac: str = ""

    def signed_text(self) -> str:
        fields = asdict(self)
        del fields["mac"]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return "anchor:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def fingerprint(self) -> str:
        """What the next digest chains to."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def signed_by(self, key: AuditKey) -> bool:
        return key.verifies(self.signed_text(), self.mac)

    @classmethod
    def from_json(cls, text: str) -> AuditDigest:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return cls(
            number=int(data["number"]),
            seq=int(data["seq"]),
            hash=str(data["hash"]),
            entries=int(data["entries"]),
            at=str(data["at"]),
            prev_digest=str(data["prev_digest"]),
            mac=str(data["mac"]),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1) + "\n"


class AnchorSink(ABC):
    """Where digests go: append-only, outside the events database."""

    #: Where the digests are, for messages (never a secret).
    where: str

    @abstractmethod
    def digests(self) -> list[AuditDigest]:
        """Every digest, oldest first; :class:`AnchorError` if one cannot be read."""

    @abstractmethod
    def write(self, digest: AuditDigest) -> None:
        """Add ``digest``; never replaces one already there."""


class DirectoryAnchorSink(AnchorSink):
    """One file per digest in a directory (``digest-000000000001.json``...)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.where = f"anchor directory {str(self.directory)!r}"

    def digests(self) -> list[AuditDigest]:
        if not self.directory.is_dir():
            return []
        found: list[AuditDigest] = []
        for path in sorted(self.directory.iterdir()):
            match = _FILE.match(path.name)
            if match is None:
                continue
            try:
                digest = AuditDigest.from_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError, TypeError):
                raise AnchorError(f"{self.where}: {path.name} cannot be read") from None
            if digest.number != int(match.group(1)):
                raise AnchorError(f"{self.where}: {path.name} holds digest {digest.number}")
            found.append(digest)
        return found

    def write(self, digest: AuditDigest) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self.directory / f"digest-{digest.number:012d}.json"
        temporary = self.directory / f".{final.name}.{uuid.uuid4().hex}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(digest.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            try:
                # A link, unlike a rename, never replaces a digest already there.
                os.link(temporary, final)
            except FileExistsError:
                raise AnchorError(
                    f"{self.where}: digest {digest.number} exists already (another "
                    "process anchored at the same time): run the command again"
                ) from None
        finally:
            temporary.unlink(missing_ok=True)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def check_digests(digests: list[AuditDigest], key: AuditKey) -> str | None:
    """What is wrong with an anchor's chain of digests (None if nothing)."""
    previous = GENESIS
    for expected, digest in enumerate(digests, start=1):
        if digest.number != expected:
            return f"digest {expected} is missing from the anchor"
        if not digest.signed_by(key):
            return f"digest {digest.number}'s signature is invalid (forged, or another key)"
        if digest.prev_digest != previous:
            return f"digest {digest.number} does not link to the digest before it"
        previous = digest.fingerprint()
    return None


def sink_from_settings(settings: RecoverySettings) -> AnchorSink | None:
    """The anchor the settings name (``SAFEREPLAY_AUDIT_ANCHOR_DIR``), if any."""
    if settings.audit_anchor_dir is None:
        return None
    return DirectoryAnchorSink(settings.audit_anchor_dir)
