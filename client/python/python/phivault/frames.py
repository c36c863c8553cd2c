"""Tokenize and reveal the columns of pandas DataFrames and Arrow tables.

Each function takes a ``{column: namespace}`` map, sends every mapped
column's cells over one stream in batches (at most ``in_flight``
unanswered, reconnecting to the next endpoint when a node goes away), and
returns a new frame: mapped columns replaced, every other column, the
index, the schema and its metadata as they were (a categorical column
comes back categorical, with the tokens as its categories). Null cells (``None``,
``NaN``, ``pd.NA``, Arrow nulls) stay null and are not sent.

A mapped cell that is not a string is refused with a ``TypeError`` naming
its column and row, before anything is sent. Item errors (a value the
format does not take, a token the vault does not hold) raise
:class:`phivault.ItemErrors` by default: each :class:`phivault.ItemError`
names its column and row position, and ``results`` holds the frame with
those cells null. With ``errors="null"`` that frame is returned instead
(for pandas, with the errors in ``frame.attrs["phivault_errors"]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from . import _native
from ._client import DEFAULT_BATCH_SIZE, DEFAULT_IN_FLIGHT, DEFAULT_RETRY_FOR, Client
from .errors import ItemError, ItemErrors, _from_native

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa


def _check_errors(errors: str) -> None:
    if errors not in ("raise", "null"):
        raise ValueError('errors must be "raise" or "null"')


def _send(
    client: Client,
    columns: List[Tuple[str, str, List[Optional[str]]]],
    masked: Optional[bool],
    batch_size: int,
    in_flight: int,
    retry_for: float,
) -> Tuple[Dict[str, List[Optional[str]]], List[ItemError]]:
    """Every column's texts by name, and the item errors."""
    request = [(namespace, cells) for _, namespace, cells in columns]
    native = client._native
    try:
        answers = native.columns(request, masked, batch_size, in_flight, retry_for)
    except _native.NativeError as e:
        raise _from_native(e) from None
    except UnicodeEncodeError:
        # Its repr would hold the whole cell: name the cell instead.
        for name, _, cells in columns:
            for row, cell in enumerate(cells):
                if cell is None:
                    continue
                try:
                    cell.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(
                        f"column {name!r} row {row} is not valid Unicode text (it holds a lone surrogate)"
                    ) from None
        raise ValueError("a cell is not valid Unicode text") from None
    texts: Dict[str, List[Optional[str]]] = {}
    errors: List[ItemError] = []
    for (name, _, _), (answered, failures) in zip(columns, answers):
        texts[name] = answered
        errors.extend(ItemError(row, code, message, name) for row, code, message in failures)
    return texts, errors


def _mapping(columns: Mapping[str, str], present: Sequence[str]) -> List[Tuple[str, str]]:
    if not columns:
        raise ValueError("no column is mapped to a namespace")
    missing = [name for name in columns if name not in present]
    if missing:
        raise KeyError(f"no column named {missing[0]!r} to map")
    return list(columns.items())


# --- pandas ---------------------------------------------------------------


def _pandas_cells(series: "pd.Series", name: str) -> List[Optional[str]]:
    import pandas as pd

    nulls = series.isna().to_numpy()
    cells = series.astype(object).where(~nulls, None).tolist()
    if not (pd.api.types.is_string_dtype(series.dtype) and series.dtype != object):
        for row, cell in enumerate(cells):
            if cell is not None and not isinstance(cell, str):
                raise TypeError(
                    f"column {name!r} row {row} holds a {type(cell).__name__}, not a str: "
                    "convert the column to strings first (e.g. .astype(str))"
                )
    return cells


def _pandas(
    client: Client,
    frame: "pd.DataFrame",
    columns: Mapping[str, str],
    masked: Optional[bool],
    batch_size: int,
    in_flight: int,
    retry_for: float,
    errors: str,
) -> "pd.DataFrame":
    import pandas as pd

    _check_errors(errors)
    mapping = _mapping(columns, list(frame.columns))
    request = [(name, namespace, _pandas_cells(frame[name], name)) for name, namespace in mapping]
    texts, failed = _send(client, request, masked, batch_size, in_flight, retry_for)
    out = frame.copy(deep=False)
    for name, _ in mapping:
        original = frame[name]
        replaced = pd.Series(texts[name], index=frame.index, dtype=object, name=name)
        if isinstance(original.dtype, pd.CategoricalDtype):
            # Tokens are none of the column's categories: new ones.
            replaced = replaced.astype("category")
        elif original.dtype != object and pd.api.types.is_string_dtype(original.dtype):
            replaced = replaced.astype(original.dtype)
        out[name] = replaced
    if failed:
        out.attrs["phivault_errors"] = failed
        if errors == "raise":
            raise ItemErrors(failed, out)
    return out


def tokenize_dataframe(
    client: Client,
    frame: "pd.DataFrame",
    columns: Mapping[str, str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    in_flight: int = DEFAULT_IN_FLIGHT,
    retry_for: float = DEFAULT_RETRY_FOR,
    errors: str = "raise",
) -> "pd.DataFrame":
    """A copy of ``frame`` with each column of ``columns`` (``{column:
    namespace}``) tokenized; see the module's description."""
    return _pandas(client, frame, columns, None, batch_size, in_flight, retry_for, errors)


def detokenize_dataframe(
    client: Client,
    frame: "pd.DataFrame",
    columns: Mapping[str, str],
    *,
    masked: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    in_flight: int = DEFAULT_IN_FLIGHT,
    retry_for: float = DEFAULT_RETRY_FOR,
    errors: str = "raise",
) -> "pd.DataFrame":
    """A copy of ``frame`` with each column of ``columns`` revealed (masked
    when asked); every batch is on the audit trail, stating the client's
    purpose."""
    return _pandas(client, frame, columns, masked, batch_size, in_flight, retry_for, errors)


def tokenize_dataframes(
    client: Client,
    frames: Iterable["pd.DataFrame"],
    columns: Mapping[str, str],
    **options: Any,
) -> Iterator["pd.DataFrame"]:
    """Tokenizes frames one after another as they come (chunks of
    ``pd.read_csv(..., chunksize=...)``, say), holding one at a time."""
    for frame in frames:
        yield tokenize_dataframe(client, frame, columns, **options)


def detokenize_dataframes(
    client: Client,
    frames: Iterable["pd.DataFrame"],
    columns: Mapping[str, str],
    **options: Any,
) -> Iterator["pd.DataFrame"]:
    """Reveals frames one after another as they come."""
    for frame in frames:
        yield detokenize_dataframe(client, frame, columns, **options)


# --- Arrow ----------------------------------------------------------------


def _arrow(
    client: Client,
    data: Any,
    columns: Mapping[str, str],
    masked: Optional[bool],
    batch_size: int,
    in_flight: int,
    retry_for: float,
    errors: str,
) -> Any:
    import pyarrow as pa

    _check_errors(errors)
    names = list(data.schema.names)
    mapping = _mapping(columns, names)
    request = []
    for name, namespace in mapping:
        kind = data.schema.field(name).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or _is_string_view(pa, kind)):
            raise TypeError(f"column {name!r} is {kind}, not a string column")
        request.append((name, namespace, data.column(name).to_pylist()))
    texts, failed = _send(client, request, masked, batch_size, in_flight, retry_for)
    if isinstance(data, pa.RecordBatch):
        arrays = [
            pa.array(texts[name], type=data.schema.field(name).type) if name in columns else data.column(i)
            for i, name in enumerate(names)
        ]
        out = pa.RecordBatch.from_arrays(arrays, schema=data.schema)
    else:
        out = data
        for name, _ in mapping:
            i = names.index(name)
            field = data.schema.field(i)
            out = out.set_column(i, field, pa.chunked_array([pa.array(texts[name], type=field.type)]))
    if failed and errors == "raise":
        raise ItemErrors(failed, out)
    return out


def _is_string_view(pa: Any, kind: Any) -> bool:
    check = getattr(pa.types, "is_string_view", None)
    return bool(check and check(kind))


def tokenize_arrow(
    client: Client,
    data: "pa.RecordBatch | pa.Table",
    columns: Mapping[str, str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    in_flight: int = DEFAULT_IN_FLIGHT,
    retry_for: float = DEFAULT_RETRY_FOR,
    errors: str = "raise",
) -> "pa.RecordBatch | pa.Table":
    """``data`` (a record batch or a table) with each string column of
    ``columns`` tokenized, of the same type; schema and metadata kept."""
    return _arrow(client, data, columns, None, batch_size, in_flight, retry_for, errors)


def detokenize_arrow(
    client: Client,
    data: "pa.RecordBatch | pa.Table",
    columns: Mapping[str, str],
    *,
    masked: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    in_flight: int = DEFAULT_IN_FLIGHT,
    retry_for: float = DEFAULT_RETRY_FOR,
    errors: str = "raise",
) -> "pa.RecordBatch | pa.Table":
    """``data`` with each column of ``columns`` revealed; audited."""
    return _arrow(client, data, columns, masked, batch_size, in_flight, retry_for, errors)
