"""Size and speed of every committed model at every quantization, against the original app's Keras `predict`.

For each ``models/*.h5`` of a reference architecture, converts to float32, float16, dynamic and int8 (into a temporary
folder, parity figures on synthetic parts included), then measures in this one run:
- the ``.tflite`` size relative to the float32 one;
- the median single-image latency of the TFLite interpreter's ``invoke()`` at 1 and 2 threads;
- the median latency of Keras ``model.predict`` on one image (what the original app did per frame);
- the same for the ``.tflite`` the repository ships (``models/<name>.json``), and every variant's speed-up over float32.
Ratios, not absolute times, are the figures to compare across machines. Ends with one JSON line per model and
quantization. Run: ``make bench`` or ``.venv/bin/python -m bench.models [--models DIR] [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import median_ms
from converter.architectures import ARCHITECTURES
from converter.convert import QUANTIZATIONS
from converter.export import ConvertSettings, convert_model
from converter.synth import render
from core import manifest as mf
from core.preprocess import Preprocessor
from core.runtime import create_interpreter
from edge.tfload import load_model
from harness import REPO


def invoke_ms(manifest_path: Path, frame: np.ndarray, threads: int, runs: int) -> float:
    m = mf.load(manifest_path)
    interp, _ = create_interpreter(mf.resolve(manifest_path, m.tflite), num_threads=threads)
    idx = interp.get_input_details()[0]["index"]
    interp.set_tensor(idx, Preprocessor(m.input)(frame)[None])
    return median_ms(interp.invoke, runs)


def measure(model: str, quantization: str, manifest_path: Path, frame: np.ndarray, runs: int, keras_ms: float,
            agreement: float) -> dict[str, Any]:
    """One row of the table: the manifest's ``.tflite``, its size and its ``invoke()`` at 1 and 2 threads."""
    m = mf.load(manifest_path)
    return {"model": model, "quantization": quantization,
            "size_bytes": mf.resolve(manifest_path, m.tflite).stat().st_size,
            "invoke_ms_1t": invoke_ms(manifest_path, frame, 1, runs),
            "invoke_ms_2t": invoke_ms(manifest_path, frame, 2, runs),
            "keras_predict_ms": keras_ms, "agreement": agreement}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=REPO / "models")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per TFLite measurement")
    ap.add_argument("--keras-runs", type=int, default=30)
    a = ap.parse_args()
    frame = render(7, 0, size=256, defect="blowhole").image
    rows: list[dict[str, Any]] = []
    for h5 in sorted(a.models.glob("*.h5")):
        if h5.stem not in ARCHITECTURES:
            continue
        model = load_model(h5)
        size = ARCHITECTURES[h5.stem].size
        x = Preprocessor(mf.InputSpec(height=size, width=size, dtype="float32"))(frame)[None]
        keras_ms = median_ms(lambda m=model, x=x: m.predict(x, verbose=0), a.keras_runs)
        with tempfile.TemporaryDirectory() as tmp:
            for q in QUANTIZATIONS:
                settings = ConvertSettings(quantize=q, name=f"{h5.stem}_{q}", min_agreement=0.0, eval_limit=100,
                                           calibration_count=200)
                res = convert_model(h5, Path(tmp), settings)
                rows.append(measure(h5.stem, q, res.manifest_path, frame, a.runs, keras_ms,
                                    res.report["candidates"][0]["agreement"]))
        committed = h5.with_suffix(".json")
        if committed.exists():  # what the repository ships, timed in the same run as the variants it was chosen from
            m = mf.load(committed)
            rows.append(measure(h5.stem, f"shipped:{m.quantization}", committed, frame, a.runs, keras_ms,
                                float(m.parity.get("agreement", "nan"))))
        float32 = next(r for r in rows if r["model"] == h5.stem and r["quantization"] == "float32")
        for r in rows:
            if r["model"] == h5.stem:
                r["size_vs_float32"] = r["size_bytes"] / float32["size_bytes"]
                r["speedup_vs_float32_1t"] = float32["invoke_ms_1t"] / r["invoke_ms_1t"]
                r["speedup_vs_keras_predict_1t"] = r["keras_predict_ms"] / r["invoke_ms_1t"]
                r["speedup_vs_keras_predict_2t"] = r["keras_predict_ms"] / r["invoke_ms_2t"]

    print(f"\n{'model':<15}{'quant':<15}{'size MB':>8}{'vs fp32':>8}{'invoke 1t':>11}{'invoke 2t':>11}"
          f"{'predict':>10}{'x 1t':>8}{'x 2t':>8}{'fp32/1t':>8}{'parity':>8}")
    for r in rows:
        print(f"{r['model']:<15}{r['quantization']:<15}{r['size_bytes'] / 1e6:>8.2f}{r['size_vs_float32']:>8.2f}"
              f"{r['invoke_ms_1t']:>9.2f}ms{r['invoke_ms_2t']:>9.2f}ms{r['keras_predict_ms']:>8.1f}ms"
              f"{r['speedup_vs_keras_predict_1t']:>8.1f}{r['speedup_vs_keras_predict_2t']:>8.1f}"
              f"{r['speedup_vs_float32_1t']:>8.2f}{r['agreement']:>8.3f}")
    print("(parity: agreement of decisions with Keras on 100 synthetic parts, for shipped: on the converter's 300; "
          "x: speed-up over Keras predict; fp32/1t: float32's invoke time over this one's at 1 thread; "
          "shipped: the committed .tflite its manifest names)")
    for r in rows:
        print(json.dumps({k: round(r[k], 4) if isinstance(r[k], float) else r[k] for k in
                          ("model", "quantization", "size_vs_float32", "speedup_vs_keras_predict_1t",
                           "speedup_vs_keras_predict_2t", "speedup_vs_float32_1t")}))


if __name__ == "__main__":
    main()
