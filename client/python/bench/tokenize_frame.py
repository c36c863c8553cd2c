"""Times `phivault.frames.tokenize_dataframe` on a CSV read into a pandas
DataFrame (the reading is not timed): the Python half of the bulk
benchmark (vault/benches/bulk.rs), which runs it against a fresh vault and
compares its rate with `phivault-client bulk tokenize` on the same file.

Usage: python tokenize_frame.py CSV COLUMN=NAMESPACE...
(endpoint and key from PHIVAULT_ENDPOINT and PHIVAULT_API_KEY). Prints one
JSON line: fields, seconds, errors.
"""

import json
import sys
import time

import pandas as pd

import phivault
from phivault import frames


def main() -> None:
    path, maps = sys.argv[1], sys.argv[2:]
    mapping = dict(m.split("=", 1) for m in maps)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    with phivault.Client() as client:
        started = time.perf_counter()
        out = frames.tokenize_dataframe(client, frame, mapping, errors="null")
        seconds = time.perf_counter() - started
    fields = int(sum(frame[c].notna().sum() for c in mapping))
    errors = len(out.attrs.get("phivault_errors", []))
    print(json.dumps({"fields": fields, "seconds": seconds, "errors": errors}))


if __name__ == "__main__":
    main()
