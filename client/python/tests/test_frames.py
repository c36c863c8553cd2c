"""Data frames: pandas and Arrow columns tokenized by a ``{column:
namespace}`` map, every other column untouched, nulls kept, and the
PySpark functions run on pandas and Arrow batches as Spark would."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

import phivault
from phivault import frames, spark

ROWS = 100_000
FIRST = ["Ana", "Bo", "Chidi", "Dana", "Eli", "Farah", "Gus", "Hana", "Ivo", "June", "Kofi", "Lena", "Mo", "Nia", "Omar", "Pia"]
LAST = ["Abbott", "Baker", "Castillo", "Doyle", "Eze", "Fischer", "Garcia", "Huang", "Ito", "Jensen", "Kowalski", "Lopez", "Moreau", "Nguyen", "O'Neil", "Patel"]


def patients(rows: int) -> pd.DataFrame:
    """Rows that look like a registration extract, some PHI missing."""
    return pd.DataFrame(
        {
            "patient_id": range(rows),
            "ssn": [None if i % 13 == 0 else f"{100 + i % 600:03d}-{10 + i % 89:02d}-{1000 + i % 8999:04d}" for i in range(rows)],
            "mrn": [f"MRN{i:08d}" for i in range(rows)],
            "email": [f"patient{i}@example.org" if i % 5 else None for i in range(rows)],
            "name": [f"{FIRST[i % 16]} {chr(65 + i // 16 % 26)}. {LAST[i // 416 % 16]}-{LAST[i // 6656 % 16]}" for i in range(rows)],
            "visits": [i % 40 for i in range(rows)],
            "charge": [i * 0.25 for i in range(rows)],
        }
    )


MAPPING = {"ssn": "ssn", "mrn": "mrn", "email": "email", "name": "name"}


@pytest.fixture(scope="module")
def client(vault, keys):
    with phivault.Client(vault.endpoint, api_key=keys["pipeline"]) as c:
        yield c


def test_a_100000_row_dataframe_round_trips(client):
    original = patients(ROWS)
    tokenized = frames.tokenize_dataframe(client, original, MAPPING, batch_size=1000, in_flight=8)
    assert list(tokenized.columns) == list(original.columns)
    for column in ("patient_id", "visits", "charge"):
        pd.testing.assert_series_equal(tokenized[column], original[column])
    for column in MAPPING:
        before, after = original[column], tokenized[column]
        pd.testing.assert_series_equal(before.isna(), after.isna(), check_names=False)
        present = before.notna()
        assert (before[present] != after[present]).all(), column
        assert after.dtype == before.dtype, column
    # The original frame is not changed.
    pd.testing.assert_frame_equal(original, patients(ROWS))
    revealed = frames.detokenize_dataframe(client, tokenized, MAPPING)
    pd.testing.assert_frame_equal(revealed, original)


def test_chunks_stream_one_at_a_time(client):
    original = patients(3000)
    chunks = [original.iloc[i : i + 1000] for i in range(0, 3000, 1000)]
    out = pd.concat(frames.tokenize_dataframes(client, iter(chunks), {"ssn": "ssn"}))
    whole = frames.tokenize_dataframe(client, original, {"ssn": "ssn"})
    pd.testing.assert_frame_equal(out, whole)


def test_item_errors_name_column_and_row(client):
    canary = "000-canary"
    frame = pd.DataFrame({"ssn": ["123-45-6789", None, "987-65-4321", canary], "n": [1, 2, 3, 4]})
    with pytest.raises(phivault.ItemErrors) as failed:
        frames.tokenize_dataframe(client, frame, {"ssn": "ssn"})
    [error] = failed.value.errors
    assert (error.column, error.index, error.code) == ("ssn", 3, "INVALID_ARGUMENT")
    assert canary not in str(failed.value)
    partial = failed.value.results
    assert partial["ssn"].isna().tolist() == [False, True, False, True]
    kept = frames.tokenize_dataframe(client, frame, {"ssn": "ssn"}, errors="null")
    assert kept["ssn"].isna().tolist() == [False, True, False, True]
    assert kept.attrs["phivault_errors"] == [error]


def test_cells_that_are_not_strings_are_refused_before_sending(client):
    frame = pd.DataFrame({"ssn": ["123-45-6789", 123456789]})
    with pytest.raises(TypeError) as refused:
        frames.tokenize_dataframe(client, frame, {"ssn": "ssn"})
    assert "row 1" in str(refused.value) and "123456789" not in str(refused.value)
    with pytest.raises(KeyError):
        frames.tokenize_dataframe(client, frame, {"mrn": "mrn"})


def test_arrow_batches_and_tables_keep_schema_metadata_and_nulls(client):
    schema = pa.schema(
        [pa.field("ssn", pa.string()), pa.field("mrn", pa.large_string()), pa.field("age", pa.int32())],
        metadata={b"source": b"registration"},
    )
    batch = pa.RecordBatch.from_pydict(
        {"ssn": ["123-45-6789", None, "555-12-3456"], "mrn": ["MRN1", "MRN2", None], "age": [30, 41, 52]},
        schema=schema,
    )
    mapping = {"ssn": "ssn", "mrn": "mrn"}
    tokenized = frames.tokenize_arrow(client, batch, mapping)
    assert isinstance(tokenized, pa.RecordBatch)
    assert tokenized.schema.equals(schema, check_metadata=True)
    assert tokenized.column("age").equals(batch.column("age"))
    assert tokenized.column("ssn").null_count == 1 and tokenized.column("mrn").null_count == 1
    assert tokenized.column("ssn")[0].as_py() != "123-45-6789"
    assert frames.detokenize_arrow(client, tokenized, mapping).equals(batch)
    table = pa.Table.from_batches([batch, batch])
    tokenized_table = frames.tokenize_arrow(client, table, mapping)
    assert isinstance(tokenized_table, pa.Table)
    assert tokenized_table.schema.equals(schema, check_metadata=True)
    assert frames.detokenize_arrow(client, tokenized_table, mapping).equals(table)
    with pytest.raises(TypeError):
        frames.tokenize_arrow(client, batch, {"age": "ssn"})


def test_the_spark_functions_on_the_batches_spark_hands_them(vault, keys):
    """PySpark calls the function with an iterator of pandas frames (or
    Arrow record batches) per partition; it is called here the same way."""
    original = patients(2500)
    parts = [original.iloc[i : i + 1000] for i in range(0, 2500, 1000)]
    options = {"endpoint": vault.endpoint, "api_key": keys["pipeline"], "in_flight": 4}
    tokenize = spark.tokenize_in_pandas(MAPPING, **options)
    tokenized = list(tokenize(iter(parts)))
    assert [len(p) for p in tokenized] == [1000, 1000, 500]
    reveal = spark.detokenize_in_pandas(MAPPING, **options)
    pd.testing.assert_frame_equal(pd.concat(reveal(iter(tokenized))), original)

    batches = pa.Table.from_pandas(original[["ssn", "mrn"]], preserve_index=False).to_batches(max_chunksize=1000)
    on_arrow = spark.tokenize_in_arrow({"ssn": "ssn", "mrn": "mrn"}, **options)
    tokenized_batches = list(on_arrow(iter(batches)))
    back = list(spark.detokenize_in_arrow({"ssn": "ssn", "mrn": "mrn"}, **options)(iter(tokenized_batches)))
    assert pa.Table.from_batches(back).equals(pa.Table.from_batches(batches))


def test_categorical_and_nullable_string_columns_keep_their_kind(client):
    frame = pd.DataFrame(
        {
            "ssn": pd.Series(["123-45-6789", "987-65-4321", "123-45-6789", None], dtype="category"),
            "mrn": pd.Series(["MRN1", None, "MRN3", "MRN4"], dtype="string"),
        }
    )
    tokenized = frames.tokenize_dataframe(client, frame, {"ssn": "ssn", "mrn": "mrn"})
    assert isinstance(tokenized["ssn"].dtype, pd.CategoricalDtype)
    assert tokenized["ssn"].isna().tolist() == [False, False, False, True]
    assert tokenized["ssn"][0] == tokenized["ssn"][2] != "123-45-6789"
    assert tokenized["mrn"].dtype == frame["mrn"].dtype
    assert tokenized["mrn"].isna().tolist() == [False, True, False, False]
    back = frames.detokenize_dataframe(client, tokenized, {"ssn": "ssn", "mrn": "mrn"})
    assert back["ssn"].astype(object).where(back["ssn"].notna(), None).tolist() == ["123-45-6789", "987-65-4321", "123-45-6789", None]
    pd.testing.assert_series_equal(back["mrn"], frame["mrn"])


def test_spark_in_local_mode(vault, keys, tmp_path):
    """A real Spark (local mode, loopback only): mapInPandas tokenizes,
    mapInArrow reveals, each executor task opening its own client from a
    key file."""
    import os
    import sys

    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    key_file = tmp_path / "key"
    key_file.write_text(keys["pipeline"])
    session = (
        SparkSession.builder.master("local[2]")
        .appName("phivault-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    try:
        original = patients(5000)
        df = session.createDataFrame(original).repartition(3)
        options = {"endpoint": vault.endpoint, "api_key_file": str(key_file)}
        tokenized = df.mapInPandas(spark.tokenize_in_pandas(MAPPING, **options), schema=df.schema)
        revealed = tokenized.mapInArrow(spark.detokenize_in_arrow(MAPPING, **options), schema=tokenized.schema)
        tokens = tokenized.toPandas().sort_values("patient_id").reset_index(drop=True)
        back = revealed.toPandas().sort_values("patient_id").reset_index(drop=True)
    finally:
        session.stop()
    for column in MAPPING:
        expected = original[column].where(original[column].notna(), None).tolist()
        assert back[column].where(back[column].notna(), None).tolist() == expected, column
        present = original[column].notna()
        assert (tokens[column][present] != original[column][present]).all(), column
    assert back["visits"].tolist() == original["visits"].tolist()
