"""phivault: format-preserving tokenization of protected health information.

A client for a phivault vault, around the same Rust client as the
``phivault-client`` CLI: pipelined, ordered streams that reconnect to the
next endpoint when a node goes away::

    import phivault

    with phivault.Client("https://vault.example:50051", api_key_file="/run/secrets/pv") as vault:
        tokens = vault.tokenize("ssn", ["123-45-6789"])
        values = vault.detokenize("ssn", tokens, purpose="TREAT")

:mod:`phivault.frames` tokenizes pandas DataFrames and Arrow tables by a
``{column: namespace}`` map; :mod:`phivault.spark` gives the functions for
PySpark's ``mapInPandas`` and ``mapInArrow``.
"""

from ._client import DEFAULT_ENDPOINT, AsyncClient, Client, TLS
from ._native import __version__
from .errors import (
    CallError,
    ClosedError,
    ConfigurationError,
    ConnectError,
    InvalidArgument,
    ItemError,
    ItemErrors,
    NotFound,
    PermissionDenied,
    PhivaultError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "AsyncClient",
    "CallError",
    "Client",
    "ClosedError",
    "ConfigurationError",
    "ConnectError",
    "InvalidArgument",
    "ItemError",
    "ItemErrors",
    "NotFound",
    "PermissionDenied",
    "PhivaultError",
    "ResourceExhausted",
    "TLS",
    "Unauthenticated",
    "Unavailable",
    "__version__",
]
