"""An HTTP webhook destination on ``httpx``: signed JSON, an idempotency key, bounded waits.

Each delivery is one ``POST`` of the payload as JSON (keys sorted, UTF-8) with::

    Content-Type: application/json
    Idempotency-Key: <the delivery's key: the same on every attempt>
    Safereplay-Event-Id, Safereplay-Event-Type, Safereplay-Reaction
    Safereplay-Delivery-Reason: live | redelivery | ...  (why it is sent now)
    Safereplay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>." + body>

``Safereplay-Delivery-Reason`` is the runner's replay context
(:mod:`safereplay.projections.replay_context`): ``live`` for a runner's cycle,
``redelivery`` when an operator sent it again; ``live`` when no context is set.

The signature lets the receiver check that the body came from a holder of the
shared secret and was not altered (:func:`verify_signature` is the receiver's side;
the timestamp lets it refuse old replays). TLS certificates are verified unless
``verify=False`` is passed on purpose; redirects are not followed (a receiver that
moved is a configuration to fix, not something to chase with a signed body).

What comes of a call: a 2xx is delivered; 408, 425, 429 and 5xx, a timeout, a
refused or dropped connection are retryable; any other status (4xx, 3xx) is a
permanent refusal. The outcome's detail is the status' reason phrase or the
transport error's kind: never the URL (it may carry a token), a header, the body
sent or the body received. The secret never appears in a repr, a message or a log.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from safereplay.domain.errors import ConfigurationError
from safereplay.domain.secret import HIDDEN, read_owner_only
from safereplay.projections.replay_context import current_replay_context
from safereplay.reactions.delivery import Delivery, DeliveryOutcome
from safereplay.reactions.reaction import check_destination_name

__all__ = [
    "RETRYABLE_STATUSES",
    "REASON_HEADER",
    "SIGNATURE_HEADER",
    "WebhookDestination",
    "WebhookSecret",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "Safereplay-Signature"
#: Why the delivery is sent now (the replay context's reason).
REASON_HEADER = "Safereplay-Delivery-Reason"
#: Statuses that may pass on a later attempt (besides every 5xx).
RETRYABLE_STATUSES = frozenset({408, 425, 429})
#: Shortest secret accepted, in bytes (HMAC-SHA-256's own block of strength).
MIN_SECRET_BYTES = 32


@dataclass(frozen=True)
class WebhookSecret:
    """The shared HMAC key; its repr is hidden. From a value, or from an owner-only file."""

    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.value) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"a webhook secret must be at least {MIN_SECRET_BYTES} bytes long"
            )

    def __repr__(self) -> str:
        return f"WebhookSecret({HIDDEN})"

    @classmethod
    def from_file(cls, path: Path) -> WebhookSecret:
        """The secret in ``path`` (mode 0600 or stricter; one trailing line break allowed)."""
        text = read_owner_only(path, what="webhook secret file", error=ConfigurationError)
        return cls(text.removesuffix("\n").removesuffix("\r").encode("utf-8"))


def sign(secret: WebhookSecret, body: bytes, timestamp: int) -> str:
    """The :data:`SIGNATURE_HEADER` value of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.value, f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify_signature(
    secret: WebhookSecret,
    header: str,
    body: bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """A receiver's check: ``header`` signs ``body`` with ``secret``, at most
    ``tolerance`` seconds ago (compared in constant time)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return hmac.compare_digest(expected, given)


class WebhookDestination:
    """``POST`` each delivery to ``url`` (see the module's docstring).

    ``timeout``: seconds for connecting, and for each read and write [10];
    ``verify``: TLS verification (True, or a CA bundle path) [True];
    ``connections``: connections kept open to the receiver [32] (set it to the
    runner's concurrency or more: httpx keeps 20 by default, and a sender with more
    calls in flight would open a new connection for each call beyond them);
    ``client``: an ``httpx.Client`` to use instead of the destination's own (tests).
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        secret: WebhookSecret,
        timeout: float = 10.0,
        verify: bool | str = True,
        connections: int = 32,
        client: httpx.Client | None = None,
    ) -> None:
        self._name = check_destination_name(name)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"webhook {name!r}: the URL must be http(s)://host/...")
        if timeout <= 0:
            raise ConfigurationError(f"webhook {name!r}: the timeout must be positive")
        if connections < 1:
            raise ConfigurationError(f"webhook {name!r}: connections must be at least 1")
        self._url = url
        self._secret = secret
        #: Where it posts, without credentials, path or query (for messages).
        self.where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(timeout),
            verify=verify,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )
        self._owns_client = client is None

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"WebhookDestination({self._name!r}, {self.where!r})"

    def body(self, delivery: Delivery) -> bytes:
        """What is sent: the payload as JSON, keys sorted."""
        return orjson.dumps(dict(delivery.payload), option=orjson.OPT_SORT_KEYS)

    def send(self, delivery: Delivery) -> DeliveryOutcome:
        body = self.body(delivery)
        context = current_replay_context()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": delivery.idempotency_key,
            "Safereplay-Event-Id": str(delivery.event_id),
            "Safereplay-Event-Type": delivery.event_type,
            "Safereplay-Reaction": delivery.reaction,
            REASON_HEADER: context.reason if context is not None else "live",
            SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
        }
        try:
            response = self._client.post(self._url, content=body, headers=headers)
        except httpx.TimeoutException:
            return DeliveryOutcome.retry(None, "timed out")
        except httpx.ConnectError:
            return DeliveryOutcome.retry(None, "connection failed")
        except httpx.TransportError as exc:
            # The type only: a transport error's message can quote the URL.
            return DeliveryOutcome.retry(None, f"transport error: {type(exc).__name__}")
        return outcome_of(response)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> WebhookDestination:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def outcome_of(response: httpx.Response) -> DeliveryOutcome:
    """A response's outcome: its status and reason phrase only (its body is never used)."""
    status = response.status_code
    reason = response.reason_phrase or ""
    if 200 <= status < 300:
        return DeliveryOutcome.ok(status, reason)
    if status >= 500 or status in RETRYABLE_STATUSES:
        return DeliveryOutcome.retry(status, reason)
    return DeliveryOutcome.permanent(status, reason)
