"""``defect-convert``: make synthetic data, train a reference model, convert a Keras model to TFLite with parity proof.

Every failure a user can cause (a missing file, a file that is not a Keras model, an unsupported model, an empty
folder, an unwritable output) ends with one line on stderr and exit status 2; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from contract.payloads import CAM_METHODS
from converter import report, synth
from converter.architectures import ARCHITECTURES
from converter.dataset import CLASS_DIRS
from converter.errors import UserError

EXIT_BAD_INPUT = 2
EXIT_PARITY = 3
# Evaluation images by default: at the 0.99 agreement floor a conversion may change 3 calls of them. Each costs a
# Keras pass per pixel scaling read and a TFLite pass per variant: 400 took 4.5 minutes on 2 cores.
EVAL_LIMIT = 300


def _writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and prove it is writable before any slow work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot create output folder: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{path}: output folder is not writable")
    return path


def _cmd_synth(a: argparse.Namespace) -> int:
    out = _writable_dir(a.out)
    if a.video:
        truth = synth.write_video(out / a.video, parts=a.count, seed=a.seed, size=a.size, fps=a.fps)
        print(f"wrote {out / a.video}: {len(truth)} parts, {sum(1 for t in truth if t['defect'])} defective")
    else:
        counts = synth.write_dataset(out, count=a.count, seed=a.seed, size=a.size, defect_rate=a.defect_rate)
        print(f"wrote {out}: {counts['good']} good, {counts['defect']} defect (masks in {out / 'masks'})")
    return 0


def _cmd_retrain(a: argparse.Namespace) -> int:
    from converter.retrain import RetrainSettings, retrain

    if not a.init_from.is_file():
        raise UserError(f"{a.init_from}: no such model file")
    out = a.out or a.init_from.with_name(f"{a.init_from.stem}.retrained.h5")
    _writable_dir(out.parent)
    try:
        r = retrain(a.data, a.init_from, out, RetrainSettings(
            epochs=a.epochs, batch_size=a.batch_size, learning_rate=a.learning_rate or 1e-4,
            patience=a.patience, val_split=a.val_split, seed=a.seed, limit=a.limit))
    except ValueError as e:
        raise UserError(str(e)) from None
    o, n = r["eval"]["old"], r["eval"]["new"]
    print(f"saved {out}: {r['verdict'].upper()} than {a.init_from.name} on the {r['images']['eval']} newest "
          f"reviewed items: accuracy {o['accuracy']:.4f} -> {n['accuracy']:.4f}, defect recall "
          f"{o['recall_defect']:.4f} -> {n['recall_defect']:.4f}, false rejects {o['false_reject']:.4f} -> "
          f"{n['false_reject']:.4f}; their calls differ on {len(r['differ'])} (report: "
          f"{out.with_suffix('')}.retrain.md)")
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    if a.init_from is not None:
        return _cmd_retrain(a)
    if a.arch is None:
        raise UserError("give --arch to train a reference architecture, or --init-from NAME.h5 to fine-tune yours")
    from converter.dataset import open_folder
    from converter.train import TrainSettings, train

    out = a.out or Path("models") / f"{a.arch}.h5"
    if a.weights and a.arch == "cnn":
        raise UserError("the custom CNN has no pretrained backbone; --weights applies to mobilenetv2 and "
                        "efficientnetb0")
    if a.weights and not a.weights.is_file():
        raise UserError(f"{a.weights}: weights file not found")
    _writable_dir(out.parent)
    folder = open_folder(a.data)
    settings = TrainSettings(arch=a.arch, epochs=a.epochs, batch_size=a.batch_size, val_split=a.val_split,
                             learning_rate=a.learning_rate or 1e-3, patience=a.patience, seed=a.seed, limit=a.limit,
                             weights=a.weights)
    r = train(folder, out, settings)
    v = r["validation"]
    print(f"saved {out}: validation accuracy {v['accuracy']:.4f}, precision {v['precision_defect']:.4f}, "
          f"recall {v['recall_defect']:.4f}, ROC AUC {v['roc_auc']:.4f} ({r['epochs_run']} epochs)")
    for line in folder.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    return 0


def _stem(model: Path) -> str:
    """The model's name: the file's stem, or a SavedModel folder's own name."""
    resolved = model.resolve()
    return resolved.parent.name if resolved.name == "saved_model.pb" else resolved.stem if resolved.is_file() \
        else resolved.name


def _input_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 224x224") from None
    if not (8 <= w <= 4096 and 8 <= h <= 4096):
        raise argparse.ArgumentTypeError(f"{text}: each side must be 8 to 4096 pixels")
    return w, h


def _defect_class(given: str | None, class_names: str | None, eval_folder: Path | None) -> int | None:
    """``--defect-class`` as the output class index: 0 or 1, or a class folder's name.

    A name is looked up in the training's class order: ``--class-names``, else the evaluation folder's class folders
    sorted by name, which is the order Keras' ``flow_from_directory`` and ``image_dataset_from_directory`` give them.
    """
    if given is None:
        return None
    if given in ("0", "1"):
        return int(given)
    if class_names:
        names = [n.strip() for n in class_names.split(",")]
        origin = "--class-names"
    elif eval_folder is not None and eval_folder.is_dir():
        names = sorted(p.name for p in eval_folder.iterdir() if p.is_dir() and p.name in
                       {n for group in CLASS_DIRS.values() for n in group})
        origin = f"the class folders of {eval_folder}, sorted by name as Keras orders them"
    else:
        raise UserError(f"--defect-class {given}: a class name needs --class-names A,B (the training's class order) "
                        "or --eval with the class folders")
    if len(names) != 2 or given not in names:
        raise UserError(f"--defect-class {given}: not one of the two classes {names} ({origin})")
    return names.index(given)


def _cmd_convert(a: argparse.Namespace) -> int:
    from converter.export import ConvertSettings, convert_model

    if not a.model.exists():
        raise UserError(f"{a.model}: file not found")
    out_dir = _writable_dir(a.out_dir or a.model.parent)
    settings = ConvertSettings(
        quantize=a.quantize, name=a.name or _stem(a.model), calibration=a.calibration,
        calibration_count=a.calibration_count,
        eval_folder=a.eval, eval_limit=a.eval_limit or None, min_agreement=a.min_agreement, int8_io=a.int8_io,
        variants=a.variants,
        gradcam_layer=a.gradcam_layer, gradcam_method=a.gradcam_method, pixel_scaling=a.pixel_scaling,
        color_order=a.color_order,
        defect_class=_defect_class(a.defect_class, a.class_names, a.eval), input_size=a.input_size,
        force=a.force, seed=a.seed)
    result = convert_model(a.model, out_dir, settings)
    for line in result.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    for c in result.report["candidates"]:
        figures = f"agreement {c['agreement']:.4f}, max |dp| {c['max_abs_dp']:.4f}, " \
                  f"{c['size_bytes'] / 1e6:.2f} MB, {c['latency_ms_tflite']:.2f} ms" if "agreement" in c else ""
        print(f"{report.variant(c):>8}: {c['verdict']:<9} {figures} {c.get('reason', '')}".rstrip())
    if result.chosen is None:
        print(f"defect-convert: no quantization met parity {a.min_agreement}; report in {result.report_path}",
              file=sys.stderr)
        return EXIT_PARITY
    print(f"wrote {result.tflite_path} and {result.manifest_path} ({result.chosen}); report {result.report_path}")
    return 0


def _cmd_framing(a: argparse.Namespace) -> int:
    """Measure how ``--images`` frame their part and record it in the manifest: for a model converted before
    framing was measured, or to measure it on the training photos rather than the evaluation ones."""
    from converter.dataset import open_folder
    from core import framing
    from core import manifest as mf

    try:
        m = mf.load(a.manifest)
    except mf.ManifestError as e:
        raise UserError(str(e)) from None
    folder = open_folder(a.images).sample(a.limit, a.seed)
    spec = framing.measure([f for _, _, f in folder.frames()], measured_on=str(a.images))
    mf.write_atomic(a.manifest, m.model_copy(update={"framing": spec}).to_json().encode())
    s = spec.span
    print(f"{a.manifest}: parts span {s.median:.2f} of the image ({s.p5:.2f}-{s.p95:.2f}), cover "
          f"{spec.area.median:.2f} of it, {spec.offset.median:.2f} off centre, on grey {spec.background.median:.0f}; "
          f"found in {spec.located:.0%} of {spec.images} images of {a.images}")
    return 0


def _cmd_release(a: argparse.Namespace) -> int:
    """Exit 0 when the repository changed as asked, 2 (one line, nothing half-written) when not."""
    from converter import release

    try:
        if a.release_command == "init":
            repo = release.init(a.repo, a.keys, root_keys=a.root_keys, threshold=a.threshold)
            print(f"{repo.path}: a new release repository; its keys are in {a.keys} (mode 600). Give each unit "
                  f"{repo.metadata / 'root.json'} as /etc/defect-edge/release-root.json, then move the root keys "
                  f"({', '.join(p.name for p in sorted(a.keys.glob('root-*.pem')))}) offline (docs/releases.md)")
            return 0
        repo = release.Repo(a.repo, a.keys)
        if a.release_command == "publish":
            p = release.publish(repo, a.model, version=a.version, with_h5=not a.no_h5)
            print(f"{p.name} release {p.version}: {len(p.files)} files, {p.size_bytes / 1e6:.1f} MB, signed; units "
                  f"take it with: defect-edge models update {p.name}")
        elif a.release_command == "refresh":
            print(f"{repo.path}: timestamp signed, valid until {release.refresh(repo, days=a.days):%Y-%m-%d %H:%M} UTC")
        else:
            keyid = release.rotate(repo, a.role)
            print(f"{repo.path}: the {a.role} role's key is now {keyid[:8]} (root version "
                  f"{repo.root().version}); units follow on their next update")
    except release.ReleaseError as e:
        print(f"defect-convert: error: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="defect-convert", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic parts (good/, defect/, masks/) or a conveyor video")
    s.add_argument("out", type=Path)
    s.add_argument("--count", type=int, default=200, help="parts to write (default 200)")
    s.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--defect-rate", type=float, default=0.5)
    s.add_argument("--video", metavar="NAME.avi", help="write a conveyor video of --count parts instead")
    s.add_argument("--fps", type=float, default=15.0)
    s.set_defaults(func=_cmd_synth)

    t = sub.add_parser("train", help="train a reference architecture on a folder with good/ and defect/")
    t.add_argument("data", type=Path, help="folder with good/ and defect/ subfolders")
    t.add_argument("--arch", choices=sorted(ARCHITECTURES), help="a reference architecture to train from scratch")
    t.add_argument("--init-from", type=Path, metavar="NAME.h5",
                   help="fine-tune this model instead (its architecture, input convention, output and Grad-CAM layer "
                   "kept) on DATA, the console's export: trained on DATA/train, judged against it on DATA/eval")
    t.add_argument("--out", type=Path, help="output .h5 (default models/ARCH.h5)")
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--val-split", type=float, default=0.2)
    t.add_argument("--learning-rate", type=float, default=None, help="default 1e-3; 1e-4 with --init-from")
    t.add_argument("--patience", type=int, default=4, help="early stopping patience in epochs")
    t.add_argument("--limit", type=int, help="use at most this many images (both classes, evenly)")
    t.add_argument("--weights", type=Path, help="local ImageNet no-top weights file for the backbone")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_train)

    c = sub.add_parser("convert", help="convert a Keras model to TFLite with a manifest and a parity report")
    c.add_argument("model", type=Path, help="Keras .h5 (Keras 2 or 3), .keras, or a SavedModel folder")
    c.add_argument("--quantize", choices=("auto", "int8", "mixed", "dynamic", "float16", "float32"), default="auto",
                   help="auto tries int8, dynamic, float16 and float32 (and mixed when int8 misses parity: int8 with "
                   "its worst-quantized layers in float) and keeps the fastest that meets parity")
    c.add_argument("--calibration", type=Path, help="folder of representative images for int8 "
                   "(default: synthetic parts)")
    c.add_argument("--calibration-count", type=int, default=200)
    c.add_argument("--eval", type=Path, help="labelled folder (good/, defect/) for the parity proof "
                   "(default: held-out synthetic parts)")
    c.add_argument("--eval-limit", type=int, default=EVAL_LIMIT,
                   help=f"evaluate on at most this many images, drawn evenly from both classes (default {EVAL_LIMIT}; "
                   "0: all of them)")
    c.add_argument("--min-agreement", type=float, default=0.99)
    c.add_argument("--int8-io", choices=("uint8", "int8"), default="uint8", help="int8 models' input/output type")
    c.add_argument("--variants", choices=("all", "chosen"), default="all",
                   help="with --quantize auto: write every variant that met parity beside the chosen one "
                   "(NAME~QUANTIZATION.*), for units to time on their own hardware and run the fastest (all), or "
                   "only the one chosen here (chosen)")
    c.add_argument("--gradcam-layer", help="layer for heatmaps (default: chosen by deletion faithfulness on the "
                   "evaluation images, among where each stage of the network ends)")
    c.add_argument("--gradcam-method", choices=CAM_METHODS, help="heatmap method (default: chosen with the layer)")
    c.add_argument("--pixel-scaling", choices=("unit", "raw", "symmetric"),
                   help="what the model was trained on: unit = pixels/255, raw = 0-255, symmetric = pixels/127.5-1 "
                        "(keras.applications' preprocess_input for MobileNet); default: detected from --eval, else "
                        "unit")
    c.add_argument("--defect-class", metavar="INDEX|NAME",
                   help="the output class that means defective: 1 (default) or 0 for a sigmoid trained with "
                        "defective as class 0, a softmax's column, or a class folder name (see --class-names); "
                        "default: detected from --eval, else 1")
    c.add_argument("--class-names", metavar="A,B", help="the training's class names in index order, for a "
                   "--defect-class NAME (default: --eval's class folders sorted by name, as Keras orders them)")
    c.add_argument("--color-order", choices=("RGB", "BGR"), help="channel order the model was trained on "
                   "(default RGB; BGR for models trained on OpenCV's cv2.imread)")
    c.add_argument("--input-size", type=_input_size, metavar="WxH",
                   help="the size to run a variable-size model at (the size it was trained at)")
    c.add_argument("--force", action="store_true", help="write a model even when it is below chance on its "
                   "own evaluation set")
    c.add_argument("--name", help="model name (default: the .h5 file's stem)")
    c.add_argument("--out-dir", type=Path, help="where to write (default: beside the .h5)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_cmd_convert)

    f = sub.add_parser("framing", help="measure how training photos frame their part and record it in a manifest "
                       "(the unit crops parts to match, and warns when its own crops differ)")
    f.add_argument("manifest", type=Path, help="the model's NAME.json")
    f.add_argument("--images", type=Path, required=True, help="labelled folder (good/, defect/) of training photos")
    f.add_argument("--limit", type=int, default=200, help="measure on at most this many images (default 200)")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_cmd_framing)
    r = sub.add_parser("release", help="signed model releases for the fleet (a TUF repository the console serves)"
                       ).add_subparsers(dest="release_command", required=True)
    for verb, text in (("init", "a new repository, with fresh keys for its roles"),
                       ("publish", "a converted model (DIR/NAME) as its next release"),
                       ("refresh", "re-sign the timestamp (and snapshot) before it expires: units refuse a stale one"),
                       ("rotate", "a new key for a role; the root names it, signed by the old root keys")):
        v = r.add_parser(verb, help=text)
        v.add_argument("--repo", type=Path, required=True, help="the repository folder (the console's releases_dir)")
        v.add_argument("--keys", type=Path, required=True, help="the folder of signing keys (PEM, mode 600)")
        if verb == "init":
            v.add_argument("--root-keys", type=int, default=1, help="root keys to make (default 1)")
            v.add_argument("--threshold", type=int, default=1, help="root keys needed to sign a new root (default 1)")
        elif verb == "publish":
            v.add_argument("model", type=Path, help="DIR/NAME, as defect-convert convert wrote it")
            v.add_argument("--version", type=int, default=None, help="default: one more than the published")
            v.add_argument("--no-h5", action="store_true", help="leave the Keras file out (no heatmaps on units)")
        elif verb == "refresh":
            v.add_argument("--days", type=float, default=None, help="timestamp validity (default 7)")
        else:
            v.add_argument("role", choices=("root", "targets", "snapshot", "timestamp"))
        v.set_defaults(func=_cmd_release)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from converter.errors import KNOWN_ERRORS

    try:
        return int(args.func(args))
    except KNOWN_ERRORS as e:
        print(f"defect-convert: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
