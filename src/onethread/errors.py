"""One error hierarchy for onethread.

Every error the package raises on purpose derives from :class:`OnethreadError`,
so ``except OnethreadError`` catches all of ours and nothing of anyone else's.
Errors carry their data as attributes (``RetryAfter.retry_after``,
``CorruptStoreError.path``); nothing is classified by message substring.

::

    OnethreadError
    ├── ConfigError                 a user mistake in config/options; message names the fix
    │   └── MissingDependencyError  an optional SDK is not installed (.extra, .install_hint)
    ├── StoreError                  a store (identity or history) failed
    │   ├── CorruptStoreError       a store file cannot be parsed (.path); never overwritten
    │   ├── StoreUnavailable        a store server cannot be reached now (.store, .reason)
    │   ├── SchemaVersionError      the store's schema is newer than this code knows
    │   ├── TurnLockLost            a shared turn lock was lost while held (.key, .reason)
    │   └── BlobNotFound            no bytes in the blob store at that address (.ref)
    ├── AttachmentRefused           an attachment past a limit (.reason, .limit); tell the person
    ├── IdentityError               identity linking refused (e.g. already linked elsewhere)
    ├── RecipientUnknown            notify(): no platform known for that person yet
    ├── ModelError                  the language model call failed (.status_code)
    ├── ReplyStopped                the reader stopped a streaming reply (web chat's stop)
    └── PlatformError               a platform call failed (.platform)
        ├── PlatformAuthError       wrong or revoked token: fatal for that platform
        ├── RetryAfter              rate limited (.retry_after seconds)
        ├── PlatformUnavailable     5xx or network trouble: retryable
        │   └── OutcomeUnknown      timed out / cut off after sending: may have arrived,
        │                           so a send is not retried
        ├── BadRequest              the platform refused the request: not retryable
        │   ├── FormattingRejected  the markup was refused; resend as plain text
        │   └── DeliveryWindowClosed  only templates may reach this person now
        │                           (WhatsApp's 24-hour window; .recipient, .last_seen)
        └── ConnectionLost          the adapter's connection dropped: restart it

``ValueError`` (not an ``OnethreadError``) is raised for invalid arguments, such
as a unified id containing ``:``, as Python callers expect.
"""

from __future__ import annotations

__all__ = [
    "AttachmentRefused",
    "BadRequest",
    "BlobNotFound",
    "ConfigError",
    "ConnectionLost",
    "CorruptStoreError",
    "DeliveryWindowClosed",
    "FormattingRejected",
    "IdentityError",
    "MissingDependencyError",
    "ModelError",
    "OnethreadError",
    "OutcomeUnknown",
    "PlatformAuthError",
    "PlatformError",
    "PlatformUnavailable",
    "RecipientUnknown",
    "ReplyStopped",
    "RetryAfter",
    "SchemaVersionError",
    "StoreError",
    "StoreUnavailable",
    "TurnLockLost",
]


class OnethreadError(Exception):
    """Base class of every error onethread raises on purpose."""


class ConfigError(OnethreadError):
    """A configuration or option mistake; the message says how to fix it."""


class MissingDependencyError(ConfigError):
    """An optional dependency (a platform SDK, a store driver) is not installed."""

    def __init__(self, what: str, extra: str) -> None:
        self.what = what
        self.extra = extra
        self.install_hint = f'pip install "onethread[{extra}]"'
        super().__init__(
            f"{what} needs an optional dependency; install it with: {self.install_hint}"
        )


class StoreError(OnethreadError):
    """A history or identity store failed."""


class StoreUnavailable(StoreError):
    """A store's server cannot be reached (refused, timed out, connection lost, shutting down).

    ``store`` names the store with any password redacted (``"Redis at
    redis://host:6379/0"``), ``reason`` is the driver's message on one line.
    Raised by every network back-end at its driver boundary, so callers can
    tell an outage (temporary: log it once, retry later) from a bug.
    """

    def __init__(self, store: str, reason: str) -> None:
        self.store = store
        self.reason = " ".join(reason.split())
        super().__init__(f"{store}: {self.reason}")


class CorruptStoreError(StoreError):
    """A store file exists but cannot be read or parsed. It is never overwritten."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"{path}: {reason}. The file was left untouched; fix or move it away and retry."
        )


class SchemaVersionError(StoreError):
    """The store was written by a newer onethread than this one."""

    def __init__(self, where: str, found: int, known: int) -> None:
        self.where = where
        self.found = found
        self.known = known
        super().__init__(
            f"{where}: schema version {found} is newer than this onethread knows ({known}); "
            "upgrade onethread"
        )


class BlobNotFound(StoreError):
    """The blob store holds no bytes at ``ref`` (a ``sha256:<hex>`` address)."""

    def __init__(self, where: str, ref: str) -> None:
        self.ref = ref
        super().__init__(f"{where}: no blob {ref}")


class AttachmentRefused(OnethreadError):
    """An attachment that cannot be taken: ``.reason`` is ``"too_large"`` or ``"type"``.

    The message is fit to send to the person who sent it (it names the limit).
    """

    def __init__(self, reason: str, message: str, *, limit: int = 0) -> None:
        self.reason = reason
        self.limit = limit
        super().__init__(message)


class TurnLockLost(StoreError):
    """A shared turn lock was lost while held; the turn was stopped (``.key``, ``.reason``)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"turn lock of {key!r} lost while held: {reason}")


class IdentityError(OnethreadError):
    """An identity operation was refused (for example, a takeover of a linked account)."""


class RecipientUnknown(OnethreadError):
    """There is no platform/chat to reach this person on (they never wrote to the bot)."""

    def __init__(self, unified_user_id: str) -> None:
        self.unified_user_id = unified_user_id
        super().__init__(
            f"no platform known for {unified_user_id!r} yet: they must message the bot first"
        )


class ModelError(OnethreadError):
    """The language model could not produce a reply."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class ReplyStopped(OnethreadError):
    """The person stopped a reply while it streamed (the web chat's stop button).

    Raised from a stream's ``on_delta`` into the model's stream, which ends
    it; the turn keeps what was written, with a note.
    """


class PlatformError(OnethreadError):
    """A call to a messaging platform failed.

    ``code``, ``subcode`` and ``trace_id`` are the platform's own error data
    where it gives them (the Graph API's ``error.code``, ``error_subcode`` and
    ``fbtrace_id``), else ``None``/``""``.
    """

    code: int | None = None
    subcode: int | None = None
    trace_id: str = ""

    def __init__(self, message: str, *, platform: str = "") -> None:
        self.platform = platform
        super().__init__(f"{platform}: {message}" if platform else message)


class PlatformAuthError(PlatformError):
    """The platform refused the credentials. Fatal for that platform: no restart loop."""


class RetryAfter(PlatformError):
    """The platform rate-limited the call; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float, *, platform: str = "") -> None:
        self.retry_after = float(retry_after)
        super().__init__(f"rate limited, retry after {self.retry_after:g}s", platform=platform)


class PlatformUnavailable(PlatformError):
    """A server error or network failure; the call may succeed if retried."""


class OutcomeUnknown(PlatformUnavailable):
    """The call may or may not have taken effect: it timed out waiting for the answer,
    or the connection was lost after the request went out, or the answer could not be
    read. ``send()`` does not retry it (a retry could repeat a message that arrived);
    callers that only read (polling) may retry it like any ``PlatformUnavailable``.
    """


class BadRequest(PlatformError):
    """The platform refused the request as malformed; retrying will not help."""


class FormattingRejected(BadRequest):
    """The platform could not parse the message markup; resend it as plain text."""


class DeliveryWindowClosed(BadRequest):
    """The platform takes no free-form message to this person now.

    WhatsApp delivers free-form text only within 24 hours of the person's last
    message (the customer service window); outside it only an approved
    template may be sent. ``recipient`` is the chat, ``last_seen`` the Unix
    time of the person's last message (``None``: never, or unknown).
    ``notify()`` and scheduled messages raise it (the history keeps the text,
    marked ``delivery_error: "DeliveryWindowClosed"``) unless the adapter is
    configured with a template to send instead.
    """

    def __init__(
        self, recipient: str, *, last_seen: float | None = None, platform: str = ""
    ) -> None:
        self.recipient = recipient
        self.last_seen = last_seen
        super().__init__(
            "the 24-hour customer service window is closed (the person has not written "
            "in 24 hours): only an approved template can reach them; set the platform's "
            "template option to send one instead",
            platform=platform,
        )


class ConnectionLost(PlatformError):
    """The adapter lost its connection to the platform; the supervisor restarts it."""
