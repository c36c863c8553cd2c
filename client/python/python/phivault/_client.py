"""The synchronous and asyncio clients."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _native
from .errors import ConfigurationError, ItemError, ItemErrors, _from_native

PathLike = Union[str, "os.PathLike[str]"]

#: The endpoint the CLI uses when none is given: a vault on this machine.
DEFAULT_ENDPOINT = "http://127.0.0.1:50051"
#: How long one call may take unless told otherwise, in seconds.
DEFAULT_DEADLINE = 30.0
#: Items per stream message in the column calls (the server takes 10,000).
DEFAULT_BATCH_SIZE = 1000
#: Stream messages sent and not yet answered.
DEFAULT_IN_FLIGHT = 16
#: How long a column call keeps reconnecting after the last answer, in
#: seconds.
DEFAULT_RETRY_FOR = 120.0

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n", ""}


@dataclass(frozen=True)
class TLS:
    """How to check the vault's certificate and prove the client's own.

    Attributes:
        ca_file: A PEM bundle of the CAs to trust instead of the system's
            (``PHIVAULT_TLS_CA``).
        cert_file: The client's certificate, PEM, for mutual TLS
            (``PHIVAULT_CLIENT_CERT``); needs ``key_file``.
        key_file: Its private key, PEM (``PHIVAULT_CLIENT_KEY``).
        domain: The name to check the server's certificate against when it
            is not the endpoint's host (``PHIVAULT_TLS_DOMAIN``).
    """

    ca_file: Optional[PathLike] = None
    cert_file: Optional[PathLike] = None
    key_file: Optional[PathLike] = None
    domain: Optional[str] = None

    @classmethod
    def from_env(cls) -> "TLS":
        """The settings the CLI reads from its environment variables."""
        return cls(
            ca_file=os.environ.get("PHIVAULT_TLS_CA") or None,
            cert_file=os.environ.get("PHIVAULT_CLIENT_CERT") or None,
            key_file=os.environ.get("PHIVAULT_CLIENT_KEY") or None,
            domain=os.environ.get("PHIVAULT_TLS_DOMAIN") or None,
        )


def _read(path: Optional[PathLike], what: str) -> Optional[bytes]:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigurationError(f"cannot read the {what} file {os.fspath(path)}: {e.strerror}") from None


def _flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _seconds(name: str, text: str) -> float:
    """``30s``, ``500ms``, ``2m`` or a number of seconds, as the CLI's
    ``PHIVAULT_DEADLINE`` takes them."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigurationError(f"{name} must be a duration such as 30s, 500ms or 2m")
    return float(match.group(1)) * _UNIT[match.group(2)]


_UNSET: Any = object()

_NO_PICKLE = (
    "a phivault client cannot be pickled: it holds its API key; create it where it is used "
    "(phivault.spark's functions do, on each executor)"
)


def _count(endpoints: str) -> str:
    n = len(endpoints.split(","))
    return f"{n} endpoint" + ("s" if n > 1 else "")


def _unicode_error(items: List[Optional[str]], what: str) -> ValueError:
    """Names the first item that is not valid Unicode (a lone surrogate,
    from a file read with ``surrogateescape``, say), never its text."""
    for i, item in enumerate(items):
        if item is None:
            continue
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            return ValueError(f"{what} {i} is not valid Unicode text (it holds a lone surrogate)")
    return ValueError(f"a {what} is not valid Unicode text")


@dataclass(frozen=True)
class _Settings:
    endpoints: str
    api_key: Optional[str]
    ca_pem: Optional[bytes]
    cert_pem: Optional[bytes]
    key_pem: Optional[bytes]
    domain: Optional[str]
    insecure_plaintext: bool
    deadline: Optional[float]
    purpose: Optional[str]
    reason: Optional[str]

    def __repr__(self) -> str:
        # Never the key, nor an endpoint (it may carry user information): a
        # settings object may end up in a log line.
        return f"_Settings({_count(self.endpoints)}, api key {'set' if self.api_key else 'unset'})"

    def __reduce__(self):
        raise TypeError(_NO_PICKLE)

    @classmethod
    def resolve(
        cls,
        endpoint: Union[None, str, Sequence[str]],
        api_key: Optional[str],
        api_key_file: Optional[PathLike],
        tls: Optional[TLS],
        insecure_plaintext: Optional[bool],
        deadline: Any,
        purpose: Optional[str],
        reason: Optional[str],
    ) -> "_Settings":
        if endpoint is None:
            endpoints = os.environ.get("PHIVAULT_ENDPOINT") or DEFAULT_ENDPOINT
        elif isinstance(endpoint, str):
            endpoints = endpoint
        else:
            endpoints = ",".join(endpoint)
        if api_key is None:
            api_key_file = api_key_file or os.environ.get("PHIVAULT_API_KEY_FILE") or None
            key_bytes = _read(api_key_file, "API key")
            if key_bytes is not None:
                try:
                    api_key = key_bytes.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise ConfigurationError("the API key file is not UTF-8") from None
            else:
                api_key = os.environ.get("PHIVAULT_API_KEY") or None
        tls = tls if tls is not None else TLS.from_env()
        if (tls.cert_file is None) != (tls.key_file is None):
            raise ConfigurationError("a client certificate needs its key, and a key its certificate")
        if insecure_plaintext is None:
            insecure_plaintext = _flag("PHIVAULT_INSECURE_PLAINTEXT")
        if deadline is _UNSET:
            env = os.environ.get("PHIVAULT_DEADLINE")
            deadline = _seconds("PHIVAULT_DEADLINE", env) if env else DEFAULT_DEADLINE
        if deadline is not None and not deadline > 0:
            raise ConfigurationError("the deadline must be a positive number of seconds, or None")
        if purpose is None:
            purpose = os.environ.get("PHIVAULT_PURPOSE") or None
            if reason is None:
                reason = os.environ.get("PHIVAULT_REASON") or None
        return cls(
            endpoints=endpoints,
            api_key=api_key,
            ca_pem=_read(tls.ca_file, "CA"),
            cert_pem=_read(tls.cert_file, "client certificate"),
            key_pem=_read(tls.key_file, "client key"),
            domain=tls.domain,
            insecure_plaintext=bool(insecure_plaintext),
            deadline=deadline,
            purpose=purpose,
            reason=reason,
        )

    def connect(self) -> "_native.NativeClient":
        try:
            return _native.NativeClient.connect(
                self.endpoints,
                self.api_key,
                self.ca_pem,
                self.cert_pem,
                self.key_pem,
                self.domain,
                self.insecure_plaintext,
                self.deadline,
                self.purpose,
                self.reason,
            )
        except _native.NativeError as e:
            raise _from_native(e) from None


_Answer = Tuple[List[Optional[str]], List[Tuple[int, str, str]]]


def _items_of(args: Sequence[Any]) -> List[Optional[str]]:
    """The items of a native call's arguments: its list of strings, or its
    columns' cells one after another."""
    for arg in args:
        if isinstance(arg, list) and arg and isinstance(arg[0], tuple):
            return [cell for _, cells in arg for cell in cells]
        if isinstance(arg, list):
            return arg
    return []


def _check_errors(errors: str) -> None:
    if errors not in ("raise", "return"):
        raise ValueError('errors must be "raise" or "return"')


def _finish(answer: _Answer, errors: str, column: Optional[str] = None) -> list:
    """The texts of a call, or its item errors raised (``"raise"``) or in
    their places (``"return"``)."""
    texts, failures = answer
    if not failures:
        return texts
    found = [ItemError(index, code, message, column) for index, code, message in failures]
    if errors == "raise":
        raise ItemErrors(found, texts)
    out: list = list(texts)
    for e in found:
        out[e.index] = e
    return out


def _strings(items: Iterable[str], what: str) -> List[str]:
    if isinstance(items, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of str, not a single {type(items).__name__}")
    return list(items)


def _cells(items: Iterable[Optional[str]], what: str) -> List[Optional[str]]:
    if isinstance(items, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of str or None, not a single {type(items).__name__}")
    return list(items)


class Client:
    """A connection to a phivault vault over gRPC.

    ``Client("https://vault-a:50051,https://vault-b:50051", api_key=...)``
    connects to the first endpoint that answers and moves to the next when
    its node goes away, sending a call again where that is safe. Every
    argument left out is read from the CLI's environment variables
    (``PHIVAULT_ENDPOINT``, ``PHIVAULT_API_KEY_FILE`` or
    ``PHIVAULT_API_KEY``, ``PHIVAULT_TLS_CA``, ``PHIVAULT_CLIENT_CERT``,
    ``PHIVAULT_CLIENT_KEY``, ``PHIVAULT_TLS_DOMAIN``,
    ``PHIVAULT_INSECURE_PLAINTEXT``, ``PHIVAULT_DEADLINE``,
    ``PHIVAULT_PURPOSE``, ``PHIVAULT_REASON``).

    Plaintext (``http://``) is refused to a host off loopback unless
    ``insecure_plaintext=True``: the key, values and tokens would cross the
    network readable.

    A client is safe to share between threads; each call releases the GIL
    while it waits. Use it as a context manager, or call :meth:`close`.

    Args:
        endpoint: One endpoint, a comma-separated list, or a list.
        api_key: The client's API key (``pv_<id>_<secret>``).
        api_key_file: A file holding it, instead.
        tls: Certificates; see :class:`TLS`.
        insecure_plaintext: Allow ``http://`` off loopback (dangerous).
        deadline: Seconds one call may take (``None``: no limit). Column
            calls stream and have none.
        purpose: The purpose of use every reveal states unless it gives its
            own (an HL7 PurposeOfUse code: ``TREAT``, ``HPAYMT``…).
        reason: The reason in words that goes with it (never PHI: it is
            recorded as given). ``PHIVAULT_REASON`` is read only with
            ``PHIVAULT_PURPOSE``, never to go with a purpose given here.

    Raises:
        ConfigurationError: The settings are unusable; nothing was sent.
        ConnectError: No endpoint answered.
    """

    def __init__(
        self,
        endpoint: Union[None, str, Sequence[str]] = None,
        *,
        api_key: Optional[str] = None,
        api_key_file: Optional[PathLike] = None,
        tls: Optional[TLS] = None,
        insecure_plaintext: Optional[bool] = None,
        deadline: Optional[float] = _UNSET,
        purpose: Optional[str] = None,
        reason: Optional[str] = None,
    ) -> None:
        settings = _Settings.resolve(
            endpoint, api_key, api_key_file, tls, insecure_plaintext, deadline, purpose, reason
        )
        self._endpoints = _count(settings.endpoints)
        self._native = settings.connect()

    def __repr__(self) -> str:
        return f"<phivault.Client, {self._endpoints}>"

    def __reduce__(self):
        raise TypeError(_NO_PICKLE)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connections; later calls raise :class:`ClosedError`."""
        self._native.close()

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._native, method)(*args)
        except _native.NativeError as e:
            raise _from_native(e) from None
        except UnicodeEncodeError:
            # Its repr would hold the whole item.
            raise _unicode_error(_items_of(args), "item") from None

    def tokenize(self, namespace: str, values: Iterable[str], *, errors: str = "raise") -> list:
        """Tokens for ``values`` in ``namespace``, in order.

        A value the namespace's format does not take is an item error: with
        ``errors="raise"`` (the default) :class:`ItemErrors` is raised,
        carrying the other items' tokens; with ``errors="return"`` an
        :class:`ItemError` takes its place in the list.

        Needs the ``tokenize:<namespace>`` scope.
        """
        _check_errors(errors)
        return _finish(self._call("tokenize", namespace, _strings(values, "values")), errors)

    def detokenize(
        self,
        namespace: str,
        tokens: Iterable[str],
        *,
        masked: bool = False,
        purpose: Optional[str] = None,
        reason: Optional[str] = None,
        errors: str = "raise",
    ) -> list:
        """The values behind ``tokens`` of ``namespace``, in order; with
        ``masked=True`` only what the format shows (an SSN's last 4 digits).

        Every reveal is on the audit trail before it is answered.
        ``purpose`` and ``reason``, when given, replace the client's for
        this call. Item errors as in :meth:`tokenize` (an unknown token is
        ``NOT_FOUND``).

        Needs ``detokenize:<namespace>``, or for a masked reveal
        ``detokenize-masked:<namespace>``.
        """
        _check_errors(errors)
        answer = self._call(
            "detokenize", namespace, _strings(tokens, "tokens"), masked, purpose, reason
        )
        return _finish(answer, errors)

    def tokenize_column(
        self,
        namespace: str,
        cells: Iterable[Optional[str]],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        in_flight: int = DEFAULT_IN_FLIGHT,
        retry_for: float = DEFAULT_RETRY_FOR,
        errors: str = "raise",
    ) -> list:
        """Tokens for a long column of cells, ``None`` kept as ``None``.

        The cells go over one stream in batches of ``batch_size``, at most
        ``in_flight`` unanswered; when the node goes away the client moves
        on and sends the unanswered batches again, for up to ``retry_for``
        seconds after the last answer.
        """
        _check_errors(errors)
        [answer] = self._call(
            "columns",
            [(namespace, _cells(cells, "cells"))],
            None,
            batch_size,
            in_flight,
            retry_for,
        )
        return _finish(answer, errors)

    def detokenize_column(
        self,
        namespace: str,
        cells: Iterable[Optional[str]],
        *,
        masked: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        in_flight: int = DEFAULT_IN_FLIGHT,
        retry_for: float = DEFAULT_RETRY_FOR,
        errors: str = "raise",
    ) -> list:
        """Values for a long column of tokens, as :meth:`tokenize_column`;
        every batch is audited (stating the client's purpose)."""
        _check_errors(errors)
        [answer] = self._call(
            "columns",
            [(namespace, _cells(cells, "cells"))],
            masked,
            batch_size,
            in_flight,
            retry_for,
        )
        return _finish(answer, errors)

    def health(self) -> bool:
        """Whether the vault process answers (gRPC health, overall). It
        stays true while the vault cannot commit; see :meth:`ready`."""
        return self._call("health")

    def ready(self) -> bool:
        """Whether the vault can answer tokenize and detokenize now (false
        while its commits fail: every reveal then fails closed)."""
        return self._call("ready")

    def server_info(self) -> Dict[str, Any]:
        """The server's version, storage and limits (any valid key)."""
        version, store, max_message_bytes, max_items, max_value_bytes = self._call("server_info")
        return {
            "version": version,
            "store": store,
            "max_message_bytes": max_message_bytes,
            "max_items": max_items,
            "max_value_bytes": max_value_bytes,
        }


class AsyncClient:
    """:class:`Client` for asyncio: the same arguments, and ``await`` on
    every call. It connects on first use (or in ``async with``), in a
    thread, so that the event loop never waits on a connection.

    ``async with phivault.AsyncClient(...) as vault:
    tokens = await vault.tokenize("ssn", values)``
    """

    def __init__(
        self,
        endpoint: Union[None, str, Sequence[str]] = None,
        *,
        api_key: Optional[str] = None,
        api_key_file: Optional[PathLike] = None,
        tls: Optional[TLS] = None,
        insecure_plaintext: Optional[bool] = None,
        deadline: Optional[float] = _UNSET,
        purpose: Optional[str] = None,
        reason: Optional[str] = None,
    ) -> None:
        self._settings: Optional[_Settings] = _Settings.resolve(
            endpoint, api_key, api_key_file, tls, insecure_plaintext, deadline, purpose, reason
        )
        self._endpoints = _count(self._settings.endpoints)
        self._native: Optional[_native.NativeClient] = None
        self._connecting: Optional[asyncio.Lock] = None

    def __repr__(self) -> str:
        return f"<phivault.AsyncClient, {self._endpoints}>"

    def __reduce__(self):
        raise TypeError(_NO_PICKLE)

    async def connect(self) -> "AsyncClient":
        """Connects now rather than on the first call."""
        await self._client()
        return self

    async def _client(self) -> "_native.NativeClient":
        if self._native is None:
            if self._connecting is None:
                self._connecting = asyncio.Lock()
            async with self._connecting:
                if self._native is None:
                    loop = asyncio.get_running_loop()
                    self._native = await loop.run_in_executor(None, self._settings.connect)
                    # The key is in the native client now, and nowhere else.
                    self._settings = None
        return self._native

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connections; later calls raise :class:`ClosedError`."""
        if self._native is not None:
            self._native.close()

    async def _call(self, method: str, *args: Any) -> Any:
        native = await self._client()
        try:
            return await getattr(native, method)(*args)
        except _native.NativeError as e:
            raise _from_native(e) from None
        except UnicodeEncodeError:
            raise _unicode_error(_items_of(args), "item") from None

    async def _blocking(self, method: str) -> Any:
        """A native call that blocks (with the GIL released), in a thread."""
        native = await self._client()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, getattr(native, method))
        except _native.NativeError as e:
            raise _from_native(e) from None

    async def tokenize(self, namespace: str, values: Iterable[str], *, errors: str = "raise") -> list:
        """As :meth:`Client.tokenize`."""
        _check_errors(errors)
        answer = await self._call("tokenize_async", namespace, _strings(values, "values"))
        return _finish(answer, errors)

    async def detokenize(
        self,
        namespace: str,
        tokens: Iterable[str],
        *,
        masked: bool = False,
        purpose: Optional[str] = None,
        reason: Optional[str] = None,
        errors: str = "raise",
    ) -> list:
        """As :meth:`Client.detokenize`."""
        _check_errors(errors)
        answer = await self._call(
            "detokenize_async", namespace, _strings(tokens, "tokens"), masked, purpose, reason
        )
        return _finish(answer, errors)

    async def tokenize_column(
        self,
        namespace: str,
        cells: Iterable[Optional[str]],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        in_flight: int = DEFAULT_IN_FLIGHT,
        retry_for: float = DEFAULT_RETRY_FOR,
        errors: str = "raise",
    ) -> list:
        """As :meth:`Client.tokenize_column`."""
        _check_errors(errors)
        [answer] = await self._call(
            "columns_async",
            [(namespace, _cells(cells, "cells"))],
            None,
            batch_size,
            in_flight,
            retry_for,
        )
        return _finish(answer, errors)

    async def detokenize_column(
        self,
        namespace: str,
        cells: Iterable[Optional[str]],
        *,
        masked: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        in_flight: int = DEFAULT_IN_FLIGHT,
        retry_for: float = DEFAULT_RETRY_FOR,
        errors: str = "raise",
    ) -> list:
        """As :meth:`Client.detokenize_column`."""
        _check_errors(errors)
        [answer] = await self._call(
            "columns_async",
            [(namespace, _cells(cells, "cells"))],
            masked,
            batch_size,
            in_flight,
            retry_for,
        )
        return _finish(answer, errors)

    async def health(self) -> bool:
        """As :meth:`Client.health`."""
        return await self._blocking("health")

    async def ready(self) -> bool:
        """As :meth:`Client.ready`."""
        return await self._blocking("ready")

    async def server_info(self) -> Dict[str, Any]:
        """As :meth:`Client.server_info`."""
        version, store, max_message_bytes, max_items, max_value_bytes = await self._blocking("server_info")
        return {
            "version": version,
            "store": store,
            "max_message_bytes": max_message_bytes,
            "max_items": max_items,
            "max_value_bytes": max_value_bytes,
        }
