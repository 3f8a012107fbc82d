"""Where a result's CPU goes outside ``invoke()``: each step of the daemon's per-result work, timed alone.

``bench.mqtt`` measures the whole (``daemon_cpu_ms_per_frame``, target <= 0.25 ms at QoS 1) by thread; this prints
the steps that sum to it, each on the product's own code, as CPU time of the thread doing it (best of ``--repeats``
passes over casting photos), so that a change to one step can be judged on its own:

- ``resize_ms``: the 300x300 photo to the model's 224x224, bilinear (:meth:`Preprocessor.pixels`);
- ``classify_outside_invoke_ms``: :meth:`Classifier.classify` less ``invoke()`` (preprocessing, decision, signature);
- ``message_ms``: the result's contract message built and serialised (``edge.messages.result``, ``payloads.dumps``);
- ``outbox_ms``: one QoS 1 result stored, read back and forgotten on its acknowledgement, in batches of 15 (what the
  link's thread does at 300 results a second with its 50 ms linger);
- ``link_qos1_ms``: the MQTT link's thread (:class:`edge.mqtt.client.MqttLink`) per QoS 1 result handed to it at
  300 a second, to a local Mosquitto and a subscriber: the outbox's part above, the packed publish and its PUBACK, the
  thread's waking and batching. Its CPU clock is read from the process (``pthread_getcpuclockid``), so the caller's
  pacing is not counted.

Run: ``.venv/bin/python -m bench.result_costs``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from contract import payloads
from core.classifier import Classifier
from core.images import read_rgb
from edge import config as edge_config
from edge import messages
from edge.mqtt.client import MqttLink
from edge.mqtt.outbox import Outbox, Outgoing
from harness import REPO
from harness.broker import Broker
from harness.data import casting_sample

BATCH = 15


def best_ms(clock: Callable[[], float], step: Callable[[], object], n: int, repeats: int) -> float:
    """The least CPU per call of ``step`` over ``repeats`` passes of ``n`` calls, in ms."""
    best = float("inf")
    for _ in range(repeats):
        t = clock()
        for _ in range(n):
            step()
        best = min(best, (clock() - t) * 1e3 / n)
    return best


def link_ms(broker: Broker, folder: Path, payload: bytes, n: int, rate: float) -> float:
    """CPU of the MQTT link's thread per QoS 1 result handed to it at ``rate`` a second: held, stored, read back,
    published, acknowledged and forgotten, with a C subscriber taking them (as the console does: a v5 broker
    acknowledges a message nobody takes with a reason code, the long way through paho)."""
    cfg = edge_config.parse({"device": {"id": "unit"}, "camera": {"source": "0"}, "state": {"dir": str(folder)},
                             "mqtt": {"host": "127.0.0.1", "port": broker.port, "prefix": "bench"}},
                            check_files=False)
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-t", "bench/unit/result", "-q", "1"],
                           stdout=subprocess.DEVNULL)
    box = Outbox(folder / "state.db", max_bytes=64 << 20)
    link = MqttLink(cfg, box, on_command=lambda *_: None, status=lambda: b"{}")
    link.start()
    try:
        deadline = time.monotonic() + 10
        while not link.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        clock = next(time.pthread_getcpuclockid(t.ident or 0) for t in threading.enumerate() if t.name == "mqtt-link")
        start, spent = time.perf_counter(), time.clock_gettime(clock)
        for i in range(n):
            link.publish("result", payload, qos=1, kind="result")
            time.sleep(max(0.0, start + (i + 1) / rate - time.perf_counter()))
        while box.depth()[0] and time.monotonic() < deadline + n / rate + 10:
            time.sleep(0.005)
        return (time.clock_gettime(clock) - spent) * 1e3 / n
    finally:
        link.stop()
        box.close()
        sub.terminate()
        sub.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--link-results", type=int, default=3000, help="results handed to the link per pass")
    ap.add_argument("--rate", type=float, default=300.0, help="results a second handed to the link")
    a = ap.parse_args()
    clf = Classifier(REPO / "models" / f"{a.model}.json", num_threads=1)
    frames = [read_rgb(p) for p in casting_sample(a.frames)]
    it = iter(range(1 << 62))

    def each(step: Callable[[object], object]) -> Callable[[], object]:
        return lambda: step(frames[next(it) % len(frames)])

    n = len(frames)
    resize = best_ms(time.thread_time, each(clf.preprocess.pixels), n, a.repeats)
    classify = best_ms(time.thread_time, each(clf.classify), n, a.repeats)
    invoke = best_ms(time.thread_time, clf.interpreter.invoke, n, a.repeats)
    p = clf.classify(frames[0])
    ref = payloads.ModelRef(name=clf.name, quantization=clf.manifest.quantization, sha256=clf.manifest.tflite.sha256)
    timings = {"capture": 0.5, "queue": 2.0, **p.timings_ms}

    def message() -> bytes:
        m = messages.result("unit", ts="2026-12-05T10:00:00.000Z", frame_id="unit-0000000001-000000001", p=p,
                            timings_ms=timings, part_id=None, model=ref, crop=None, ood_limit=clf.ood_threshold)
        return payloads.dumps(m)

    message_ms = best_ms(time.thread_time, message, 2000, a.repeats)
    payload = message()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        box = Outbox(tmp / "state.db", max_bytes=64 << 20)

        def batch() -> None:
            box.put_many([Outgoing("bench/unit/result", payload, kind="result") for _ in range(BATCH)])
            box.ack([m.id for m in box.pending(limit=BATCH)])

        outbox_ms = best_ms(time.thread_time, batch, 200, a.repeats) / BATCH
        box.close()
        broker = Broker(tmp / "broker").start()
        try:
            link = min(link_ms(broker, tmp / f"link{r}", payload, a.link_results, a.rate) for r in range(a.repeats))
        finally:
            broker.stop()
    result = {"resize_ms": resize, "classify_outside_invoke_ms": classify - invoke, "message_ms": message_ms,
              "outbox_ms": outbox_ms, "link_qos1_ms": link}
    print(f"model {a.model}, {n} casting photos, one thread; {len(payload)}-byte result messages; "
          f"CPU per result, best of {a.repeats}")
    for name, value in result.items():
        print(f"{name:<30}{value:>10.4f}")
    total = result["classify_outside_invoke_ms"] + message_ms + link
    print(f"{'sum of the steps':<30}{total:>10.4f}   (resize is inside classify, the outbox inside the link)")
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))


if __name__ == "__main__":
    main()
