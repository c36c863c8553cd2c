"""Exceptions raised by phivault's Python client.

Every message names what went wrong and never holds a value, a token or an
API key, so an exception can be logged as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence


class PhivaultError(Exception):
    """Base class of every exception this package raises."""


class ConfigurationError(PhivaultError):
    """The client's settings are unusable: an endpoint that is not one,
    plaintext to a host off loopback without ``insecure_plaintext``, an API
    key that cannot be sent, a file that cannot be read. Nothing was sent."""


class ConnectError(PhivaultError):
    """No endpoint could be reached (each one tried is named, with why)."""


class ClosedError(PhivaultError):
    """The client was closed."""


class CallError(PhivaultError):
    """The vault refused or failed a whole call.

    Attributes:
        code: The gRPC status code's name, e.g. ``"PERMISSION_DENIED"``.
        message: What the server said, never an item of the call.
        retry_after: Seconds the server asked to wait before sending the
            call again (a rate limit or quota), or ``None``.
    """

    code: str
    message: str
    retry_after: Optional[float]

    def __init__(self, code: str, message: str, retry_after: Optional[float] = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __reduce__(self):
        # So that it crosses process pools (multiprocessing, Spark) whole.
        return (self.__class__, (self.code, self.message, self.retry_after))


class Unauthenticated(CallError):
    """No API key, an unknown, revoked or expired one."""


class PermissionDenied(CallError):
    """The client's scopes do not allow the call (or it is suspended)."""


class InvalidArgument(CallError):
    """The call itself is malformed (an unknown namespace, too many items)."""


class NotFound(CallError):
    """What the call names does not exist."""


class ResourceExhausted(CallError):
    """Over a rate limit or quota; see ``retry_after``."""


class Unavailable(CallError):
    """No node could answer (its storage out of reach, shutting down) even
    after the client moved through its endpoints; retry with backoff."""


_BY_CODE = {
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "INVALID_ARGUMENT": InvalidArgument,
    "NOT_FOUND": NotFound,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "UNAVAILABLE": Unavailable,
}


@dataclass(frozen=True)
class ItemError:
    """Why one item of a call has no answer; the others were answered.

    Attributes:
        index: The item's position in what was sent (for a data frame, the
            row's position in the frame, counted from 0).
        code: A gRPC status code name, e.g. ``"INVALID_ARGUMENT"`` for a
            value the namespace's format does not take, ``"NOT_FOUND"`` for
            a token the vault does not hold.
        message: Why, never the item itself.
        column: For a data frame, the column's name; otherwise ``None``.
    """

    index: int
    code: str
    message: str
    column: Optional[str] = None

    def __str__(self) -> str:
        where = f"column {self.column!r} row {self.index}" if self.column is not None else f"item {self.index}"
        return f"{where}: {self.code}: {self.message}"


class ItemErrors(PhivaultError):
    """Some items of a call failed (raised when ``errors="raise"``, the
    default). The call was made: the other items were answered, and a
    reveal is on the audit trail.

    Attributes:
        errors: One :class:`ItemError` per failed item, in order.
        results: What was answered, ``None`` where an item failed: the
            answers are not lost with the exception.
    """

    errors: List[ItemError]
    results: list

    def __init__(self, errors: Sequence[ItemError], results: list):
        shown = "; ".join(str(e) for e in list(errors)[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} item(s) failed: {shown}{more}")
        self.errors = list(errors)
        self.results = results

    def __reduce__(self):
        # ``results`` travels with it: the answers are the caller's own.
        return (self.__class__, (self.errors, self.results))


def _from_native(error: BaseException) -> PhivaultError:
    """The package's exception for a native one: ``(kind, code, message,
    retry_after)``."""
    kind, code, message, retry_after = error.args
    if kind == "status":
        return _BY_CODE.get(code, CallError)(code, message, retry_after)
    if kind == "config":
        return ConfigurationError(message)
    if kind == "closed":
        return ClosedError(message)
    return ConnectError(message)
