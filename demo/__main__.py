"""`make demo`: what the product does so far, end to end on embedded defaults.

1. Converts each committed model (``models/*.h5``) with ``--quantize auto`` into ``var/demo/models/``, proving parity
   on held-out synthetic parts, exactly as a user converts their own ``.h5``.
2. Classifies a batch of fresh synthetic parts (never seen in training) with every converted model through the edge's
   classifier, and prints a readable table and a summary per model.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
OUT = REPO / "var" / "demo" / "models"
PARTS_SEED = 4242
PARTS = 16


def main() -> int:
    from converter.cli import main as convert_cli
    from converter.synth import sample
    from edge.classifier import Classifier

    names = sorted(p.stem for p in MODELS.glob("*.h5"))
    if not names:
        print(f"no models in {MODELS}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"\n== converting models/{name}.h5 (auto quantization, parity on 100 synthetic parts)")
        rc = convert_cli(["convert", str(MODELS / f"{name}.h5"), "--out-dir", str(OUT), "--eval-limit", "100"])
        if rc != 0:
            return rc
    classifiers = {n: Classifier(OUT / f"{n}.json") for n in names}
    parts = [sample(PARTS_SEED, i) for i in range(PARTS)]
    print(f"\n== classifying {PARTS} new synthetic parts (series {PARTS_SEED})\n")
    header = f"{'part':>4}  {'truth':<12}" + "".join(f"{n + ' (' + c.manifest.quantization + ')':>26}"
                                                      for n, c in classifiers.items())
    print(header)
    print("-" * len(header))
    correct = dict.fromkeys(names, 0)
    latency: dict[str, list[float]] = {n: [] for n in names}
    for i, part in enumerate(parts):
        cells = []
        for n, clf in classifiers.items():
            pred = clf.classify(part.image)
            ok = pred.defective == part.defective
            correct[n] += ok
            latency[n].append(sum(pred.timings_ms.values()))
            flag = "" if ok else " x"
            cells.append(f"{pred.label:>10} p={pred.p_defect:.3f}{' ?' if pred.low_confidence else '  '}{flag:>2}")
        print(f"{i:>4}  {part.defect or 'good':<12}" + "".join(f"{c:>26}" for c in cells))
    print("\n(? = low confidence, x = wrong call)\n")
    for n in names:
        m = classifiers[n].manifest
        print(f"{n:<15} {m.quantization:<8} {m.tflite.size_bytes / 1e6:5.2f} MB  accuracy {correct[n]}/{PARTS}  "
              f"latency p50 {statistics.median(latency[n]):.2f} ms  parity agreement {m.parity['agreement']:.3f}")
    print(f"\nconverted models, manifests and parity reports: {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
