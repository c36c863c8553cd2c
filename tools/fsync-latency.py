#!/usr/bin/env python3
"""How long one small write and its fdatasync take on a disk, three ways.

The vault's RocksDB store syncs its write-ahead log once per group commit:
this is the floor under a durable audit record on that disk. Run it in the
directory the vault's data will live in:

    python3 tools/fsync-latency.py [DIR] [COUNT]

* append: each write extends the file, as a growing log does, so the sync
  writes the inode (its new size) as well as the data;
* fallocated: the space was reserved beforehand, with the size set;
* prewritten: the blocks were written and synced beforehand, so the sync
  has data only to write (what a reused log file gives).

Beside the latencies, the CPU each write and sync cost this process, in the
kernel and in user space: on a virtual machine's disk the kernel's part is
CPU the vault's other threads cannot use.
"""

import os
import sys
import tempfile
import time

RECORD = 512


def measure(directory: str, mode: str, count: int) -> tuple[list[float], float, float]:
    fd, path = tempfile.mkstemp(prefix=f"fsync-{mode}-", dir=directory)
    try:
        size = count * RECORD + 4096
        if mode == "prewritten":
            os.write(fd, b"\0" * size)
        elif mode == "fallocated":
            os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
        record = b"x" * RECORD
        took = []
        before = os.times()
        for n in range(count):
            start = time.perf_counter()
            os.pwrite(fd, record, n * RECORD)
            os.fdatasync(fd)
            took.append(time.perf_counter() - start)
        after = os.times()
        return sorted(took), (after.system - before.system) / count, (after.user - before.user) / count
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    print(f"{count} writes of {RECORD} bytes, each followed by fdatasync, in {directory}")
    print("| file | p50 | p99 | p99.9 | max | CPU a sync: kernel | user |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in ("append", "fallocated", "prewritten"):
        took, system, user = measure(directory, mode, count)
        at = lambda q: took[min(len(took) - 1, int(len(took) * q))] * 1e3
        print(
            f"| {mode} | {at(0.5):.3f} ms | {at(0.99):.3f} ms | {at(0.999):.3f} ms | {took[-1] * 1e3:.3f} ms"
            f" | {system * 1e6:.0f} µs | {user * 1e6:.0f} µs |"
        )


if __name__ == "__main__":
    main()
