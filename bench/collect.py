"""What a collection of a store's cache costs, and how long it holds a node up.

``python -m bench.collect [--pinned N] [--cached N] [--size MIB] [--quick]``
fills a real LMDB store in a temporary directory with N pinned files and N
cached (unpinned) files of SIZE MiB each, then runs one collection in its
steps, as a node does between serving its peers, and prints:

- the whole collection's time (the baseline: what one collection done in one
  go, as ``BlockStore.gc()`` does, would hold the node up for), its number of
  steps, the longest step and the ratio longest step / whole;
- how fast it marked (pinned MiB per second) and swept (cached MiB removed
  per second);
- what the node's every-``gc_interval`` check (``BlockStore.usage()``) costs:
  the first reads every pin, the later ones keep the sum.

Figures to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from protocols.unixfs import import_bytes
from store.blockstore import BlockStore, Collection

MIB = 1 << 20


def fill(store: BlockStore, files: int, size: int, *, pin: bool) -> None:
    what = "pinned" if pin else "cached"
    print(f"writing {files} {what} files of {size // MIB} MiB", file=sys.stderr)
    for i in range(files):
        root, blocks = import_bytes(os.urandom(size))
        store.put_many(blocks)
        if pin:
            store.pin(root, size=size, name=f"file {i}")


def run(pinned: int, cached: int, size_mib: int) -> None:
    size = size_mib * MIB
    with (
        tempfile.TemporaryDirectory(prefix="coliving-bench-") as tmp,
        BlockStore.open(Path(tmp) / "store") as store,
    ):
        fill(store, pinned, size, pin=True)
        fill(store, cached, size, pin=False)
        started = time.perf_counter()
        usage = store.usage()
        first_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        store.usage()
        check_ms = (time.perf_counter() - started) * 1000
        steps: list[float] = []
        mark_s = 0.0
        collection = Collection(store)
        gen = collection.steps()
        more = True
        while more:
            started = time.perf_counter()
            try:
                next(gen)
            except StopIteration:
                more = False
            steps.append(time.perf_counter() - started)
            if collection.marked and not mark_s:
                mark_s = sum(steps)
        done = collection.result
        whole = sum(steps)
        longest = max(steps)
        sweep_s = whole - mark_s
        assert done.removed_bytes >= cached * size
        assert all(store.missing_blocks(p.cid) == [] for p in store.pins())
    print(f"store: {pinned} pinned + {cached} cached files of {size_mib} MiB")
    print(
        f"usage() check: {check_ms:.3f} ms, the first {first_ms:.2f} ms (unpinned "
        f"{usage.unpinned_bytes / MIB:.0f} MiB, pinned {usage.pinned_bytes / MIB:.0f} MiB)"
    )
    print(
        f"collection: {whole * 1000:.1f} ms in {len(steps)} steps; removed "
        f"{done.removed_blocks} blocks, {done.removed_bytes / MIB:.0f} MiB"
    )
    mark_rate = pinned * size_mib / max(mark_s, 1e-9)
    sweep_rate = done.removed_bytes / MIB / max(sweep_s, 1e-9)
    print(
        f"mark: {mark_s * 1000:.1f} ms ({mark_rate:.0f} MiB pinned/s); "
        f"sweep: {sweep_s * 1000:.1f} ms ({sweep_rate:.0f} MiB/s)"
    )
    print(
        f"longest step: {longest * 1000:.2f} ms; baseline (all in one go): "
        f"{whole * 1000:.1f} ms; ratio {longest / whole:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pinned", type=int, default=64, help="pinned files (default 64)")
    parser.add_argument("--cached", type=int, default=64, help="cached files (default 64)")
    parser.add_argument("--size", type=int, default=4, help="MiB per file (default 4)")
    parser.add_argument("--quick", action="store_true", help="8 + 8 files of 1 MiB (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.pinned, args.cached, args.size = 8, 8, 1
    if args.pinned < 0 or args.cached < 1 or args.size < 1:
        parser.error("--cached and --size must be at least 1, --pinned at least 0")
    run(args.pinned, args.cached, args.size)


if __name__ == "__main__":
    main()
