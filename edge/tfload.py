"""The one place the product imports TensorFlow and Keras, quietly, and loads the model files users have.

Only the converter and the Grad-CAM worker (its own process) call into this module; the unit's hot path never does,
and importing ``edge`` or ``converter`` must not import TensorFlow, so :func:`tf_keras` imports it inside. TensorFlow's
C++ start-up chatter is silenced unless the user asked for it.

Keras 3 refuses Keras 2 / tf.keras files of MobileNetV2 and EfficientNetB0 with "Unrecognized keyword arguments
passed to DepthwiseConv2D: {'groups': 1}": Keras 2 stored ``groups`` in every DepthwiseConv2D config, a keyword
Keras 3's layer does not take (it is always 1 for a depthwise convolution). A subclass that drops it loads those files
exactly, weights included.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any


def tf_keras() -> tuple[ModuleType, ModuleType]:
    """Return ``(tensorflow, keras)``, imported once per process."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with quiet():
            import tensorflow as tf
        # TensorFlow's logger made its handler during the import, on the silenced (now closed) stream: its later
        # warnings (e.g. about retracing) would end in "Logging error ... I/O operation on closed file".
        for logger in (logging.getLogger(), logging.getLogger("tensorflow")):
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                    handler.stream = sys.stderr  # not setStream(): it would flush the closed one
    import keras
    import tensorflow as tf

    return tf, keras


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence TensorFlow's own output at the file-descriptor level; replay its tail to stderr if the block fails.

    TensorFlow's C++ start-up notices ignore TF_CPP_MIN_LOG_LEVEL, and Keras 3's ``from_keras_model`` prints every
    SavedModel signature to stdout: hundreds of lines where a user wants one per candidate.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink, io.TextIOWrapper(os.fdopen(os.dup(sink.fileno()), "wb")) as text:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            # Python-level writes too: sys.stdout may not be file descriptor 1 (pytest, notebooks).
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        except BaseException:
            text.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            sink.seek(0)
            sys.stderr.write(sink.read()[-4000:].decode(errors="replace"))
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class ModelError(ValueError):
    """The file is not a Keras model the product supports; the message says what is supported."""


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
FORMATS = ".h5 (Keras 2 or 3), .keras (Keras 3) or a SavedModel folder"


def _compat_objects(keras: Any) -> dict[str, Any]:
    class DepthwiseConv2D(keras.layers.DepthwiseConv2D):  # type: ignore[misc]  # Keras is untyped
        """Keras 2 wrote ``groups=1`` into DepthwiseConv2D configs; Keras 3 rejects the keyword."""

        def __init__(self, *args: Any, groups: int = 1, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    return {"DepthwiseConv2D": DepthwiseConv2D}


def file_attrs(path: Path) -> dict[str, str]:
    """Read the HDF5 root attributes Keras writes (``model_config``, ``keras_version``, ``backend``)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()}
    except OSError as e:
        raise ModelError(f"{path}: HDF5 file is damaged or truncated ({e})") from None


def _keras_archive_version(path: Path) -> str:
    """The Keras version in a ``.keras`` archive's ``metadata.json``; checks it is one."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                raise ModelError(f"{path}: zip file without config.json; expected a Keras 3 .keras model")
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: .keras archive is damaged or truncated ({e})") from None
    return str(meta.get("keras_version", "unknown")) if isinstance(meta, dict) else "unknown"


def describe_file(path: Path) -> tuple[str, str]:
    """``(format, keras_version)`` of a model file or folder, checked enough to give a clear error before Keras."""
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelError(f"{path}: folder without saved_model.pb; expected {FORMATS}")
        return "savedmodel", "unknown"
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read: {e.strerror or e}") from None
    if head == _HDF5_MAGIC:
        attrs = file_attrs(path)
        if "model_config" not in attrs:
            raise ModelError(f"{path}: HDF5 file holds no Keras model (weights only? save with model.save('x.h5'))")
        return "h5", attrs.get("keras_version", "unknown")
    if head.startswith(_ZIP_MAGIC):
        return "keras", _keras_archive_version(path)
    if path.name == "saved_model.pb":
        return describe_file(path.parent)
    raise ModelError(f"{path}: not a Keras model file; expected {FORMATS}")


def _saved_model(path: Path, keras: Any) -> Any:
    """A SavedModel's serving signature as a Keras model: callable and convertible, but without layers inside."""
    tf, _ = tf_keras()
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ModelError(f"{path}: SavedModel has no serving_default signature (export it with model.export())")
    specs = list(signature.structured_input_signature[1].values())
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise ModelError(f"{path}: SavedModel signature takes {[tuple(s.shape) for s in specs]}; supported: one "
                         "batch of images (N, H, W, C)")
    inp = keras.Input(tuple(specs[0].shape)[1:], name="image")
    out = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default", name="saved_model")(inp)
    if isinstance(out, dict):
        if len(out) != 1:
            raise ModelError(f"{path}: SavedModel signature has {len(out)} outputs ({', '.join(out)}); supported: one")
        out = next(iter(out.values()))
    return keras.Model(inp, out, name=path.name)


def load_model(path: Path) -> Any:
    """Load a Keras model for inference (not compiled): ``.h5`` of Keras 2 or 3, ``.keras``, a SavedModel folder.

    One-line :class:`ModelError` when it cannot. A SavedModel comes back as a Keras model around its serving
    signature, so it converts and predicts like the others; its layers are not reachable (no Grad-CAM).
    """
    kind, _ = describe_file(path)
    _, keras = tf_keras()
    try:
        if kind == "savedmodel":
            return _saved_model(path if path.is_dir() else path.parent, keras)
        model = keras.models.load_model(path, compile=False, custom_objects=_compat_objects(keras))
    except ModelError:
        raise
    except Exception as e:  # Keras raises many types for a model it cannot rebuild; all mean the same to a user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: Keras cannot rebuild this model: {first[:300]}") from None
    if len(model.inputs) == 1 and len(model.outputs) == 1:
        # Keras 2 files declare their input as a one-element list; Keras 3 then warns on every call with a plain
        # tensor. The same layers rewired with a single-tensor input are the same function, without the noise.
        model = keras.Model(model.inputs[0], model.outputs[0], name=model.name)
    return model
