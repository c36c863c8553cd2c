"""Type hints of the native module (Rust, built by maturin)."""

from typing import Awaitable, List, Optional, Tuple

__version__: str

_Answer = Tuple[List[Optional[str]], List[Tuple[int, str, str]]]

class NativeError(Exception): ...

class NativeClient:
    @staticmethod
    def connect(
        endpoints: str,
        api_key: Optional[str],
        ca_pem: Optional[bytes],
        cert_pem: Optional[bytes],
        key_pem: Optional[bytes],
        domain: Optional[str],
        insecure_plaintext: bool,
        deadline: Optional[float],
        purpose: Optional[str],
        reason: Optional[str],
    ) -> "NativeClient": ...
    def close(self) -> None: ...
    def tokenize(self, namespace: str, values: List[str]) -> _Answer: ...
    def detokenize(
        self, namespace: str, tokens: List[str], masked: bool, purpose: Optional[str], reason: Optional[str]
    ) -> _Answer: ...
    def tokenize_async(self, namespace: str, values: List[str]) -> Awaitable[_Answer]: ...
    def detokenize_async(
        self, namespace: str, tokens: List[str], masked: bool, purpose: Optional[str], reason: Optional[str]
    ) -> Awaitable[_Answer]: ...
    def columns(
        self,
        columns: List[Tuple[str, List[Optional[str]]]],
        masked: Optional[bool],
        batch_items: int,
        in_flight: int,
        retry_for: float,
    ) -> List[_Answer]: ...
    def columns_async(
        self,
        columns: List[Tuple[str, List[Optional[str]]]],
        masked: Optional[bool],
        batch_items: int,
        in_flight: int,
        retry_for: float,
    ) -> Awaitable[List[_Answer]]: ...
    def health(self) -> bool: ...
    def ready(self) -> bool: ...
    def server_info(self) -> Tuple[str, str, int, int, int]: ...
