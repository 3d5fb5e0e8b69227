"""Mapper that seals each event's state under the key ring, bound to its row.

eventsourcing's ``Cipher`` interface sees only the plaintext, so it cannot bind a
ciphertext to the row it belongs to. The binding needs the row identity, which
the ``Mapper`` has; hence encryption lives in this ``Mapper`` subclass, while
transcoding and compression stay eventsourcing's (so stored state keeps
eventsourcing's format: transcode, compress, then encrypt).

The mapper is built the way eventsourcing builds mappers,
``mapper_class(transcoder=, compressor=, cipher=)``, so ``MAPPER_TOPIC`` and
``Follower.follow`` can build it: the key ring then comes from the cipher, a
:class:`~safereplay.domain.cipher.KeyRingCipher`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID, SafeUUID

import msgspec
import orjson
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    Cipher,
    Compressor,
    DatetimeAsISO,
    JSONTranscoder,
    Mapper,
    Notification,
    StoredEvent,
    Transcoder,
    UUIDAsHex,
)
from eventsourcing.utils import TopicError, get_topic, resolve_topic

from safereplay.domain.cipher import KeyRingCipher
from safereplay.domain.envelope import Envelope, derived_envelope
from safereplay.domain.errors import (
    ConfigurationError,
    EventDecryptionError,
    FieldProblem,
    UndecodableEvent,
    UnknownEventType,
    UnknownKeyId,
    UnknownSchemaVersion,
)
from safereplay.domain.events import ENVELOPE_FIELDS
from safereplay.domain.keyring import KeyRing, is_sealed

__all__ = ["EnvelopeMapper", "associated_data", "describe_row", "uuid_from_text"]


def associated_data(originator_id: UUID | str, originator_version: int, topic: str) -> bytes:
    """Row identity bound into each ciphertext: moving a blob to another row fails."""
    return f"{originator_id}\x1f{originator_version}\x1f{topic}".encode()


#: Aggregate id texts kept by a mapper for associated data (~0.4 MB when full).
_ID_TEXTS_MAX = 2048
#: ``key_ring`` not given: the ring is the cipher's (or none, without a cipher).
_FROM_CIPHER: Any = object()


def describe_row(stored: StoredEvent) -> str:
    position = getattr(stored, "id", None)
    where = f"aggregate {stored.originator_id} version {stored.originator_version}"
    return f"position {position}, {where}" if position is not None else where


class EnvelopeMapper(Mapper[UUID]):
    """Transcode, compress (with a ``compressor``), then seal under the key ring
    (or store plaintext when there is none).

    The arguments are eventsourcing's: ``transcoder``, ``compressor`` (default
    None: no compression) and ``cipher`` (default None), which must be a
    :class:`~safereplay.domain.cipher.KeyRingCipher` when given: its ring seals and
    opens, bound to each row, and its ``key_file`` (if any) is watched. Instead of
    a cipher, safereplay's code passes the ring itself: ``key_ring`` (keyword-only,
    default: the cipher's ring, or None without a cipher), with ``key_file``
    (default None: no watching) and ``reload_interval`` (default 1 s).

    Every stored state records its schema version (``class_version``), even 1, so
    the envelope always knows it. On reading, an unknown topic or a schema version
    newer than the code is an error naming the position, not a silent decode.

    Reading is the replay hot path. With eventsourcing's own ``JSONTranscoder``
    (what :class:`~safereplay.domain.application.EventStoreApplication` uses), states are
    parsed with ``msgspec`` (the common event, :meth:`_common_envelope`) or ``orjson``
    (the general path), and eventsourcing's ``{"_type_": ..., "_data_": ...}``
    transcodings revived afterwards, with the transcoder's own registrations: the
    same values as ``JSONTranscoder.decode``, in about 60 % of its time on the
    reference events (ids and timestamps rebuilt included). A document
    they refuse or may not keep exact (``NaN``, integers beyond 64 bits, lone surrogates...) is
    handed to ``JSONTranscoder.decode`` as before, so what it accepts and the
    errors it raises do not change. Error descriptions (the row, the position)
    are built only when there is an error.
    """

    def __init__(
        self,
        transcoder: Transcoder,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
        *,
        key_ring: KeyRing | None = _FROM_CIPHER,
        key_file: Path | None = None,
        reload_interval: float = 1.0,
    ) -> None:
        if isinstance(compressor, KeyRing):
            # The key ring was the second positional argument before the mapper took
            # eventsourcing's (transcoder, compressor, cipher): say so, not AttributeError.
            raise TypeError("EnvelopeMapper: pass the key ring as key_ring=, not positionally")
        if cipher is not None and not isinstance(cipher, KeyRingCipher):
            raise ConfigurationError(
                f"EnvelopeMapper seals with safereplay's key ring, bound to each row; it "
                f"cannot use {type(cipher).__qualname__}: set "
                "CIPHER_TOPIC=safereplay.domain.cipher:KeyRingCipher (with CIPHER_KEY="
                "KEY_ID=BASE64) or use SAFEREPLAY_KEY_FILE / SAFEREPLAY_KEYS"
            )
        if key_ring is _FROM_CIPHER:
            key_ring = cipher.key_ring if cipher is not None else None
            if cipher is not None and key_file is None:
                key_file = cipher.key_file
        elif cipher is not None and key_ring is not cipher.key_ring:
            raise ConfigurationError(
                "EnvelopeMapper was given a key ring twice (key_ring= and a cipher): give one"
            )
        super().__init__(transcoder=transcoder, compressor=compressor, cipher=cipher)
        self.key_ring = key_ring
        # With a key file, a rotation done by another process (keys add/activate)
        # takes effect here without a restart: the file is re-read when its
        # modification time or size changes, checked at most every reload_interval.
        self._key_file = key_file
        self._reload_interval = reload_interval
        self._checked_at = time.monotonic()
        self._file_stamp = _stamp(key_file) if key_file is not None else None
        self._json: JSONTranscoder | None = (
            transcoder if type(transcoder) is JSONTranscoder else None
        )
        self._id_texts: dict[int, str] = {}
        #: Event types decoded before: topic -> (class, schema version).
        self._known_types: dict[str, tuple[type[Any], int]] = {}

    def refresh_key_ring(self, *, force: bool = False) -> None:
        """Re-read the key file if it changed (or unconditionally with ``force``)."""
        if self._key_file is None or self.key_ring is None:
            return
        now = time.monotonic()
        if not force and now - self._checked_at < self._reload_interval:
            return
        self._checked_at = now
        stamp = _stamp(self._key_file)
        if force or stamp != self._file_stamp:
            self.key_ring = KeyRing.load(self._key_file)
            self._file_stamp = stamp

    _cipher: KeyRingCipher | None = None

    @property
    def cipher(self) -> KeyRingCipher | None:
        """eventsourcing's view of the encryption: the cipher of the ring in use."""
        ring = self.key_ring
        if ring is None:
            return None
        cached = self._cipher
        if cached is None or cached.key_ring is not ring:
            cached = KeyRingCipher.of(ring, key_file=self._key_file)
            self._cipher = cached
        return cached

    @cipher.setter
    def cipher(self, value: Cipher | None) -> None:
        # eventsourcing's Mapper.__init__ assigns the cipher; the ring is what counts.
        self._cipher = value if isinstance(value, KeyRingCipher) else None

    # -- writing ----------------------------------------------------------------------

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        topic = get_topic(domain_event.__class__)
        event_state = dict(vars(domain_event))
        originator_id = event_state.pop("originator_id")
        originator_version = event_state.pop("originator_version")
        event_state["class_version"] = getattr(type(domain_event), "class_version", 1)
        state = self.transcoder.encode(event_state)
        if self.compressor is not None:
            state = self.compressor.compress(state)
        self.refresh_key_ring()
        if self.key_ring is not None:
            state = self.key_ring.seal(
                state, associated_data(originator_id, originator_version, topic)
            )
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=topic,
            state=state,
        )

    # -- reading ----------------------------------------------------------------------

    def decrypt_state(self, stored: StoredEvent) -> bytes:
        """The transcoded (plaintext) state of ``stored``."""
        if self.key_ring is not None:
            aad = self._associated_data(stored)
            try:
                return self.key_ring.open(stored.state, aad)
            except Exception:  # noqa: S110 - repeated below, with the row described
                pass
            # Opening is deterministic: the same call, with the row named in the error.
            where = describe_row(stored)
            try:
                return self.key_ring.open(stored.state, aad, where=where)
            except UnknownKeyId:
                if self._key_file is None:
                    raise
                # Sealed by a process that already uses a key added since we loaded
                # the ring: re-read the file once, then give the real answer.
                self.refresh_key_ring(force=True)
                return self.key_ring.open(stored.state, aad, where=where)
        if is_sealed(stored.state):
            raise EventDecryptionError(
                f"event at {describe_row(stored)} is encrypted but encryption is turned off; "
                "configure the key ring (SAFEREPLAY_KEY_FILE or SAFEREPLAY_KEYS)"
            )
        return stored.state

    def _associated_data(self, stored: StoredEvent) -> bytes:
        """``associated_data`` of the row; the text of recent aggregate ids is kept.

        ``str(UUID)`` is ~0.4 µs and an aggregate's events come close together in the
        log: its text is remembered by the id's 128-bit value (hashed and compared in
        C), in a small table emptied when full.
        """
        originator_id = stored.originator_id
        if type(originator_id) is not UUID:
            return associated_data(originator_id, stored.originator_version, stored.topic)
        texts = self._id_texts
        number = originator_id.int
        text = texts.get(number)
        if text is None:
            if len(texts) >= _ID_TEXTS_MAX:
                texts.clear()
            text = texts[number] = str(originator_id)
        return f"{text}\x1f{stored.originator_version}\x1f{stored.topic}".encode()

    def resolve_event_class(self, stored: StoredEvent) -> type[Any]:
        try:
            return cast(type[Any], resolve_topic(stored.topic))
        except TopicError:
            raise UnknownEventType(
                "stored event",
                [
                    FieldProblem(
                        "topic", f"unknown event type {stored.topic!r} at {describe_row(stored)}"
                    )
                ],
            ) from None

    def decode_state(self, stored: StoredEvent, cls: type[Any]) -> dict[str, Any]:
        plaintext = self.decrypt_state(stored)
        if self.compressor is not None:
            try:
                plaintext = self.compressor.decompress(plaintext)
            except Exception as exc:  # zlib.error, lzma.LZMAError...: no common base
                raise UndecodableEvent(
                    "stored event",
                    [
                        FieldProblem(
                            "state",
                            f"state at {describe_row(stored)} cannot be decompressed "
                            f"({type(exc).__name__}); was it written without compression?",
                        )
                    ],
                ) from None
        try:
            event_state: dict[str, Any] = (
                self.transcoder.decode(plaintext)
                if self._json is None
                else _decode_json(self._json, plaintext)
            )
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, bad transcoding
            # Only a plaintext store (encryption off) can get here with a damaged row:
            # a sealed state that authenticates is exactly what was written.
            raise UndecodableEvent(
                "stored event",
                [
                    FieldProblem(
                        "state",
                        f"state at {describe_row(stored)} cannot be decoded ({type(exc).__name__})",
                    )
                ],
            ) from None
        if not isinstance(event_state, dict):
            raise UndecodableEvent(
                "stored event",
                [FieldProblem("state", f"state at {describe_row(stored)} is not an object")],
            )
        event_state["originator_id"] = _as_uuid(stored.originator_id)
        event_state["originator_version"] = stored.originator_version
        class_version = getattr(cls, "class_version", 1)
        from_version = event_state.pop("class_version", 1)
        if (
            isinstance(from_version, bool)
            or not isinstance(from_version, int)
            or not 1 <= from_version <= class_version
        ):
            raise UnknownSchemaVersion(
                "stored event",
                [
                    FieldProblem(
                        "class_version",
                        f"schema version {from_version!r} of "
                        f"{cls.__qualname__} at {describe_row(stored)} is not known to "
                        f"this code (which reads versions 1..{class_version})",
                    )
                ],
            )
        event_state["__schema_version__"] = from_version
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(event_state)
            from_version += 1
        return event_state

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        cls = self.resolve_event_class(stored_event)
        event_state = self.decode_state(stored_event, cls)
        event_state.pop("__schema_version__")
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", event_state)
        return cast(DomainEventProtocol[UUID], domain_event)

    def to_envelope(self, stored_event: StoredEvent) -> Envelope:
        """Decode ``stored_event`` (a ``Notification`` gives the position too)."""
        if self._json is not None:
            envelope = self._common_envelope(stored_event)
            if envelope is not None:
                return envelope
        cls = self.resolve_event_class(stored_event)
        event_state = self.decode_state(stored_event, cls)
        schema_version = event_state.pop("__schema_version__")
        if stored_event.topic not in self._known_types:
            self._known_types[stored_event.topic] = (cls, getattr(cls, "class_version", 1))
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", event_state)
        position = stored_event.id if isinstance(stored_event, Notification) else None
        return envelope_of(domain_event, event_state, position, stored_event.topic, schema_version)

    def _common_envelope(self, stored: StoredEvent) -> Envelope | None:
        """:meth:`to_envelope` in one pass for the common event, else None.

        The replay hot path, once per event: the steps of ``resolve_event_class``,
        ``decrypt_state``, ``_decode_json`` and ``decode_state`` inlined for an event
        whose type was decoded before, sealed by a key of the ring (or plaintext when
        encryption is off), of the code's schema version, and whose transcoded values
        are all top-level datetimes and UUIDs. Anything else (and every error) is
        left to the general path, which starts again from the stored row and gives
        the same result or raises the same error.
        """
        transcoder = self._json
        topic = stored.topic
        known = self._known_types.get(topic)
        if known is None or transcoder is None:
            return None
        originator_id = stored.originator_id
        if type(originator_id) is not UUID:
            return None
        cls, class_version = known
        blob = stored.state
        key_ring = self.key_ring
        if key_ring is not None:
            plaintext = key_ring.open_common(blob, self._associated_data(stored))
            if plaintext is None:
                return None
        elif is_sealed(blob):
            return None
        else:
            plaintext = blob
        compressor = self.compressor
        if compressor is not None:
            try:
                plaintext = compressor.decompress(plaintext)
            except Exception:
                return None  # the general path raises it, described
        if len(plaintext) > _INT_DIGITS_LIMIT or b"\\" in plaintext:
            # A number json refuses for its length could hide in a long text; an escape
            # sequence could spell "_type_" differently: both for the general path.
            return None
        try:
            # msgspec keeps every integer exact, as json does (orjson turns those
            # beyond 64 bits into floats), and refuses what json accepts and it does
            # not (NaN, Infinity, lone surrogates): those take the general path.
            state = _decode_common_json(plaintext)
        except msgspec.DecodeError:
            return None
        if type(state) is not dict:
            return None
        markers = plaintext.count(_TYPE_MARKER)
        if markers:
            try:
                left = _revive_top_level(transcoder, state, markers)
            except Exception:
                return None  # the general path raises it, described
            if left:
                return None  # a nested transcoded value: the general walk
        from_version = state.pop("class_version", 1)
        if type(from_version) is not int or from_version != class_version:
            return None  # upcasts and unknown versions: the general path
        state["originator_id"] = originator_id
        state["originator_version"] = stored.originator_version
        event = _new_object(cls)
        _set(event, "__dict__", state)
        position = stored.id if type(stored) is Notification else None
        return envelope_of(event, state, position, topic, from_version)


def envelope_of(
    event: Any,
    state: Mapping[str, Any],
    position: int | None,
    topic: str,
    schema_version: int,
) -> Envelope:
    """The envelope of ``event`` (whose state is ``state``).

    The event id, the payload and a missing correlation id are derived on first
    read (see :func:`safereplay.domain.envelope.derived_envelope`).
    """
    return derived_envelope(
        position,
        _as_uuid(state["originator_id"]),
        state["originator_version"],
        topic,
        type(event).__qualname__,
        schema_version,
        state["timestamp"],
        state.get("source", "unspecified"),
        state.get("correlation_id"),
        state.get("causation_id"),
        state,
        ENVELOPE_FIELDS,
        event,
    )


# -- decoding eventsourcing's JSON with orjson ----------------------------------------------

_TYPE_MARKER = b'"_type_"'
#: The replay hot path's JSON parser (:meth:`EnvelopeMapper._common_envelope`).
_decode_common_json = msgspec.json.Decoder().decode
#: json refuses integers of more digits than this (``sys.get_int_max_str_digits``'s
#: default); a text longer than it takes the general path, which raises it.
_INT_DIGITS_LIMIT = 4300
#: Every decimal digit as "0": a run of 19 is a number orjson may not keep exact.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else i for i in range(256))
_LONG_NUMBER = b"0" * 19


def _decode_json(transcoder: JSONTranscoder, data: bytes) -> Any:
    """``transcoder.decode(data)``, parsed by ``orjson``.

    A text with 19 digits in a row (an integer orjson could turn into a float) is
    left to ``transcoder.decode``. ``JSONTranscoder`` calls its object hook on every
    JSON object, innermost first, in document order; :func:`_revive` does the same
    walk over ``orjson``'s result.
    Most states only have transcoded values at the top level (timestamp, ids): when
    every ``"_type_"`` in the text is accounted for by one of them, the walk of the
    nested values is skipped (never when the text has an escape sequence, which
    could spell ``_type_`` differently).
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        # What json accepts and orjson does not, and every error, as before.
        return transcoder.decode(data)
    long_number, escaped, markers = _scan(data)
    if long_number:
        return transcoder.decode(data)
    if not markers and not escaped:
        return document
    if escaped or type(document) is not dict:
        return _revive(transcoder, document)
    try:
        if not _revive_top_level(transcoder, document, markers):
            return document
    except Exception:  # noqa: S110 - the full walk below raises it in document order
        pass
    return _revive(transcoder, orjson.loads(data))


def _scan(data: bytes) -> tuple[bool, bool, int]:
    """What decides how a JSON text parsed by ``orjson`` must be revived.

    - a run of 19 digits: a number ``orjson`` may read as a float (integers beyond
      64 bits), which ``json`` keeps exact: the text goes to ``JSONTranscoder``;
    - a backslash: an escape sequence could spell a ``"_type_"`` key differently;
    - how many ``"_type_"`` keys the text holds (transcoded values).
    """
    shape = data.translate(_DIGITS_AS_ZERO)
    return _LONG_NUMBER in shape, b"\\" in shape, shape.count(_TYPE_MARKER)


def _revive_top_level(transcoder: JSONTranscoder, document: dict[str, Any], markers: int) -> int:
    """Apply the object hook to the transcoded values at the top level of
    ``document``, in place; how many of the text's ``markers`` are left (nested).

    eventsourcing's ``uuid_hex`` and ``datetime_iso`` are inlined; other kinds go
    through the transcoder. Raises what a hook raises.
    """
    names = transcoder.names
    for name, value in document.items():
        if type(value) is dict and len(value) == 2:
            text = value.get("_data_")
            if type(text) is str and "_type_" in value:
                kind = type(names.get(value["_type_"]))
                if kind is DatetimeAsISO:
                    document[name] = datetime.fromisoformat(text)
                elif kind is UUIDAsHex:
                    document[name] = uuid_from_text(text)
                else:
                    document[name] = transcoder._decode_obj(value)
                markers -= 1
                if not markers:
                    return 0
    return markers


_new_object = object.__new__
_set = object.__setattr__
_UNKNOWN_SAFETY = SafeUUID.unknown


def uuid_from_text(text: str) -> UUID:
    """``UUID(text)``, built directly for the 32 hex digits that ``UUID.hex`` writes.

    For 32 letters and digits ``UUID(text)`` is ``int(text, 16)`` checked to fit
    128 bits (which 32 digits always do); anything else goes through ``UUID``.
    """
    if type(text) is str and len(text) == 32 and text.isalnum():
        try:
            value = int(text, 16)
        except ValueError:
            return UUID(text)
        uuid: UUID = _new_object(UUID)
        _set(uuid, "int", value)
        _set(uuid, "is_safe", _UNKNOWN_SAFETY)
        return uuid
    return UUID(text)


def _revive(transcoder: JSONTranscoder, value: Any) -> Any:
    """``value`` with the object hook applied as ``json`` applies it (innermost first)."""
    kind = type(value)
    if kind is dict:
        for name, item in value.items():
            if type(item) is dict or type(item) is list:
                value[name] = _revive(transcoder, item)
        return transcoder._decode_obj(value)
    if kind is list:
        for index, item in enumerate(value):
            if type(item) is dict or type(item) is list:
                value[index] = _revive(transcoder, item)
    return value


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _as_uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)
