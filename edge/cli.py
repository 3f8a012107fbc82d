"""``defect-edge``: the edge unit's command line.

``defect-edge classify PATH...`` classifies images, folders and videos with a converted model, the way the unit
does on the line, and prints a table (or JSON lines) and a summary. Exit status 0, or 2 when an input was bad (a
missing path, an unreadable image, an unknown or corrupt model); good inputs are still classified.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.payloads import HEATMAP_METHODS
from contract.settings import state_directory

EXIT_BAD_INPUT = 2
DEFAULT_MODEL = "mobilenetv2"


def default_models_dir() -> Path:
    return Path(os.environ.get("DEFECT_EDGE_MODELS", "models"))


def _cmd_classify(a: argparse.Namespace) -> int:
    from core.classifier import Classifier
    from core.images import IMAGE_SUFFIXES
    from core.models import manifest_path
    from edge.metrics import percentile
    from edge.pipeline import Pipeline, Result
    from edge.sources.base import Camera
    from edge.sources.replay import FolderReplay, VideoReplay

    bad: list[str] = []
    images: list[Path] = []
    videos: list[Path] = []
    for p in a.paths:
        if p.is_dir():
            images += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            (images if p.suffix.lower() in IMAGE_SUFFIXES else videos).append(p)
        else:
            bad.append(f"{p}: no such file or folder")
    sources = ([FolderReplay(images)] if images else []) + [VideoReplay(v, fps=0.0) for v in videos]
    clf_by_order: dict[str, Classifier] = {}
    mpath = manifest_path(a.models_dir, a.model)
    for order in {s.frame_order for s in sources} or {"RGB"}:
        clf_by_order[order] = Classifier(mpath, num_threads=a.threads, frame_order=order)
    clf = next(iter(clf_by_order.values()))
    m = clf.manifest
    print(f"model {m.name} ({m.quantization}, sha256 {m.tflite.sha256[:12]}) on {clf.runtime.name}, "
          f"{clf.threads} thread(s)", file=sys.stderr)
    # Only what the summary needs: a Result holds its frame, and a long run must not keep every frame alive.
    latency: list[float] = []
    counts = {"defective": 0, "low_confidence": 0}

    def show(r: Result) -> None:
        p = r.prediction
        latency.append(sum(p.timings_ms.values()))
        counts["defective"] += p.defective
        counts["low_confidence"] += p.low_confidence
        if a.json:
            crop = {"crop": [r.crop.x, r.crop.y, r.crop.width, r.crop.height]} if r.crop else {}
            print(json.dumps({"frame_id": r.frame_id, "origin": r.frame.origin, **p.as_dict(), **crop,
                              "timings_ms": {k: round(v, 3) for k, v in r.timings_ms.items()}}), flush=True)
        else:
            ms = sum(p.timings_ms.values())
            print(f"{r.frame.origin[-44:]:<44} {p.label:<10} {p.p_defect:>8.4f} {p.confidence:>6.3f} "
                  f"{'low' if p.low_confidence else '':<4} {ms:>7.2f}", flush=True)

    if not a.json:
        print(f"{'frame':<44} {'label':<10} {'p_defect':>8} {'conf':>6} {'':<4} {'ms':>7}")
    for src in sources:
        camera = Camera(src, stall_timeout=60.0)
        if camera.frame_order not in clf_by_order:
            continue
        Pipeline(camera, clf_by_order[camera.frame_order], device_id="cli", queue_size=2,
                 drop_when_behind=False, locate=a.locate).run(threading.Event(), show)
        bad += getattr(src, "skipped", [])
        if camera.stats.last_error:
            bad.append(camera.stats.last_error)
    for line in bad:
        print(f"defect-edge: skipped: {line}", file=sys.stderr)
    frames, defects = len(latency), counts["defective"]
    summary: dict[str, Any] = {
        "frames": frames, "defective": defects, "good": frames - defects,
        "low_confidence": counts["low_confidence"], "skipped": len(bad),
        "defect_rate": round(defects / frames, 4) if frames else 0.0,
        "latency_ms_p50": round(percentile(latency, 50), 3), "latency_ms_p95": round(percentile(latency, 95), 3),
        "model": m.name, "quantization": m.quantization,
    }
    if a.json:
        print(json.dumps({"summary": summary}))
    else:
        print(f"\n{summary['frames']} frames: {defects} defective, {summary['good']} good "
              f"(defect rate {summary['defect_rate']:.1%}), {summary['low_confidence']} low confidence, "
              f"{len(bad)} skipped; latency p50 {summary['latency_ms_p50']:.2f} ms, "
              f"p95 {summary['latency_ms_p95']:.2f} ms (preprocess + inference + postprocess)")
    return EXIT_BAD_INPUT if bad or not frames else 0


def _cmd_gradcam(a: argparse.Namespace) -> int:
    """One-off heatmap in this process (imports TensorFlow: for a workstation or a unit with the gradcam extra)."""
    import time

    import cv2

    from core.images import read_rgb
    from core.models import manifest_path
    from edge.gradcam.overlay import blend, encode, full_frame_heatmap
    from edge.gradcam.worker import setup

    frame = read_rgb(a.image)
    path = manifest_path(a.models_dir, a.model)
    t = time.perf_counter()
    cam, pre = setup(path, None, a.threads, a.layer)
    loaded = time.perf_counter() - t
    t = time.perf_counter()
    heat = cam(pre["RGB"](frame), a.method)
    compute = time.perf_counter() - t
    image = blend(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), full_frame_heatmap(heat.cam, frame.shape[:2], None),
                  alpha=a.alpha)
    a.out.write_bytes(encode(image, a.out.suffix.lower() if a.out.suffix.lower() in (".png", ".jpg") else ".png"))
    print(f"wrote {a.out}: {heat.method} on {'+'.join(heat.layers)}, p_defect (Keras) {heat.p_defect:.4f}; "
          f"model loaded in {loaded:.1f} s, heatmap in {compute * 1e3:.0f} ms")
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from edge.daemon import run

    return run(a.config)


def _cmd_check_config(a: argparse.Namespace) -> int:
    """Exit 2 for a bad configuration or model (as `run` would), 1 when the camera gives no frame, else 0."""
    from core.classifier import Classifier
    from core.models import manifest_path
    from core.preprocess import FrameError
    from edge import config
    from edge.sources import EndOfStream, SourceError, first_frame

    cfg = config.load(a.config)
    src = cfg.camera.frame_source()
    clf = Classifier(manifest_path(cfg.model.models_dir, cfg.model.name), num_threads=cfg.model.threads,
                     delegate=cfg.model.delegate, roi=cfg.camera.region(), frame_order=src.frame_order)
    from core.verify import verify

    report = verify(clf)
    print(report.line())
    if not report.ok:
        return EXIT_BAD_INPUT
    print(f"{a.config}: OK: device {cfg.device.id}, base topic {cfg.base_topic}, broker {cfg.mqtt.host}:"
          f"{cfg.mqtt.port} (MQTT {cfg.mqtt.protocol}{', TLS' if cfg.mqtt.tls else ''}), model {clf.name} "
          f"({clf.manifest.quantization}) on {clf.runtime.name}, camera {src.description}")
    for warning in cfg.warnings():
        print(f"warning: {warning}")
    if cfg.parts.presence:
        from edge.parts import PartSettings

        presence = PartSettings.from_config(cfg.parts, cfg.camera.region(), cfg.state.dir).presence
        if presence is not None and (problem := presence.margin_problem()):
            print(f"warning: presence (from the parts the unit has seen): {problem}")
    if a.no_camera:
        return 0
    t0 = time.perf_counter()
    try:
        image = first_frame(src, cfg.camera.stall_timeout_s)
        took = time.perf_counter() - t0
        p = clf.classify(image)
    except EndOfStream:
        print(f"camera {src.description}: nothing to replay", file=sys.stderr)
        return 1
    except (SourceError, FrameError, OSError) as e:
        print(f"camera: {e}; if a running unit holds it, --no-camera skips this check", file=sys.stderr)
        return 1
    h, w = image.shape[:2]
    print(f"camera {src.description}: a {w}x{h} frame in {took:.1f} s, called {p.label} "
          f"(p_defect {p.p_defect:.3f}) in {sum(p.timings_ms.values()):.1f} ms")
    return 0


def _cmd_check_framing(a: argparse.Namespace) -> int:
    """Exit 2 for a bad configuration or model, 1 when parts are framed unlike the training photos, else 0."""
    from edge import config
    from edge.framecheck import check

    checked = check(config.load(a.config), a.out, parts=a.parts, source=a.source, timeout_s=a.timeout)
    print("\n".join(checked.lines))
    return 1 if checked.problems else 0


def _cmd_verify_model(a: argparse.Namespace) -> int:
    """Exit 0 when the model reproduces its verification set on this unit, 1 when it does not."""
    from core.classifier import Classifier
    from core.models import manifest_path
    from core.verify import verify

    report = verify(Classifier(manifest_path(a.models_dir, a.model), num_threads=a.threads, delegate=a.delegate))
    print(report.line())
    return 0 if report.ok else 1


def _cmd_models_update(a: argparse.Namespace) -> int:
    """Exit 0 when the release is installed and proven here, 2 (one line, the models folder as it was) when not."""
    from core import manifest as mf
    from edge.releases import HttpTransport, Releases, Transport
    from edge.variants import load_table

    transport: Transport | None = HttpTransport(a.timeout_s)
    if a.repo.startswith("mqtt://"):  # through the broker, connecting as the unit does
        from edge import config
        from edge.mqttfetch import transport_for

        transport = transport_for(a.repo, config.load(a.config, check_files=False), timeout_s=a.timeout_s)
    releases = Releases(a.repo, a.root, a.state, keep=a.keep, transport=transport)
    if a.models_command == "rollback":
        fetched, report = releases.rollback(a.name, a.models_dir, threads=a.threads,
                                            memory_budget_mb=a.memory_budget_mb)
        print(f"{a.name}: rolled back to release {fetched.version} (kept here); {report.line()}")
    else:
        fetched, report = releases.install(a.name, a.models_dir, a.version, threads=a.threads,
                                           memory_budget_mb=a.memory_budget_mb)
        got = f"{fetched.downloaded_bytes / 1e6:.1f} MB downloaded" + (
            f", {fetched.resumed_bytes / 1e6:.1f} MB resumed" if fetched.resumed_bytes else "")
        print(f"{a.name}: release {fetched.version} verified ({len(fetched.files)} files, {got}) and installed; "
              f"kept: {', '.join(map(str, releases.kept(a.name)))}; {report.line()}")
    _print_variants(load_table(a.models_dir, a.name, mf.load(a.models_dir / f"{a.name}.json").tflite.sha256))
    return 0


def _cmd_models_add(a: argparse.Namespace) -> int:
    """Exit 0 when the model is installed and proven here, 2 (one line, nothing installed) when it is not."""
    from core import manifest as mf
    from edge.modelstore import add
    from edge.variants import load_table

    report = add(a.source, a.models_dir, num_threads=a.threads, min_agreement=a.min_agreement,
                 memory_budget_mb=a.memory_budget_mb)
    print(report.line())
    name = a.source.with_suffix("").name
    _print_variants(load_table(a.models_dir, name, mf.load(a.models_dir / f"{name}.json").tflite.sha256))
    print(f"installed {name} into {a.models_dir}")
    return 0


MEMORY_BUDGET_HELP = ("a model converted with variants: the most the one chosen may add to the unit's memory, in MB "
                      "(as model.memory_budget_mb; default no bound)")


def _print_variants(rows: list[dict[str, Any]] | None) -> None:
    """The variants timed here, as a table: the one installed first."""
    for r in sorted(rows or [], key=lambda r: not r["chosen"]):
        figures = (f"{r['latency_ms']:.2f} ms" if r["latency_ms"] is not None else "not timed") + (
            f", {r['memory_mb']:.0f} MB" if r["memory_mb"] is not None else "")
        print(f"  {'*' if r['chosen'] else ' '} {r['quantization']:<8} {figures:<22} "
              f"{r['reason'] if r['verified'] else 'refused: ' + r['verify']}")


def _cmd_export_feedback(a: argparse.Namespace) -> int:
    from edge import config
    from edge.history import History, export_feedback

    cfg = config.load(a.config, check_files=False)
    db = cfg.state.dir / "state.db"
    if not db.is_file():
        print(f"defect-edge: error: no unit database at {db}", file=sys.stderr)
        return EXIT_BAD_INPUT
    history = History(db)
    try:
        counts = export_feedback(history, a.out)
    finally:
        history.close()
    print(f"wrote {counts['good']} good and {counts['defect']} defect frames to {a.out} (train with "
          f"defect-convert train {a.out} --arch ...)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="defect-edge", description="Defect inspection on the edge unit.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("classify", help="classify images, folders or videos and print the results")
    c.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    c.add_argument("--model", default=DEFAULT_MODEL, help=f"model name in the models folder (default {DEFAULT_MODEL})")
    c.add_argument("--models-dir", type=Path, default=default_models_dir(),
                   help="folder of .tflite models with manifests (default $DEFECT_EDGE_MODELS or ./models)")
    c.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    c.add_argument("--json", action="store_true", help="one JSON object per frame, then a summary object")
    c.add_argument("--locate", action="store_true", help="find the part in each image and crop it as the unit does "
                   "at the line (whole frames from the line's camera; docs/framing.md)")
    c.set_defaults(func=_cmd_classify)

    g = sub.add_parser("gradcam", help="write a Grad-CAM overlay of one image (needs TensorFlow)")
    g.add_argument("image", type=Path)
    g.add_argument("--model", default=DEFAULT_MODEL)
    g.add_argument("--models-dir", type=Path, default=default_models_dir())
    g.add_argument("--method", choices=HEATMAP_METHODS, default="auto",
                   help="auto (default): the one the converter chose for this model by measurement")
    g.add_argument("--layer", action="append", default=[],
                   help="a layer instead of the model's (repeat to fuse several), e.g. Conv_1, the original app's")
    g.add_argument("--alpha", type=float, default=0.45, help="heatmap weight in the overlay (default 0.45)")
    g.add_argument("--threads", type=int, default=2, help="TensorFlow threads (default 2)")
    g.add_argument("-o", "--out", type=Path, default=Path("gradcam.png"))
    g.set_defaults(func=_cmd_gradcam)

    r = sub.add_parser("run", help="run the unit: camera -> model -> MQTT (as systemd runs it)")
    r.add_argument("--config", type=Path, default=Path("/etc/defect-edge/edge.toml"))
    r.set_defaults(func=_cmd_run)
    k = sub.add_parser("check-config", help="validate edge.toml, load the model, read and classify one frame")
    k.add_argument("--config", type=Path, default=Path("/etc/defect-edge/edge.toml"))
    k.add_argument("--no-camera", action="store_true", help="do not open the camera (a running unit holds it)")
    k.set_defaults(func=_cmd_check_config)
    f = sub.add_parser("check-framing", help="watch the next parts pass and show what the model sees of them, "
                       "against how its training photos framed theirs (docs/framing.md)")
    f.add_argument("--config", type=Path, default=Path("/etc/defect-edge/edge.toml"))
    f.add_argument("--source", help="a recording of the line (video or folder) instead of the configured camera")
    f.add_argument("--parts", type=int, default=10, help="parts to watch (default 10)")
    f.add_argument("--out", type=Path, default=Path("framing-check"), help="where the crops and report go")
    f.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for them (default 120)")
    f.set_defaults(func=_cmd_check_framing)

    v = sub.add_parser("verify-model", help="re-prove a model's parity with Keras on this unit's runtime and CPU")
    v.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    v.add_argument("--models-dir", type=Path, default=default_models_dir())
    v.add_argument("--threads", type=int, default=None, help="inference threads, as the unit runs it")
    v.add_argument("--delegate", default=None, help="e.g. libedgetpu.so.1, as the unit runs it")
    v.set_defaults(func=_cmd_verify_model)
    ma = sub.add_parser("models", help="the unit's models folder").add_subparsers(dest="models_command",
                                                                                required=True)
    add = ma.add_parser("add", help="install DIR/NAME (every file the manifest names), proven on this unit first")
    add.add_argument("source", type=Path, help="DIR/NAME: the converted model, as defect-convert wrote it")
    add.add_argument("--models-dir", type=Path, default=default_models_dir())
    add.add_argument("--threads", type=int, default=None, help="inference threads for the proof")
    add.add_argument("--min-agreement", type=float, default=0.99,
                     help="refuse a model whose recorded agreement with Keras is lower (as model.min_agreement)")
    add.add_argument("--memory-budget-mb", type=float, default=0.0, help=MEMORY_BUDGET_HELP)
    add.set_defaults(func=_cmd_models_add)
    for verb, text in (("update", "fetch a model's release from the console's repository, verify it (TUF) and "
                                  "install it, proven on this unit first"),
                       ("rollback", "install the release kept here before the installed one (no network needed)")):
        u = ma.add_parser(verb, help=text)
        u.add_argument("name", help="the model's name")
        if verb == "update":
            u.add_argument("--version", type=int, default=None, help="this release (default: the newest)")
        u.add_argument("--repo", default="http://localhost:8080/releases", help="the repository's URL (the "
                       "console's /releases), or mqtt://<the console's MQTT prefix> through the broker")
        u.add_argument("--config", type=Path, default=Path("/etc/defect-edge/edge.toml"),
                       help="the unit's configuration: how it reaches the broker, for an mqtt:// repository")
        u.add_argument("--timeout-s", type=float, default=30.0,
                       help="how long to wait for the repository's next answer (default 30)")
        u.add_argument("--root", type=Path, default=Path("/etc/defect-edge/release-root.json"),
                       help="the repository's root metadata, trusted as given when the unit was installed")
        u.add_argument("--state", type=Path, default=state_directory(Path("/var/lib/defect-edge")) / "releases",
                       help="where fetched releases, partial downloads and trusted metadata are kept")
        u.add_argument("--keep", type=int, default=3, help="releases kept for a rollback (default 3)")
        u.add_argument("--memory-budget-mb", type=float, default=0.0, help=MEMORY_BUDGET_HELP)
        u.add_argument("--models-dir", type=Path, default=default_models_dir())
        u.add_argument("--threads", type=int, default=None, help="inference threads for the proof")
        u.set_defaults(func=_cmd_models_update)
    e = sub.add_parser("export-feedback", help="write operator-corrected frames as good/ and defect/ for retraining")
    e.add_argument("out", type=Path)
    e.add_argument("--config", type=Path, default=Path("/etc/defect-edge/edge.toml"))
    e.set_defaults(func=_cmd_export_feedback)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.command == "run" else logging.WARNING,
                        format="defect-edge: %(levelname)s %(name)s: %(message)s" if args.command == "run"
                        else "defect-edge: %(message)s")
    from edge.errors import USER_ERRORS

    try:
        return int(args.func(args))
    except USER_ERRORS as e:
        print(f"defect-edge: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
