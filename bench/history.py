"""What the unit's own history costs once it is full: a unit inspecting 10 parts a second reaches the default cap of a
million results in a day and a quarter, and prunes every metrics interval from then on, for months.

1. prune_ms: one prune at the cap (``max_rows`` results stored, one flush of new ones over it), median of 20.
2. add_result_max_ms: the longest the inference loop's ``add_result`` took while a flush and a prune ran beside it.
   It appends to a buffer under a lock of its own, so it should not wait for the database at all.
3. db_mb: what state.db (and its write-ahead log) takes on disk with the history at the cap: the disk to budget.

Run: ``.venv/bin/python -m bench.history [--rows 1000000]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from edge.history import History

MODEL = "mobilenetv2"  # a manifest's name, as the unit stores it per row
TIMINGS = {"capture": 1.2, "queue": 0.4, "preprocess": 0.3, "inference": 7.5, "postprocess": 0.1}


def fill(h: History, rows: int, start: float) -> None:
    for i in range(rows):
        h.add_result(f"bench-0000000000-{i:09d}", start + i * 1e-3, "good", 0.1, 0.9, False, MODEL, TIMINGS)
        if i % 50_000 == 49_999:
            h.flush()
    h.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        h = History(Path(tmp) / "state.db", max_rows=a.rows)
        fill(h, a.rows, time.time() - 86400)
        prunes, waits = [], []
        seq = 0

        def housekeeping(done: threading.Event) -> None:
            h.flush()
            t = time.perf_counter()
            h.prune()
            prunes.append((time.perf_counter() - t) * 1e3)
            done.set()

        for _ in range(20):
            busy = threading.Event()
            for _ in range(100):  # the results of one metrics interval
                seq += 1
                h.add_result(f"bench-0000000001-{seq:09d}", time.time(), "good", 0.1, 0.9, False, MODEL, TIMINGS)
            worker = threading.Thread(target=housekeeping, args=(busy,))
            worker.start()
            while not busy.is_set():  # the inference loop, meanwhile
                seq += 1
                t = time.perf_counter()
                h.add_result(f"bench-0000000001-{seq:09d}", time.time(), "good", 0.1, 0.9, False, MODEL, TIMINGS)
                waits.append((time.perf_counter() - t) * 1e3)
                time.sleep(0.001)
            worker.join()
        rows = h.count("results")
        h.close()
        db_mb = sum(f.stat().st_size for f in Path(tmp).glob("state.db*")) / 1e6
    prune_ms, wait_ms = statistics.median(prunes), max(waits)
    print(f"{rows:,} results kept (cap {a.rows:,}); prune at the cap {prune_ms:.2f} ms (median of 20); "
          f"add_result beside flush and prune: at most {wait_ms:.3f} ms over {len(waits)} calls; "
          f"state.db {db_mb:.1f} MB on disk")
    print(json.dumps({"rows": rows, "prune_ms": round(prune_ms, 3), "add_result_max_ms": round(wait_ms, 3),
                      "db_mb": round(db_mb, 1)}))


if __name__ == "__main__":
    main()
