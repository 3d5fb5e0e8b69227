"""The key ring: AES-256-GCM sealing bound to a row, rotation, key files and their errors.

Properties first (round trips across any rotation sequence; every bit flip,
truncation, extension and row swap detected), then the key file and the
environment form, each bad input with its own clear error and no key bytes in
any message.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from safereplay.domain import (
    AutomationApp,
    DomainSettings,
    EventDecryptionError,
    InvalidKey,
    KeyFileError,
    KeyRing,
    KeyRingError,
    UnknownKeyId,
)
from safereplay.domain.keyring import KEY_BYTES, MAGIC, sealed_key_id
from safereplay.domain.mapper import associated_data

NONCE_BYTES = 12
TAG_BYTES = 16
TOPICS = [
    "safereplay.domain.automation:Workflow.Created",
    "safereplay.domain.automation:Workflow.StepAdded",
    "safereplay.domain.automation:Run.StepFailed",
]


# -- helpers ------------------------------------------------------------------------------


def secret_forms(ring: KeyRing) -> list[str]:
    """Every way a key of ``ring`` could leak into text: base64 (padded or not), url-safe, hex."""
    forms = []
    for key in ring.keys.values():
        encoded = base64.b64encode(key).decode()
        forms += [
            encoded,
            encoded.rstrip("="),
            base64.urlsafe_b64encode(key).decode().rstrip("="),
            key.hex(),
        ]
    return forms


def assert_no_secrets(text: str, secrets: Iterable[str]) -> None:
    for secret in secrets:
        assert secret not in text, "key material leaked into a message"


def assert_clean_error(error: BaseException, secrets: Iterable[str]) -> None:
    """Neither the error nor anything chained to it shows a secret."""
    secrets = list(secrets)
    seen: BaseException | None = error
    while seen is not None:
        assert_no_secrets(str(seen), secrets)
        assert_no_secrets(repr(seen), secrets)
        seen = seen.__cause__ or seen.__context__


@contextmanager
def refused(
    error: type[BaseException] | tuple[type[BaseException], ...],
    match: str | None = None,
    *,
    secrets: Iterable[str] = (),
) -> Iterator[pytest.ExceptionInfo[Any]]:
    """``pytest.raises``, then: no secret in the error or anything chained to it."""
    with pytest.raises(error, match=match) as caught:
        yield caught
    assert_clean_error(caught.value, secrets)


def opens_or_detects(ring: KeyRing, blob: bytes, ad: bytes) -> BaseException:
    """Open ``blob``; it must fail with a key ring error (never decode, never crash)."""
    with pytest.raises((EventDecryptionError, UnknownKeyId)) as caught:
        ring.open(blob, ad)
    assert_clean_error(caught.value, secret_forms(ring))
    return caught.value


def multi_key_ring() -> KeyRing:
    """Ids one bit apart ('1' = 0x31, '3' = 0x33, '5' = 0x35), so that flips in the
    clear key id sometimes name another key of the ring."""
    return KeyRing.generate("k1").with_key("k3").with_key("k5")


def write_key_file(path: Path, content: str | bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    os.chmod(path, mode)
    return path


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def count_rows(app: AutomationApp) -> int:
    with closing(sqlite3.connect(app.settings.sqlite_path)) as connection:
        (count,) = connection.execute("SELECT COUNT(*) FROM stored_events").fetchone()
    return int(count)


payloads = st.binary(max_size=512)
ads = st.binary(max_size=96)


# -- round trips across rotations ---------------------------------------------------------


class KeyRotationMachine(RuleBasedStateMachine):
    """Any sequence of add / activate / retire / save+load / seal: every blob sealed so
    far opens to its plaintext while its key is in the ring, and names its key when not."""

    def __init__(self) -> None:
        super().__init__()
        self.ring = KeyRing.generate("k0")
        self.next_id = 1
        self.sealed: list[tuple[bytes, bytes, bytes, str]] = []
        self.directory = tempfile.TemporaryDirectory()

    def teardown(self) -> None:
        self.directory.cleanup()

    @rule(activate=st.booleans())
    def add_key(self, activate: bool) -> None:
        key_id = f"k{self.next_id}"
        self.next_id += 1
        self.ring = self.ring.with_key(key_id, activate=activate)
        assert key_id in self.ring.key_ids
        assert (self.ring.active_key_id == key_id) is activate

    @rule(data=st.data())
    def activate_some_key(self, data: st.DataObject) -> None:
        key_id = data.draw(st.sampled_from(self.ring.key_ids))
        self.ring = self.ring.activate(key_id)

    @rule(data=st.data())
    def retire_some_inactive_key(self, data: st.DataObject) -> None:
        inactive = [k for k in self.ring.key_ids if k != self.ring.active_key_id]
        if inactive:
            self.ring = self.ring.without_key(data.draw(st.sampled_from(inactive)))

    @rule()
    def save_and_load(self) -> None:
        path = Path(self.directory.name) / "ring.json"
        self.ring.save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        loaded = KeyRing.load(path)
        assert loaded == self.ring
        self.ring = loaded

    @rule(plaintext=payloads, ad=ads)
    def seal(self, plaintext: bytes, ad: bytes) -> None:
        blob = self.ring.seal(plaintext, ad)
        assert sealed_key_id(blob) == self.ring.active_key_id
        self.sealed.append((blob, ad, plaintext, self.ring.active_key_id))

    @invariant()
    def every_blob_opens_while_its_key_is_in_the_ring(self) -> None:
        for blob, ad, plaintext, key_id in self.sealed:
            if key_id in self.ring.key_ids:
                assert self.ring.open(blob, ad) == plaintext
            else:
                with refused(UnknownKeyId, f"'{key_id}'", secrets=secret_forms(self.ring)):
                    self.ring.open(blob, ad)


TestKeyRotationSequences = KeyRotationMachine.TestCase
TestKeyRotationSequences.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


@settings(max_examples=100)
@given(plaintext=payloads, ad=ads)
def test_seal_then_open_round_trips_arbitrary_payloads(plaintext: bytes, ad: bytes) -> None:
    ring = multi_key_ring()

    blob = ring.seal(plaintext, ad)

    assert ring.open(blob, ad) == plaintext


@settings(max_examples=50)
@given(plaintext=payloads)
def test_ciphertext_layout_is_header_nonce_ciphertext_and_tag(plaintext: bytes) -> None:
    ring = KeyRing.generate("prod-2026")

    blob = ring.seal(plaintext, b"row")

    assert blob[:3] == MAGIC == b"\x00SR"
    assert blob[3] == 1, "format version"
    assert blob[4] == len("prod-2026")
    assert blob[5:14] == b"prod-2026"
    assert len(blob) == 14 + NONCE_BYTES + len(plaintext) + TAG_BYTES


def test_every_seal_uses_a_fresh_nonce() -> None:
    ring = KeyRing.generate()

    blobs = {ring.seal(b"same plaintext", b"same row") for _ in range(50)}

    assert len(blobs) == 50


def test_a_specific_key_id_can_be_chosen_for_sealing() -> None:
    ring = multi_key_ring()

    blob = ring.seal(b"x", b"ad", key_id="k3")

    assert sealed_key_id(blob) == "k3"
    assert ring.open(blob, b"ad") == b"x"
    with refused(UnknownKeyId, "'k9'", secrets=secret_forms(ring)):
        ring.seal(b"x", b"ad", key_id="k9")


# -- tampering is always detected ----------------------------------------------------------


@settings(max_examples=100)
@given(plaintext=payloads, ad=ads, data=st.data())
def test_any_single_bit_flip_is_detected(plaintext: bytes, ad: bytes, data: st.DataObject) -> None:
    ring = multi_key_ring()
    blob = ring.seal(plaintext, ad, key_id=data.draw(st.sampled_from(ring.key_ids)))
    index = data.draw(st.integers(0, len(blob) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")

    tampered = bytearray(blob)
    tampered[index] ^= 1 << bit

    opens_or_detects(ring, bytes(tampered), ad)


def test_flipping_the_clear_key_id_to_another_ring_key_fails_authentication() -> None:
    ring = multi_key_ring()
    blob = bytearray(ring.seal(b"payload", b"row", key_id="k1"))
    assert blob[5:7] == b"k1"

    blob[6] ^= 0b10  # '1' -> '3': a key the ring holds, but not the one that sealed it

    with refused(EventDecryptionError, "key id 'k3'", secrets=secret_forms(ring)):
        ring.open(bytes(blob), b"row")


@settings(max_examples=100)
@given(plaintext=payloads, ad=ads, data=st.data())
def test_any_truncation_is_detected(plaintext: bytes, ad: bytes, data: st.DataObject) -> None:
    ring = multi_key_ring()
    blob = ring.seal(plaintext, ad)
    length = data.draw(st.integers(0, len(blob) - 1), label="kept bytes")

    opens_or_detects(ring, blob[:length], ad)


@settings(max_examples=50)
@given(plaintext=payloads, ad=ads, extra=st.binary(min_size=1, max_size=32))
def test_appended_bytes_are_detected(plaintext: bytes, ad: bytes, extra: bytes) -> None:
    ring = KeyRing.generate()

    opens_or_detects(ring, ring.seal(plaintext, ad) + extra, ad)


rows = st.tuples(st.uuids(), st.integers(1, 10_000), st.sampled_from(TOPICS))


@settings(max_examples=100)
@given(plaintext=payloads, row=rows, other=rows)
def test_a_blob_moved_to_another_row_is_detected(
    plaintext: bytes, row: tuple[UUID, int, str], other: tuple[UUID, int, str]
) -> None:
    """Different aggregate id, version or topic means different associated data."""
    ring = multi_key_ring()
    blob = ring.seal(plaintext, associated_data(*row))

    if other == row:
        assert ring.open(blob, associated_data(*other)) == plaintext
    else:
        error = opens_or_detects(ring, blob, associated_data(*other))
        assert isinstance(error, EventDecryptionError)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param((UUID(int=2), 1, TOPICS[0]), id="other aggregate"),
        pytest.param((UUID(int=1), 2, TOPICS[0]), id="other version"),
        pytest.param((UUID(int=1), 1, TOPICS[1]), id="other topic"),
    ],
)
def test_each_part_of_the_row_identity_is_bound(other: tuple[UUID, int, str]) -> None:
    ring = KeyRing.generate()
    blob = ring.seal(b"{}", associated_data(UUID(int=1), 1, TOPICS[0]))

    with refused(EventDecryptionError, "position 9.*moved", secrets=secret_forms(ring)):
        ring.open(blob, associated_data(*other), where="position 9")


def test_a_ring_with_another_key_under_the_same_id_cannot_open() -> None:
    writer, reader = KeyRing.generate("k1"), KeyRing.generate("k1")
    blob = writer.seal(b"payload", b"row")

    with pytest.raises(
        EventDecryptionError, match="failed authentication with key id 'k1'"
    ) as caught:
        reader.open(blob, b"row")

    assert_clean_error(caught.value, secret_forms(writer) + secret_forms(reader))


def test_a_blob_sealed_with_a_key_the_ring_lacks_names_that_key_and_the_row() -> None:
    writer, reader = KeyRing.generate("k9"), KeyRing.generate("k1")
    blob = writer.seal(b"payload", b"row")

    secrets = secret_forms(writer) + secret_forms(reader)
    with refused(UnknownKeyId, r"'k9'.*\(position 12\).*holds k1", secrets=secrets):
        reader.open(blob, b"row", where="position 12")


@pytest.mark.parametrize(
    "blob",
    [b"", b"{}", b'{"name": "x"}', MAGIC, MAGIC + b"\x02\x02k1" + bytes(40)],
    ids=["empty", "json", "json object", "magic only", "unknown format"],
)
def test_anything_that_is_not_a_sealed_blob_is_refused(blob: bytes) -> None:
    opens_or_detects(KeyRing.generate(), blob, b"row")


# -- ring values and operations --------------------------------------------------------------


@settings(max_examples=50)
@given(
    ids=st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True), min_size=1, unique=True)
)
def test_str_and_repr_show_key_ids_only(ids: list[str]) -> None:
    ring = KeyRing(keys={k: KeyRing.generate_key() for k in ids}, active_key_id=ids[-1])

    for text in (str(ring), repr(ring)):
        assert_no_secrets(text, secret_forms(ring))
        for key_id in ids:
            assert repr(key_id) in text


def test_rings_are_equal_only_with_the_same_keys() -> None:
    ring = KeyRing.generate("k1")

    assert ring == KeyRing(keys=dict(ring.keys), active_key_id="k1")
    assert ring != KeyRing.generate("k1"), "same id, different key bytes"
    assert ring.with_key("k2") != ring
    assert ring.with_key("k2", b"\x01" * 32).activate("k2") != ring.with_key("k2", b"\x01" * 32)
    assert len({ring, KeyRing(keys=dict(ring.keys), active_key_id="k1")}) == 1


def test_rotation_operations_refuse_what_would_lose_data() -> None:
    ring = KeyRing.generate("k1").with_key("k2", activate=True)
    secrets = secret_forms(ring)

    with refused(InvalidKey, "'k2' is already in the ring", secrets=secrets):
        ring.with_key("k2")
    with refused(InvalidKey, "'k2' is the active key", secrets=secrets):
        ring.without_key("k2")
    with refused(UnknownKeyId, "'k7' is not in the key ring", secrets=secrets):
        ring.activate("k7")
    with refused(UnknownKeyId, "'k7' is not in the key ring", secrets=secrets):
        ring.without_key("k7")
    with refused(InvalidKey, "key id .* is not valid", secrets=secrets):
        ring.with_key("bad id!")
    with refused(InvalidKey, "'k3' is 16 bytes", secrets=secrets):
        ring.with_key("k3", b"\x00" * 16)


def test_a_ring_needs_at_least_one_key_and_a_known_active_key() -> None:
    key = KeyRing.generate_key()
    secrets = secret_forms(KeyRing(keys={"k1": key}, active_key_id="k1"))
    with refused(KeyFileError, "holds no keys", secrets=secrets):
        KeyRing(keys={}, active_key_id="k1")
    with refused(UnknownKeyId, "active key id 'k2' is not in the key ring", secrets=secrets):
        KeyRing(keys={"k1": key}, active_key_id="k2")


# -- key files ---------------------------------------------------------------------------------


def test_save_writes_an_owner_only_file_that_loads_back(tmp_path: Path) -> None:
    ring = KeyRing.generate("k1").with_key("k2", activate=True)
    path = tmp_path / "secrets" / "keyring.json"

    ring.save(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "active": "k2",
        "keys": {k: b64(v) for k, v in ring.keys.items()},
    }
    assert KeyRing.load(path) == ring
    assert [p.name for p in path.parent.iterdir()] == ["keyring.json"], "no temporary left"


def test_save_replaces_an_existing_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    KeyRing.generate("k1").save(path)
    rotated = KeyRing.load(path).with_key("k2", activate=True)

    rotated.save(path)

    assert KeyRing.load(path) == rotated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyring.json"]


# Key material of the key files below; no error message may contain any of it.
KEY_32, KEY_16, KEY_64 = os.urandom(32), os.urandom(16), os.urandom(64)
FILE_SECRETS = [b64(KEY_32), b64(KEY_32).rstrip("="), b64(KEY_16), b64(KEY_64)]


def valid_document(**changes: Any) -> str:
    document: dict[str, Any] = {"active": "k1", "keys": {"k1": b64(KEY_32)}}
    document.update(changes)
    return json.dumps(document)


BAD_KEY_FILES: list[Any] = [
    pytest.param("", 0o600, KeyFileError, "is empty", id="empty"),
    pytest.param("  \n\t", 0o600, KeyFileError, "is empty", id="whitespace only"),
    pytest.param(
        "active: k1\nkeys: {k1: x}", 0o600, KeyFileError, r"not valid JSON \(line 1, column 1\)",
        id="not JSON",
    ),
    pytest.param(b"\xff\xfe\x00", 0o600, KeyFileError, "cannot be read", id="not UTF-8"),
    pytest.param("[1, 2]", 0o600, KeyFileError, "must be a JSON object", id="JSON array"),
    pytest.param(
        valid_document(active=None), 0o600, KeyFileError, "must be a JSON object", id="no active"
    ),
    pytest.param(valid_document(keys={}), 0o600, KeyFileError, "holds no keys", id="no keys"),
    pytest.param(
        valid_document(keys={"k1": 12}), 0o600, KeyFileError, "must be a JSON object",
        id="key not a string",
    ),
    pytest.param(
        valid_document(keys={"k1": b64(KEY_16)}), 0o600, InvalidKey,
        "'k1' is 16 bytes; AES-256-GCM needs 32 bytes", id="key too short",
    ),
    pytest.param(
        valid_document(keys={"k1": b64(KEY_64)}), 0o600, InvalidKey, "'k1' is 64 bytes",
        id="key too long",
    ),
    pytest.param(
        valid_document(keys={"k1": "not*base64*at*all*" + "A" * 26}), 0o600, InvalidKey,
        "'k1' is not valid base64", id="not base64",
    ),
    pytest.param(
        valid_document(active="k2"), 0o600, UnknownKeyId, "active key id 'k2' is not in",
        id="active key missing",
    ),
    pytest.param(
        valid_document(keys={"has space": b64(KEY_32)}, active="has space"), 0o600,
        InvalidKey, "key id .* is not valid", id="bad key id",
    ),
    pytest.param(
        f'{{"active": "k1", "keys": {{"k1": "{b64(KEY_32)}", "k1": "{b64(KEY_32)}"}}}}',
        0o600, KeyFileError, "repeats the name 'k1'", id="key id repeated",
    ),
    pytest.param(valid_document(), 0o640, KeyFileError, "readable by group or others",
                 id="group readable"),
    pytest.param(valid_document(), 0o604, KeyFileError, "readable by group or others",
                 id="others readable"),
    pytest.param(valid_document(), 0o660, KeyFileError, r"mode 660\); run: chmod 600",
                 id="group writable"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "mode", "error", "message"), BAD_KEY_FILES)
def test_a_bad_key_file_is_refused_with_a_clear_error(
    tmp_path: Path, content: str | bytes, mode: int, error: type[Exception], message: str
) -> None:
    path = write_key_file(tmp_path / "keyring.json", content, mode)

    with pytest.raises(error, match=message) as caught:
        KeyRing.load(path)

    assert isinstance(caught.value, KeyRingError)
    assert "keyring.json" in str(caught.value), "the error names the file"
    assert_clean_error(caught.value, FILE_SECRETS)


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="keyring.json' does not exist"):
        KeyRing.load(tmp_path / "keyring.json")


def test_permission_check_can_be_skipped_explicitly(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "keyring.json", valid_document(), 0o644)

    assert KeyRing.load(path, check_permissions=False).key_ids == ("k1",)


@pytest.mark.parametrize(("content", "mode", "error", "message"), BAD_KEY_FILES)
def test_an_app_with_a_bad_key_file_does_not_start_and_the_store_is_unchanged(
    tmp_path: Path,
    sqlite_settings: Callable[..., DomainSettings],
    content: str | bytes,
    mode: int,
    error: type[Exception],
    message: str,
) -> None:
    app = AutomationApp(sqlite_settings())
    app.submit({"type": "CreateWorkflow", "name": "n", "owner": "o", "trigger": {}}, source="t")
    rows_before = count_rows(app)
    bad_key_file = write_key_file(tmp_path / "bad" / "keyring.json", content, mode)

    with pytest.raises(error, match=message) as caught:
        AutomationApp(sqlite_settings(key_file=bad_key_file))

    assert app.key_ring is not None
    assert_clean_error(caught.value, FILE_SECRETS + secret_forms(app.key_ring))
    assert count_rows(app) == rows_before == 1
    assert len(app.read()) == 1, "the store still reads with the right key"
    app.close()


# -- the environment form: KEY_ID=BASE64,... ------------------------------------------------------


def test_spec_lists_keys_and_the_last_one_is_active() -> None:
    k1, k2 = KeyRing.generate_key(), KeyRing.generate_key()

    ring = KeyRing.from_spec(f" k1={b64(k1)} , k2={b64(k2)} ,")

    assert ring == KeyRing(keys={"k1": k1, "k2": k2}, active_key_id="k2")
    assert KeyRing.from_spec(f"k1={b64(k1)},k2={b64(k2)}", "k1").active_key_id == "k1"


@settings(max_examples=100)
@given(key=st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES))
def test_a_bare_key_without_an_id_is_refused_without_echoing_it(key: bytes) -> None:
    """A common slip: SAFEREPLAY_KEYS=BASE64. Its padding '=' looks like a separator."""
    ring = KeyRing(keys={"k": key}, active_key_id="k")

    with pytest.raises(InvalidKey, match="entry #1 has no key after its '='") as caught:
        KeyRing.from_spec(b64(key))

    assert_clean_error(caught.value, secret_forms(ring))


@settings(max_examples=100)
@given(key=st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES))
def test_a_key_and_id_written_the_wrong_way_round_are_not_echoed(key: bytes) -> None:
    ring = KeyRing(keys={"k": key}, active_key_id="k")

    with pytest.raises(InvalidKey) as caught:
        KeyRing.from_spec(f"{b64(key)}=k1")

    assert_clean_error(caught.value, secret_forms(ring))


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        pytest.param("", KeyFileError, "key list is empty", id="empty"),
        pytest.param(" , ,", KeyFileError, "key list is empty", id="only commas"),
        pytest.param("k1", InvalidKey, "entry #1 has no '='", id="no separator"),
        pytest.param("k1=", InvalidKey, "entry #1 has no key after", id="no key"),
        pytest.param(f"k1={b64(KEY_32[:31])}", InvalidKey, "'k1' is 31 bytes", id="wrong length"),
        pytest.param("k1=%%%%", InvalidKey, "'k1' is not valid base64", id="not base64"),
        pytest.param(f"={b64(KEY_32)}", InvalidKey, "key id .* not valid", id="empty id"),
        pytest.param(
            f"k1={b64(KEY_32)},k1={b64(KEY_32)}",
            InvalidKey,
            "entry #2 repeats key id 'k1'",
            id="repeated id",
        ),
    ],
)
def test_a_bad_key_list_is_refused(spec: str, error: type[Exception], message: str) -> None:
    with refused(error, message, secrets=FILE_SECRETS):
        KeyRing.from_spec(spec)
