"""The one place the converter imports TensorFlow and Keras, quietly.

Importing ``converter`` must not import TensorFlow (the edge imports pieces of it), so modules that need TF call
:func:`tf_keras` inside their functions. TensorFlow's C++ start-up chatter is silenced unless the user asked for it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType


def tf_keras() -> tuple[ModuleType, ModuleType]:
    """Return ``(tensorflow, keras)``, imported once per process."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with quiet():
            import tensorflow as tf
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
