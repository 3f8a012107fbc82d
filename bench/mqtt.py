"""What MQTT costs the unit, measured as ratios within one run against a local Mosquitto.

1. fps_qos0_vs_engine / fps_qos1_vs_engine: frames per second of ``defect-edge run`` replaying casting JPEGs (results
   published at QoS 0, then at QoS 1 through the outbox) ÷ the engine's threaded pipeline alone on the same frames,
   same model and threads. Targets >= 0.95 at QoS 0, >= 0.9 at QoS 1. The engine and the two daemon runs take turns
   for ``--rounds`` rounds; each ratio divides a daemon run by its own round's engine, and the median is reported:
   on a shared machine the engine alone drifts by ±7 % between runs a minute apart.
2. outbox_drain_msgs_per_s: 10,000 alerts queued during an outage, drained to the broker once it is back.
3. daemon_rss_mb: the daemon process's peak resident memory (the largest of its runs). Target <= 100 MB. Beside it,
   daemon_anon_rss_mb: the peak of its anonymous part (heap, arenas, the model), which only the daemon can give
   back. The rest is the libraries' code mapped from files (OpenCV's alone is 57 MB of text), shared and
   reclaimable; how much of it the kernel keeps mapped varies with its page cache: the same code on the same machine
   read 125.8 MB and, two hours later, 100.4 MB, with the anonymous part 48.6 MB both times.
4. daemon_cpu_ms_per_frame, the headline: the daemon's own CPU per result outside ``invoke()`` (preprocessing,
   payloads, MQTT, the outbox, housekeeping), at QoS 1. Measured within one process and one run: a third daemon run
   per round with the model on one thread, so that ``invoke()`` runs on the inference thread alone. Each thread's CPU
   over the steady state is read from /proc per thread (the daemon gives its threads their names in the kernel), per
   result; the inference thread's less the wall time each result reports for ``invoke()``
   (``timings_ms.inference``). The capture thread is reported apart (``capture_cpu_ms_per_frame``): it decodes the
   replay's JPEGs, which a camera delivers as pixels. Target <= 0.25 ms. CPU time is what a Raspberry Pi pays, and
   the machine's other tenants disturb it less than wall time; an ``invoke()`` measured in another process and
   subtracted (this bench's earlier way) scattered by more than the figure itself, and is still printed, as
   ``cpu_ms_per_frame_vs_invoke_alone``. ``daemon_cpu_ms_per_frame_at_model_size``: the same run on the same
   photos written at the model's input size beforehand, as a camera that scales in its ISP delivers them: the
   unit's resize (about 0.09 ms of the headline for 300x300 photos) becomes a copy.
   ``engine_cpu_ms_per_frame``: the floor under the headline, measured the same way (the inference thread's CPU
   less ``invoke()``'s wall time, per result) on the engine's pipeline alone, in this process: capture and inference
   of the same 300x300 photos with the model on one thread, and nothing published, stored or kept. What the daemon
   spends beyond it is what reporting a result costs. On this machine the engine alone read 0.19-0.26 ms a result,
   against 0.11-0.12 for the same steps timed alone (``bench.result_costs``). In the loop every step runs right
   after an ``invoke()`` has streamed the model's weights through the core's caches, beside the capture thread:
   reading the output took 5.8 µs right after ``invoke()`` and 3.4 µs when read again at once, on one thread alone.

Run: ``.venv/bin/python -m bench.mqtt [--model mobilenetv2] [--frames 600]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core import manifest as mf
from core.classifier import Classifier
from core.images import encode_jpeg, read_rgb
from core.preprocess import Preprocessor
from edge import config as edge_config
from edge.mqtt.client import MqttLink
from edge.mqtt.outbox import Outbox
from edge.pipeline import Pipeline, Result
from edge.sources.base import Camera
from edge.sources.replay import FolderReplay
from harness import REPO
from harness.broker import Broker
from harness.daemon import write_toml
from harness.data import casting_sample, link_into


def engine_fps(folder: Path, manifest: Path) -> float:
    pipe = Pipeline(Camera(FolderReplay(folder)), Classifier(manifest), device_id="bench", queue_size=2,
                    drop_when_behind=False)
    n = 0
    first = last = 0.0

    def done(_: Result) -> None:
        nonlocal n, first, last
        n += 1
        last = time.perf_counter()
        first = first or last

    pipe.run(threading.Event(), done)
    return (n - 1) / (last - first)


def at_model_size(paths: list[Path], manifest: Path, folder: Path) -> Path:
    """``paths`` written to ``folder`` at the model's input size, resized as the unit resizes (JPEG quality 95): the
    frames of a camera that delivers that size itself (a Raspberry Pi camera's ISP scales for free), so the unit's
    own resize is a copy."""
    pre = Preprocessor(mf.load(manifest).input)
    folder.mkdir(parents=True)
    for p in paths:
        (folder / f"{p.stem}.jpg").write_bytes(encode_jpeg(pre.pixels(read_rgb(p)).copy(), "RGB", 95))
    return folder


def _epoch(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def engine_cpu_ms(folder: Path, manifest: Path, margin: int = 100) -> float:
    """The inference thread's CPU per result outside ``invoke()`` on the engine's pipeline alone (capture and
    inference, the model on one thread, results dropped): its CPU clock read in the result callback, from the
    ``margin``-th result to the ``margin``-th before the last, less the wall time those results report for
    ``invoke()``, as :func:`daemon_fps` measures the daemon's."""
    pipe = Pipeline(Camera(FolderReplay(folder)), Classifier(manifest, num_threads=1), device_id="bench",
                    queue_size=2, drop_when_behind=False)
    last = sum(1 for _ in folder.iterdir()) - margin
    if last <= margin:
        raise ValueError(f"{folder}: too few frames for a steady state between {margin} and {last}")
    inference: list[float] = []
    clock: dict[int, float] = {}

    def done(r: Result) -> None:
        inference.append(r.timings_ms["inference"])
        if len(inference) in (margin, last):
            clock[len(inference)] = time.thread_time()

    pipe.run(threading.Event(), done)
    if last not in clock:
        raise RuntimeError(f"{folder}: {len(inference)} results, fewer than the {last + margin} frames (unreadable?)")
    return (clock[last] - clock[margin]) * 1e3 / (last - margin) - sum(inference[margin:last]) / (last - margin)


def invoke_cpu_ms(folder: Path, manifest: Path, frames: int = 100) -> float:
    """CPU milliseconds one ``invoke()`` takes (all its threads: this process runs nothing else meanwhile)."""
    clf = Classifier(manifest)
    paths = sorted(folder.iterdir())[:frames]
    inputs = [clf.preprocess(read_rgb(p)) for p in paths]
    index = clf.interpreter.get_input_details()[0]["index"]

    def run(xs: list[np.ndarray]) -> None:
        for x in xs:
            clf.interpreter.set_tensor(index, x[None])
            clf.interpreter.invoke()

    run(inputs[:5])  # warm-up
    t = time.process_time()
    run(inputs)
    return (time.process_time() - t) * 1e3 / len(inputs)


def _cpu_s(pid: int) -> float:
    """A process's user + system CPU seconds so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread's kernel name (the daemon names its threads: ``edge.metrics.name_os_threads``) and CPU seconds."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that ended between list and read
            stat = (task / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            out[int(task.name)] = (stat[stat.index("(") + 1:stat.rindex(")")],
                                   (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def _per_thread_ms(samples: list[tuple[int, dict[int, tuple[str, float]]]], pid: int) -> dict[str, float]:
    """CPU ms per result of each thread over the steady state: from the first sample to the last one it was alive
    in (the capture thread ends with the replay), by name (the main thread is ``main``)."""
    n0, first = samples[0]
    n1 = samples[-1][0]
    spent: dict[str, float] = {}
    for tid, (_, c0) in first.items():
        alive = [(n, t[tid]) for n, t in samples if tid in t]
        name, c1 = alive[-1][1]
        key = "main" if tid == pid else name
        spent[key] = spent.get(key, 0.0) + (c1 - c0) * 1e3 / max(1, n1 - n0)
    return spent


def _memory_kb(pid: int) -> tuple[int, int]:
    """A process's peak resident memory so far (VmHWM) and its anonymous resident memory now (RssAnon), in kB; 0
    once it has exited (a zombie has no memory)."""
    with Path(f"/proc/{pid}/status").open() as f:
        fields = (line.split(":", 1) for line in f if line.startswith(("VmHWM:", "RssAnon:")))
        kb = {k: int(v.split()[0]) for k, v in fields}
    return kb.get("VmHWM", 0), kb.get("RssAnon", 0)


def _lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


def daemon_fps(work: Path, broker: Broker, folder: Path, models_dir: Path, model: str, qos: int,
               threads: int | None = None) -> tuple[float, float, float, float, dict[str, float]]:
    """(results per second as the subscriber received them, the daemon process's peak RSS in MB and the anonymous
    part's peak (its own heap and arenas, not the libraries' pages mapped from files), its CPU
    milliseconds per result in the steady state, and its threads' CPU per result outside ``invoke()`` but the
    capture thread's, by thread)."""
    work.mkdir(parents=True, exist_ok=True)
    # A C subscriber: a Python one would take CPU from the daemon on this 2-core machine and skew the ratio.
    out = work / "results.jsonl"
    with out.open("wb") as sink:
        listener = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-t", "bench/unit/result", "-q", "1",
                                     "-F", "%p"], stdout=sink)
    time.sleep(0.5)
    cfg = write_toml(work / "edge.toml", {
        "device": {"id": "unit"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "prefix": "bench", "result_qos": qos},
        "camera": {"source": str(folder)},
        "model": {"name": model, "models_dir": str(models_dir), **({"threads": threads} if threads else {})},
        "inference": {"queue_size": 2}, "metrics": {"interval_s": 1}, "state": {"dir": str(work / "state")},
        "alerts": {"snapshot": False}})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (work / "daemon.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg)], env=env,
                            stdout=log, stderr=log)  # the replay ends, and so does the daemon
    samples: list[tuple[int, float]] = []  # (results received, the daemon's CPU seconds), every 0.2 s
    per_thread: list[tuple[int, dict[int, tuple[str, float]]]] = []
    deadline = time.monotonic() + 900
    # The peak is read from the daemon's own /proc/PID/status. Not from getrusage(): a child spawned by this bench
    # shares the bench's memory until it execs, and its ru_maxrss counts the bench's peak (112 MB by then).
    peak_kb = anon_kb = 0
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError, IndexError, ValueError):  # it exited between poll() and the read
            received = _lines(out)
            samples.append((received, _cpu_s(proc.pid)))
            if received >= 5:
                per_thread.append((received, _threads_cpu_s(proc.pid)))
            peak, anon = _memory_kb(proc.pid)
            peak_kb, anon_kb = max(peak_kb, peak), max(anon_kb, anon)
        time.sleep(0.2)
    proc.wait(60)
    log.close()
    if proc.returncode:
        raise RuntimeError(f"the daemon exited {proc.returncode}: {(work / 'daemon.log').read_text()[-2000:]}")
    steady = [s for s in samples if s[0] >= 5]
    (n0, c0), (n1, c1) = steady[0], steady[-1]
    cpu_ms = (c1 - c0) * 1e3 / max(1, n1 - n0)
    time.sleep(1.0)
    listener.terminate()
    listener.wait(5)
    results = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    spent = _per_thread_ms(per_thread, proc.pid)
    p0, p1 = per_thread[0][0], per_thread[-1][0]
    spent["main"] -= sum(r["timings_ms"]["inference"] for r in results[p0:p1]) / max(1, p1 - p0)  # invoke()
    rss, anon_rss = peak_kb / 1024, anon_kb / 1024
    # Throughput between the first and last result's capture times: the daemon's rate, not its start-up.
    times = sorted(_epoch(r["ts"]) for r in results)
    return (len(times) - 1) / (times[-1] - times[0]), rss, anon_rss, cpu_ms, spent


def drain_rate(work: Path, broker: Broker, messages: int) -> float:
    cfg = edge_config.parse({"device": {"id": "drain"}, "camera": {"source": "0"},
                             "mqtt": {"host": "127.0.0.1", "port": broker.port, "prefix": "bench"},
                             "state": {"dir": str(work)}}, check_files=False)
    box = Outbox(work / "state.db", max_bytes=512 * 1024 * 1024)
    alert = json.dumps({"schema": 1, "device_id": "drain", "kind": "defect", "dedup_key": "x" * 40,
                        "p_defect": 0.93, "ts": "2026-11-26T00:00:00.000Z"}).encode()
    for _ in range(messages):
        box.put("bench/drain/alert", alert, kind="alert")
    link = MqttLink(cfg, box, on_command=lambda *_: None, status=lambda: b"{}")
    t = time.perf_counter()
    link.start()
    while box.depth()[0]:
        time.sleep(0.01)
    rate = messages / (time.perf_counter() - t)
    link.stop()
    box.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--models-dir", type=Path, default=REPO / "models")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--cpu-frames", type=int, default=3000,
                    help="photos of the run that measures the daemon's CPU per thread: /proc counts in 10 ms ticks, "
                         "and 600 frames at 440 fps gave each thread a handful of them")
    ap.add_argument("--outage-messages", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3,
                    help="engine, QoS 0 and QoS 1 runs in turn, this many times: the machine's load drifts between "
                         "runs, and a ratio of neighbours with the median of rounds is steadier than one pair")
    a = ap.parse_args()
    paths = casting_sample(a.frames)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        folder = link_into(paths, tmp / "frames")
        cpu_paths = casting_sample(a.cpu_frames)
        cpu_folder = link_into(cpu_paths, tmp / "cpu-frames")
        small_folder = at_model_size(cpu_paths, a.models_dir / f"{a.model}.json", tmp / "cpu-frames-small")
        broker = Broker(tmp / "broker").start()
        # engine, QoS 0, QoS 1 fps, RSS, the daemon's CPU ms per frame, invoke()'s alone, outside invoke() in-run,
        # anonymous RSS
        rounds: list[tuple[float, float, float, float, float, float, float, float]] = []
        capture: list[float] = []
        small: list[float] = []  # outside invoke(), frames at the model's size
        floor: list[float] = []  # outside invoke(), the engine alone

        def by_thread(work: Path, frames: Path) -> dict[str, float]:
            """The CPU run: QoS 1, the model on one thread; each thread's CPU per result outside invoke()."""
            return daemon_fps(work, broker, frames, a.models_dir, a.model, 1, threads=1)[-1]

        try:
            for r in range(a.rounds):
                engine = engine_fps(folder, a.models_dir / f"{a.model}.json")
                fps0, rss0, anon0, _, _ = daemon_fps(tmp / f"q0-{r}", broker, folder, a.models_dir, a.model, 0)
                # invoke()'s CPU beside the run it is subtracted from: with the machine busy, XNNPACK's threads spin
                # longer at each layer's barrier, and one figure for all rounds once gave a negative difference.
                invoke_ms = invoke_cpu_ms(folder, a.models_dir / f"{a.model}.json")
                fps1, rss1, anon1, cpu1, _ = daemon_fps(tmp / f"q1-{r}", broker, folder, a.models_dir, a.model, 1)
                spent = by_thread(tmp / f"q1t1-{r}", cpu_folder)
                capture.append(spent.pop("capture", 0.0))
                outside = sum(spent.values())
                small.append(sum(v for k, v in by_thread(tmp / f"q1t1s-{r}", small_folder).items() if k != "capture"))
                floor.append(engine_cpu_ms(cpu_folder, a.models_dir / f"{a.model}.json"))
                print("   CPU ms per result outside invoke(), by thread: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.001)
                    + f"; and the replay's decoding (capture) {capture[-1]:.3f}", flush=True)
                rounds.append((engine, fps0, fps1, max(rss0, rss1), cpu1, invoke_ms, outside, max(anon0, anon1)))
                print(f"round {r + 1}: engine {engine:.1f} fps, QoS 0 {fps0:.1f} ({fps0 / engine:.3f}), "
                      f"QoS 1 {fps1:.1f} ({fps1 / engine:.3f}); peak RSS {rss0:.1f} / {rss1:.1f} MB (anonymous "
                      f"{anon0:.1f} / {anon1:.1f}); "
                      f"outside invoke() {outside:.3f} ms per result ({small[-1]:.3f} with frames at the model's "
                      f"size; the engine alone {floor[-1]:.3f})", flush=True)
            drain = drain_rate(tmp / "drain", broker, a.outage_messages)
        finally:
            broker.stop()
    engine = statistics.median(r[0] for r in rounds)
    fps0, fps1, cpu1, invoke_ms = (statistics.median(r[i] for r in rounds) for i in (1, 2, 4, 5))
    vs_alone = statistics.median(r[4] - r[5] for r in rounds)
    outside = statistics.median(r[6] for r in rounds)
    rss, anon = max(r[3] for r in rounds), max(r[7] for r in rounds)
    result = {"fps_qos0_vs_engine": statistics.median(r[1] / r[0] for r in rounds),
              "fps_qos1_vs_engine": statistics.median(r[2] / r[0] for r in rounds),
              "outbox_drain_msgs_per_s": drain, "daemon_rss_mb": rss,
              "daemon_anon_rss_mb": anon,
              "daemon_cpu_ms_per_frame": outside, "daemon_cpu_ms_per_frame_at_model_size": statistics.median(small),
              "engine_cpu_ms_per_frame": statistics.median(floor),
              "invoke_cpu_ms_per_frame": invoke_ms,
              "cpu_ms_per_frame_vs_invoke_alone": vs_alone, "capture_cpu_ms_per_frame": statistics.median(capture)}
    print(f"model {a.model}, {len(paths)} casting JPEGs replayed unpaced, default threads; "
          f"medians of {a.rounds} rounds, each ratio within its round")
    print(f"{'measure':<44}{'value':>12}{'target':>10}")
    for name, value, target in (
        ("engine alone (threaded pipeline) fps", f"{engine:.1f}", ""),
        ("daemon fps, results at QoS 0", f"{fps0:.1f}", ""),
        ("daemon fps, results at QoS 1 (outbox)", f"{fps1:.1f}", ""),
        ("1a. QoS 0 / engine (median of rounds)", f"{result['fps_qos0_vs_engine']:.3f}", ">= 0.95"),
        ("1b. QoS 1 / engine (median of rounds)", f"{result['fps_qos1_vs_engine']:.3f}", ">= 0.9"),
        (f"2. outbox drain after {a.outage_messages} msgs (msg/s)", f"{drain:.0f}", ""),
        ("3. daemon peak RSS (MB)", f"{rss:.1f}", "<= 100"),
        ("   of it anonymous (MB)", f"{anon:.1f}", ""),
        ("   invoke() alone, CPU ms per frame", f"{invoke_ms:.2f}", ""),
        ("   daemon at QoS 1, CPU ms per frame", f"{cpu1:.2f}", ""),
        ("   the difference (two processes)", f"{vs_alone:.2f}", ""),
        ("4. daemon CPU ms per result outside invoke()", f"{outside:.3f}", "<= 0.25"),
        ("   the same, frames at the model's size", f"{result['daemon_cpu_ms_per_frame_at_model_size']:.3f}", ""),
        ("   the engine alone, nothing published", f"{result['engine_cpu_ms_per_frame']:.3f}", ""),
    ):
        print(f"{name:<44}{value:>12}{target:>10}")
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))


if __name__ == "__main__":
    main()
