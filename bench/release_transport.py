"""A release fetched through the broker against over HTTP, from one console process on one broker.

``mqtt_over_http_fetch``: seconds for a unit to fetch and verify (TUF) the committed MobileNetV2's release without its
``.h5`` (3.6 MB in 36 files) through the broker, piece by piece from the console (``edge/mqttfetch.py``,
``console/releasefeed.py``) ÷ the same over HTTP from the same console; the two alternate for ``--rounds`` rounds
and each median is taken. Each piece is a request and an answer, so anything that holds a small message back shows
at once: with Nagle's algorithm on the broker it was 2.74 s against 0.10 s (docs/benchmarks.md). Target <= 3.

Run: ``.venv/bin/python -m bench.release_transport``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from converter import release
from edge import config
from edge.mqttfetch import transport_for
from edge.releases import Releases
from harness.broker import Broker
from harness.console import ConsoleProc
from harness.releases import model_copy

MODEL = "mobilenetv2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        broker = Broker(tmp / "broker").start()
        repo = release.init(tmp / "repo", tmp / "keys")
        release.publish(repo, model_copy(tmp / "v1", "bench"), with_h5=False)
        console = ConsoleProc(tmp / "console", broker.port, releases_dir=repo.path).start()
        cfg = config.parse({"device": {"id": "bench1"}, "camera": {"source": "0"},
                            "mqtt": {"host": "127.0.0.1", "port": broker.port}}, check_files=False)
        seconds: dict[str, list[float]] = {"http": [], "mqtt": []}
        try:
            for r in range(a.rounds):
                for via, url in (("http", f"{console.url}/releases"), ("mqtt", "mqtt://defect-console")):
                    unit = Releases(url, repo.metadata / "1.root.json", tmp / f"{via}{r}",
                                    transport=transport_for(url, cfg))
                    t = time.perf_counter()
                    fetched = unit.fetch(MODEL)
                    seconds[via].append(time.perf_counter() - t)
                    print(f"round {r + 1} {via}: {seconds[via][-1]:.3f} s", flush=True)
            size = sum(p.stat().st_size for p in fetched.folder.rglob("*") if p.is_file())
        finally:
            console.kill()
            broker.stop()
    http, mqtt = (statistics.median(seconds[k]) for k in ("http", "mqtt"))
    print(f"release of {size / 1e6:.2f} MB in {len(fetched.files)} files, fetched and verified: HTTP {http:.3f} s, "
          f"MQTT {mqtt:.3f} s (medians of {a.rounds}); ratio {mqtt / http:.2f} (target <= 3)")
    print(json.dumps({"http_fetch_s": round(http, 4), "mqtt_fetch_s": round(mqtt, 4),
                      "mqtt_over_http_fetch": round(mqtt / http, 3)}))


if __name__ == "__main__":
    main()
