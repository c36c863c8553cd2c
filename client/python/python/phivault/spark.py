"""Functions for PySpark's ``DataFrame.mapInPandas`` and ``mapInArrow``.

Each returns a function that Spark ships to its executors: there it opens
its own :class:`phivault.Client` (from the keyword arguments given here,
or from the executors' ``PHIVAULT_*`` environment variables), tokenizes or
reveals each batch of a partition as it comes, and closes the client when
the partition ends. The output schema is the input's::

    from phivault import spark as pv_spark

    tokenized = df.mapInPandas(
        pv_spark.tokenize_in_pandas({"ssn": "ssn", "mrn": "mrn"}),
        schema=df.schema,
    )

Pass the API key as ``api_key_file`` (a file on every executor) or through
the executors' environment rather than as ``api_key``: arguments given
here travel with the function in the job's plan.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

from ._client import Client
from .frames import detokenize_arrow, detokenize_dataframe, tokenize_arrow, tokenize_dataframe


def _options(options: Mapping[str, Any]) -> tuple:
    frame_keys = {"batch_size", "in_flight", "retry_for", "errors", "masked"}
    frame = {k: v for k, v in options.items() if k in frame_keys}
    client = {k: v for k, v in options.items() if k not in frame_keys}
    return client, frame


def _mapper(convert: Callable[..., Any], columns: Mapping[str, str], options: Mapping[str, Any]):
    client_options, frame_options = _options(options)
    columns = dict(columns)

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        with Client(**client_options) as client:
            for batch in batches:
                yield convert(client, batch, columns, **frame_options)

    return run


def tokenize_in_pandas(columns: Mapping[str, str], **options: Any) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """For ``mapInPandas``: tokenizes ``columns`` (``{column: namespace}``)
    of each pandas batch. ``options`` are :class:`phivault.Client`'s
    arguments and :func:`phivault.frames.tokenize_dataframe`'s."""
    return _mapper(tokenize_dataframe, columns, options)


def detokenize_in_pandas(columns: Mapping[str, str], **options: Any) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """For ``mapInPandas``: reveals ``columns`` of each pandas batch."""
    return _mapper(detokenize_dataframe, columns, options)


def tokenize_in_arrow(columns: Mapping[str, str], **options: Any) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """For ``mapInArrow``: tokenizes ``columns`` of each Arrow record batch."""
    return _mapper(tokenize_arrow, columns, options)


def detokenize_in_arrow(columns: Mapping[str, str], **options: Any) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """For ``mapInArrow``: reveals ``columns`` of each Arrow record batch."""
    return _mapper(detokenize_arrow, columns, options)
