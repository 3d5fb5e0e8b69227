"""A ring of AES-256-GCM keys: one active key seals new data, every key opens.

Ciphertext layout (all integers big-endian)::

    b"\\x00SR" | format (1 byte, = 1) | key id length (1 byte) | key id (ascii)
             | nonce (12 bytes) | AES-GCM ciphertext + 16-byte tag

The leading NUL makes a sealed blob impossible to confuse with a JSON document,
so a reader with encryption turned off recognises encrypted rows instead of
failing with a parse error. The key id travels in clear so that a reader knows
which key to use; it is also bound into the associated data, so editing it is
detected like any other change.

Nonces are 96 random bits from the OS per seal. With random nonces NIST SP
800-38D bounds one key to 2**32 seals; rotation (see the key ring operations)
is how an installation stays far below that.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from safereplay.domain.errors import (
    EventDecryptionError,
    InvalidKey,
    KeyFileError,
    KeyRingError,
    UnknownKeyId,
)
from safereplay.domain.secret import read_owner_only

__all__ = [
    "KEY_BYTES",
    "MAGIC",
    "KeyRing",
    "is_sealed",
    "sealed_key_id",
    "shown_key_id",
]

MAGIC = b"\x00SR"
FORMAT_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEADER_FIXED = len(MAGIC) + 2
# Shortest text that can hold a whole base64 key (32 bytes: 43 characters + '=').
_SHOWN_ID_LIMIT = 43


def is_sealed(blob: bytes) -> bool:
    """True if ``blob`` has the layout of a key ring ciphertext."""
    return blob[: len(MAGIC)] == MAGIC


def sealed_key_id(blob: bytes) -> str:
    """The id of the key that sealed ``blob`` (read from its clear header)."""
    if not is_sealed(blob) or len(blob) < _HEADER_FIXED:
        raise EventDecryptionError("not a key ring ciphertext (header missing or truncated)")
    if blob[len(MAGIC)] != FORMAT_VERSION:
        raise EventDecryptionError(f"unknown ciphertext format {blob[len(MAGIC)]}")
    id_len = blob[len(MAGIC) + 1]
    key_id_bytes = blob[_HEADER_FIXED : _HEADER_FIXED + id_len]
    if len(key_id_bytes) != id_len:
        raise EventDecryptionError("ciphertext truncated inside its key id")
    try:
        key_id = key_id_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise EventDecryptionError("ciphertext key id is not ascii") from None
    if not _KEY_ID.match(key_id):
        raise EventDecryptionError("ciphertext key id is malformed")
    return key_id


def _header(key_id: str) -> bytes:
    """The clear header of a blob sealed under ``key_id``."""
    id_bytes = key_id.encode("ascii")
    return MAGIC + bytes((FORMAT_VERSION, len(id_bytes))) + id_bytes


def shown_key_id(key_id: str) -> str:
    """``key_id`` quoted for an error message, or a description if it may be a secret.

    A key id is not secret, but text that is not a valid id, or is long enough
    to hold a base64 key (43+ characters), may be a key pasted in the wrong
    place (``SAFEREPLAY_KEYS=BASE64`` without an id, or id and key swapped):
    such text is described by its length, never echoed.
    """
    if _KEY_ID.match(key_id) and len(key_id) < _SHOWN_ID_LIMIT:
        return repr(key_id)
    return f"of {len(key_id)} characters (not shown)"


def check_key_id(key_id: str) -> str:
    if not _KEY_ID.match(key_id):
        raise InvalidKey(
            f"key id {shown_key_id(key_id)} is not valid: use 1-64 characters from "
            "letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return key_id


def decode_key(key_id: str, encoded: str) -> bytes:
    """Decode one base64 key, checking it is exactly 32 bytes."""
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(f"key {shown_key_id(key_id)} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise InvalidKey(
            f"key {shown_key_id(key_id)} is {len(key)} bytes; AES-256-GCM needs {KEY_BYTES} "
            "bytes (44 base64 characters)"
        )
    return key


class _RepeatedName(ValueError):
    pass


def _no_repeated_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of repeated names silently; in a key file that would drop a key.
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise _RepeatedName(name)
        document[name] = value
    return document


@dataclass(frozen=True, repr=False)
class KeyRing:
    """An immutable set of named keys with one active key.

    Operations that change the ring (:meth:`with_key`, :meth:`activate`,
    :meth:`without_key`) return a new ring; :meth:`save` writes it atomically.
    ``repr`` and ``str`` show key ids only, so a ring can be logged safely.
    """

    keys: Mapping[str, bytes] = field(compare=False)
    active_key_id: str
    _aead: Mapping[str, AESGCM] = field(init=False, compare=False)
    _by_header: Mapping[bytes, AESGCM] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyFileError("the key ring holds no keys")
        for key_id, key in self.keys.items():
            check_key_id(key_id)
            if len(key) != KEY_BYTES:
                raise InvalidKey(
                    f"key {shown_key_id(key_id)} is {len(key)} bytes; AES-256-GCM needs "
                    f"{KEY_BYTES} bytes"
                )
        if self.active_key_id not in self.keys:
            raise UnknownKeyId(
                f"active key id {shown_key_id(self.active_key_id)} is not in the key ring "
                f"(ring holds: {', '.join(sorted(self.keys))})"
            )
        object.__setattr__(self, "keys", dict(self.keys))
        object.__setattr__(self, "_aead", {k: AESGCM(v) for k, v in self.keys.items()})
        # The clear header each key writes (magic, format, id length, id): open() finds
        # the key of a well-formed blob with one look-up of its header bytes.
        object.__setattr__(
            self,
            "_by_header",
            {_header(key_id): aead for key_id, aead in self._aead.items()},
        )

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={sorted(self.keys)!r}, active_key_id={self.active_key_id!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        """Same key ids, same key bytes (compared in constant time), same active key."""
        if not isinstance(other, KeyRing):
            return NotImplemented
        return (
            self.active_key_id == other.active_key_id
            and self.keys.keys() == other.keys.keys()
            and all(hmac.compare_digest(v, other.keys[k]) for k, v in self.keys.items())
        )

    def __hash__(self) -> int:
        return hash((self.active_key_id, self.key_ids))

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self.keys))

    # -- construction -----------------------------------------------------------------

    @staticmethod
    def generate_key() -> bytes:
        return AESGCM.generate_key(bit_length=KEY_BYTES * 8)

    @classmethod
    def generate(cls, key_id: str = "k1") -> KeyRing:
        """A new ring with one fresh random key, active."""
        return cls(keys={check_key_id(key_id): cls.generate_key()}, active_key_id=key_id)

    @classmethod
    def from_encoded(cls, encoded: Mapping[str, str], active_key_id: str) -> KeyRing:
        """From ``{key_id: base64 key}``; every key is checked."""
        keys = {check_key_id(k): decode_key(k, v) for k, v in encoded.items()}
        return cls(keys=keys, active_key_id=active_key_id)

    @classmethod
    def from_spec(cls, spec: str, active_key_id: str | None = None) -> KeyRing:
        """From ``"id1=BASE64,id2=BASE64"`` (the environment form).

        Without ``active_key_id`` the last key listed is the active one.
        """
        encoded: dict[str, str] = {}
        for index, item in enumerate(part.strip() for part in spec.split(",")):
            if not item:
                continue
            key_id, sep, value = item.partition("=")
            if not sep:
                raise InvalidKey(
                    f"key entry #{index + 1} has no '=': write entries as KEY_ID=BASE64"
                )
            if not value.strip():
                # Most likely a bare base64 key (its padding '=' read as the separator):
                # say so without echoing the entry.
                raise InvalidKey(
                    f"key entry #{index + 1} has no key after its '=': write entries as "
                    "KEY_ID=BASE64"
                )
            key_id = key_id.strip()
            if key_id in encoded:
                raise InvalidKey(f"key entry #{index + 1} repeats key id {shown_key_id(key_id)}")
            encoded[key_id] = value
        if not encoded:
            raise KeyFileError("the key list is empty: write it as KEY_ID=BASE64[,KEY_ID=BASE64]")
        return cls.from_encoded(encoded, active_key_id or list(encoded)[-1])

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, check_permissions: bool = True) -> KeyRing:
        """Read a key file (JSON: ``{"active": ID, "keys": {ID: BASE64}}``).

        Refuses a file that group or others may read: a key file is a secret.
        """
        path = Path(path)
        text = read_owner_only(
            path, what="key file", error=KeyFileError, check_permissions=check_permissions
        )
        if not text.strip():
            raise KeyFileError(f"key file {str(path)!r} is empty")
        try:
            document = json.loads(text, object_pairs_hook=_no_repeated_names)
        except _RepeatedName as exc:
            raise KeyFileError(
                f"key file {str(path)!r} repeats the name {shown_key_id(str(exc))} in one object"
            ) from None
        except json.JSONDecodeError as exc:
            # The position only, never the text: the file holds secrets.
            raise KeyFileError(
                f"key file {str(path)!r} is not valid JSON (line {exc.lineno}, column {exc.colno})"
            ) from None
        if (
            not isinstance(document, dict)
            or not isinstance(document.get("keys"), dict)
            or not isinstance(document.get("active"), str)
            or not all(isinstance(v, str) for v in document["keys"].values())
        ):
            raise KeyFileError(
                f"key file {str(path)!r} must be a JSON object "
                '{"active": KEY_ID, "keys": {KEY_ID: BASE64_KEY, ...}}'
            )
        if not document["keys"]:
            raise KeyFileError(f"key file {str(path)!r} holds no keys")
        try:
            return cls.from_encoded(document["keys"], document["active"])
        except KeyRingError as exc:
            # Same error class, with the file named: which file is wrong matters most.
            raise type(exc)(f"key file {str(path)!r}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the ring to ``path`` atomically, readable by the owner only.

        The temporary file is created with mode 0600 before any key byte is
        written, then renamed over the target, so a crash leaves either the old
        ring or the new one, never a partial file or a world-readable one.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "active": self.active_key_id,
            "keys": {k: base64.b64encode(v).decode("ascii") for k, v in self.keys.items()},
        }
        fd, tmp = tempfile.mkstemp(prefix=".keyring-", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- changes (rotation) -----------------------------------------------------------

    def with_key(self, key_id: str, key: bytes | None = None, *, activate: bool = False) -> KeyRing:
        check_key_id(key_id)
        if key_id in self.keys:
            raise InvalidKey(f"key id {key_id!r} is already in the ring")
        keys = dict(self.keys)
        keys[key_id] = key if key is not None else self.generate_key()
        return KeyRing(keys=keys, active_key_id=key_id if activate else self.active_key_id)

    def activate(self, key_id: str) -> KeyRing:
        if key_id not in self.keys:
            raise UnknownKeyId(f"key id {shown_key_id(key_id)} is not in the key ring")
        return KeyRing(keys=self.keys, active_key_id=key_id)

    def without_key(self, key_id: str) -> KeyRing:
        if key_id not in self.keys:
            raise UnknownKeyId(f"key id {shown_key_id(key_id)} is not in the key ring")
        if key_id == self.active_key_id:
            raise InvalidKey(f"key {key_id!r} is the active key; activate another key first")
        keys = {k: v for k, v in self.keys.items() if k != key_id}
        return KeyRing(keys=keys, active_key_id=self.active_key_id)

    # -- sealing ----------------------------------------------------------------------

    def seal(self, plaintext: bytes, associated_data: bytes, *, key_id: str | None = None) -> bytes:
        """Encrypt under the active key (or ``key_id``), binding ``associated_data``."""
        key_id = key_id or self.active_key_id
        try:
            aead = self._aead[key_id]
        except KeyError:
            raise UnknownKeyId(f"key id {shown_key_id(key_id)} is not in the key ring") from None
        header = _header(key_id)
        # A fresh random 96-bit nonce per message: never reuse a (key, nonce) pair.
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + aead.encrypt(nonce, plaintext, header + associated_data)

    def open(self, blob: bytes, associated_data: bytes, *, where: str = "") -> bytes:
        """Decrypt ``blob``; ``where`` names the row in errors (position, aggregate...)."""
        plaintext = self.open_common(blob, associated_data)
        if plaintext is not None:
            return plaintext
        return self._open_checked(blob, associated_data, where)

    def open_common(self, blob: bytes, associated_data: bytes) -> bytes | None:
        """The plaintext of a blob sealed by a key of this ring that authenticates;
        None for anything else (:meth:`open` then says what is wrong).

        The common case, once per event of a catch-up: the key is found by the bytes
        of the blob's clear header (magic, format, id length, id: what
        :func:`sealed_key_id` checks, a header written by a key of this ring has).
        """
        if len(blob) <= _HEADER_FIXED:
            return None
        header_len = _HEADER_FIXED + blob[_HEADER_FIXED - 1]
        aead = self._by_header.get(blob[:header_len])
        if aead is None or len(blob) < header_len + NONCE_BYTES:
            return None
        try:
            plaintext: bytes = aead.decrypt(
                blob[header_len : header_len + NONCE_BYTES],
                blob[header_len + NONCE_BYTES :],
                blob[:header_len] + associated_data,
            )
        except InvalidTag:
            return None
        return plaintext

    def _open_checked(self, blob: bytes, associated_data: bytes, where: str) -> bytes:
        suffix = f" ({where})" if where else ""
        try:
            key_id = sealed_key_id(blob)
        except EventDecryptionError as exc:
            raise EventDecryptionError(f"{exc}{suffix}") from None
        aead = self._aead.get(key_id)
        if aead is None:
            raise UnknownKeyId(
                f"event sealed with key id {key_id!r} which is not in the key ring{suffix}; "
                f"the ring holds {', '.join(self.key_ids)}"
            )
        header_len = _HEADER_FIXED + len(key_id)
        nonce = blob[header_len : header_len + NONCE_BYTES]
        if len(nonce) != NONCE_BYTES:
            raise EventDecryptionError(f"ciphertext truncated (key id {key_id!r}){suffix}")
        try:
            return aead.decrypt(
                nonce, blob[header_len + NONCE_BYTES :], blob[:header_len] + associated_data
            )
        except InvalidTag:
            raise EventDecryptionError(
                f"ciphertext failed authentication with key id {key_id!r}{suffix}: the key is "
                "wrong, or the stored state was altered or moved from another row"
            ) from None
