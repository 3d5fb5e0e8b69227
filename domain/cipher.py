"""eventsourcing's ``Cipher`` interface, backed by safereplay's key ring.

eventsourcing chooses a cipher by ``CIPHER_TOPIC`` and builds it from the
environment (``cipher_class(env)``); its factory hands it to the mapper as
``cipher=``. :class:`KeyRingCipher` is that cipher for safereplay:
``CIPHER_TOPIC=safereplay.domain.cipher:KeyRingCipher`` with ``CIPHER_KEY`` in the
key ring's environment form (``KEY_ID=BASE64[,KEY_ID=BASE64]``, the last key
active, as ``SAFEREPLAY_KEYS``).

The ``Cipher`` interface sees bytes only, not the row they belong to. Given to
:class:`~safereplay.domain.mapper.EnvelopeMapper` (what eventsourcing's factory
does with ``MAPPER_TOPIC``), the cipher is only the carrier of its key ring: the
mapper seals with the ring, bound to the row. Used on its own (by eventsourcing's
``Mapper``), :meth:`KeyRingCipher.encrypt` seals with no row bound, which is
still AES-256-GCM under the ring's active key, in the key ring's layout.
"""

from __future__ import annotations

from pathlib import Path

from eventsourcing.persistence import Cipher
from eventsourcing.utils import Environment

from safereplay.domain.errors import ConfigurationError
from safereplay.domain.keyring import KeyRing

__all__ = ["KeyRingCipher"]

#: Associated data of a blob sealed through the bare ``Cipher`` interface (no row).
_NO_ROW = b""


class KeyRingCipher(Cipher):
    """A ``Cipher`` whose key material is a :class:`~safereplay.domain.keyring.KeyRing`.

    ``KeyRingCipher(env)`` reads the ring from ``env["CIPHER_KEY"]`` (eventsourcing's
    way); :meth:`of` wraps a ring already loaded (safereplay's way, so that key
    material never sits in an environment dictionary). ``key_file`` is the file
    the ring was read from, if any: a mapper given this cipher re-reads it after a
    rotation.
    """

    CIPHER_KEY = "CIPHER_KEY"

    def __init__(self, environment: Environment) -> None:
        spec = environment.get(self.CIPHER_KEY)
        if not spec:
            # eventsourcing's AESCipher raises OSError here too (InfrastructureFactory
            # tests expect an EnvironmentError when a cipher topic has no key).
            raise OSError(
                f"{self.CIPHER_KEY} is not set: give the key ring as "
                "KEY_ID=BASE64[,KEY_ID=BASE64] (or use SAFEREPLAY_KEY_FILE)"
            )
        if "=" not in spec.strip().rstrip("="):
            # A bare key, what eventsourcing's AESCipher.create_key() prints: the ring
            # needs an id for it (stored in clear in every ciphertext). Not echoed.
            raise ConfigurationError(
                f"{self.CIPHER_KEY} for KeyRingCipher is a key ring, not a bare key: write "
                "it as KEY_ID=BASE64[,KEY_ID=BASE64] (for example k1=BASE64)"
            )
        self.key_ring: KeyRing = KeyRing.from_spec(spec)
        self.key_file: Path | None = None

    @classmethod
    def of(cls, key_ring: KeyRing, *, key_file: Path | None = None) -> KeyRingCipher:
        """The cipher of ``key_ring`` (read from ``key_file``, if given)."""
        cipher = cls.__new__(cls)
        cipher.key_ring = key_ring
        cipher.key_file = key_file
        return cipher

    def __repr__(self) -> str:
        return f"KeyRingCipher({self.key_ring!r})"

    def encrypt(self, plaintext: bytes) -> bytes:
        """Seal under the active key, bound to no row (see the module's docstring)."""
        return self.key_ring.seal(plaintext, _NO_ROW)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Open what :meth:`encrypt` sealed; a wrong key raises EventDecryptionError
        or UnknownKeyId (both ValueErrors, as eventsourcing's AESCipher raises)."""
        return self.key_ring.open(ciphertext, _NO_ROW)
