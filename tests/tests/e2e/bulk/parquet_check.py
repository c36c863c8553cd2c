"""pyarrow's side of the Parquet bulk test: writes an input file, and checks
phivault's output against it with a reader independent of phivault's.

  parquet_check.py make FILE           a 30,000-row file in three row groups
  parquet_check.py tokenized IN OUT    OUT is IN with the mapped columns changed
  parquet_check.py same IN BACK        BACK holds IN's values
"""

import sys

import pyarrow as pa
import pyarrow.parquet as pq

MAPPED = ["ssn", "name", "email", "mrn"]
ROWS = 30_000
BAD_ROW = 15_000  # 0-based: an SSN the vault refuses, at row 15,001
GIVEN = ["Adam", "Maria", "Wei", "Fatima", "Olga", "Jamal", "Lucia", "Kenji"]
FAMILY = ["Smith", "Nguyen", "Garcia", "Kowalski", "Okafor", "Jensen"]


def make(path):
    ssn = [None if i % 11 == 0 else f"{100 + i % 600:03}-{10 + i % 80:02}-{1000 + i % 9000:04}" for i in range(ROWS)]
    ssn[BAD_ROW] = "12-345"
    names = [f"{GIVEN[i % 8]} {FAMILY[(i // 8) % 6]}" for i in range(ROWS)]
    table = pa.table(
        {
            # A nested column before the mapped ones: leaves and fields part.
            "visit": pa.array([{"ward": f"W{i % 9}", "bed": i % 30} for i in range(ROWS)]),
            "id": pa.array(range(ROWS), pa.int64()),
            "ssn": pa.array(ssn, pa.string()),
            # A categorical column: Arrow dictionary, Parquet dictionary pages.
            "name": pa.array(names, pa.string()).dictionary_encode(),
            "email": pa.array([None if i % 7 == 0 else ("" if i % 13 == 0 else f"pt{i}@example.org") for i in range(ROWS)], pa.large_string()),
            "note": pa.array([f"visit {i % 97}, no PHI here" for i in range(ROWS)], pa.string()),
            "mrn": pa.array([f"MRN{i:07}" for i in range(ROWS)], pa.string_view()),
            "amount": pa.array([i * 0.25 for i in range(ROWS)], pa.float64()),
            "seen": pa.array([19_000 + i % 400 for i in range(ROWS)], pa.date32()),
            "tags": pa.array([["a", "b"][: i % 3] for i in range(ROWS)], pa.list_(pa.string())),
            "place": pa.array([{"ward": f"W{i % 9}", "bed": i % 30} for i in range(ROWS)]),
        }
    ).replace_schema_metadata({"source": "ehr-export", "exported": "2026-12-04"})
    compression = {"visit.ward": "snappy", "visit.bed": "snappy", "id": "snappy", "ssn": "zstd",
                   "name": "snappy", "email": "gzip", "note": "zstd", "mrn": "snappy",
                   "amount": "lz4", "seen": "snappy", "tags.list.element": "snappy",
                   "place.ward": "snappy", "place.bed": "snappy"}
    with pq.ParquetWriter(path, table.schema, compression=compression, write_page_index=True) as writer:
        writer.write_table(table, row_group_size=10_000)
        # An empty row group, as an empty frame's write leaves.
        writer.write_table(table.slice(0, 0))


def chunk_bytes(path, meta, group, column):
    col = meta.row_group(group).column(column)
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(col.total_compressed_size)


def tokenized(before_path, after_path):
    before, after = pq.read_table(before_path), pq.read_table(after_path)
    assert before.schema.equals(after.schema, check_metadata=True), (before.schema, after.schema)
    mb, ma = pq.ParquetFile(before_path).metadata, pq.ParquetFile(after_path).metadata
    # (The refused SSN stays, as --on-error keep says.)
    values = {name: set(before.column(name).to_pylist()) - {None, "", "12-345"} for name in MAPPED}
    assert (mb.num_rows, mb.num_row_groups) == (ma.num_rows, ma.num_row_groups)
    paths = [mb.schema.column(c).path for c in range(mb.num_columns)]
    for g in range(mb.num_row_groups):
        for c, path in enumerate(paths):
            cb, ca = mb.row_group(g).column(c), ma.row_group(g).column(c)
            assert cb.compression == ca.compression, (path, cb.compression, ca.compression)
            if path in MAPPED:
                # Statistics of the written tokens, never a value.
                stats = ca.statistics
                if stats is not None and stats.has_min_max:
                    assert stats.min not in values[path] and stats.max not in values[path], (path, g)
                continue
            # Copied, not re-encoded: the same bytes.
            assert chunk_bytes(before_path, mb, g, c) == chunk_bytes(after_path, ma, g, c), (g, path)
    for name in before.column_names:
        old, new = before.column(name).to_pylist(), after.column(name).to_pylist()
        if name not in MAPPED:
            assert old == new, name
            continue
        for row, (o, n) in enumerate(zip(old, new)):
            if o is None or o == "" or (name == "ssn" and row == BAD_ROW):
                assert o == n, (name, row)
            else:
                assert o != n and n, (name, row)
    assert pa.types.is_dictionary(after.schema.field("name").type)
    print(sum(1 for name in MAPPED for o in before.column(name).to_pylist() if o))


def same(before_path, back_path):
    before, back = pq.read_table(before_path), pq.read_table(back_path)
    assert before.schema.equals(back.schema, check_metadata=True), (before.schema, back.schema)
    for name in before.column_names:
        old, new = before.column(name).to_pylist(), back.column(name).to_pylist()
        wrong = [row for row, (o, n) in enumerate(zip(old, new)) if o != n]
        assert not wrong, (name, len(wrong), wrong[:5])
    # (Table.equals would also compare how each chunk's dictionary is laid
    # out, which is up to the writer: values and types are what must hold.)
    print("same")


if __name__ == "__main__":
    {"make": make, "tokenized": tokenized, "same": same}[sys.argv[1]](*sys.argv[2:])
