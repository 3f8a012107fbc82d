"""Finding a TFLite interpreter and creating it, with the errors users actually hit turned into one line each.

Order (``docs/unit.md``): ``ai_edge_litert`` (LiteRT), then ``tflite_runtime``, then ``tensorflow.lite``. The first that
imports wins. ``num_threads`` is always passed: LiteRT silently uses one thread otherwise.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("tensorflow.lite", "tensorflow.lite.python.interpreter"),
)

_INSTALL_LITERT = "install LiteRT instead: pip install ai-edge-litert"


class RuntimeUnavailableError(RuntimeError):
    """No usable TFLite runtime, or the model cannot run on the one found. The message says what to install."""


@dataclass(frozen=True)
class Runtime:
    name: str  # which package provides the interpreter
    module: Any  # the module with Interpreter and load_delegate


def find_runtime(preferred: tuple[str, ...] | None = None) -> Runtime:
    """Import the first available runtime of ``preferred`` (default: the order above)."""
    wanted = preferred or tuple(name for name, _ in _CANDIDATES)
    tried = []
    for name, module_name in _CANDIDATES:
        if name not in wanted:
            continue
        try:
            return Runtime(name=name, module=importlib.import_module(module_name))
        except ImportError as e:
            tried.append(f"{name} ({e.__class__.__name__})")
    raise RuntimeUnavailableError(f"no TFLite runtime could be imported (tried {', '.join(tried)}); {_INSTALL_LITERT}")


def default_threads() -> int:
    """All cores this process may use (respects CPU affinity, e.g. systemd's CPUAffinity=)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _explain(runtime: Runtime, err: BaseException) -> str | None:
    text = str(err)
    # tflite-runtime 2.14 under NumPy 2 raises SystemError("... returned a result with an exception set"); NumPy
    # prints the telling "_ARRAY_API not found" itself, outside the exception.
    numpy2 = int(np.__version__.split(".")[0]) >= 2
    if "_ARRAY_API" in text or (runtime.name == "tflite_runtime" and numpy2 and isinstance(err, SystemError)):
        return f"{runtime.name} was built for NumPy 1.x and cannot run under NumPy 2; {_INSTALL_LITERT}"
    if "Didn't find op for builtin opcode" in text or "Op builtin_code out of range" in text:
        op = next(line for line in text.splitlines() if "builtin" in line).strip()
        return f"{runtime.name} is too old for the operators in this model ({op}); {_INSTALL_LITERT}"
    return None


def load_delegate(runtime: Runtime, library: str) -> Any:
    """Load a hardware delegate such as the Coral Edge TPU's ``libedgetpu.so.1``."""
    try:
        # Load the library ourselves first: when it is missing, the runtime's own Delegate object fails half-built
        # and raises again from its __del__.
        ctypes.CDLL(library)
        return runtime.module.load_delegate(library)
    except (ValueError, OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise RuntimeUnavailableError(
            f"delegate {library} could not be loaded ({first}); install its runtime (for a Coral Edge TPU: the "
            "libedgetpu1-std package) or remove the delegate setting") from None


def create_interpreter(model_path: Path, *, num_threads: int | None = None, delegate: str | None = None,
                       runtime: Runtime | None = None) -> tuple[Any, Runtime]:
    """Create and allocate an interpreter for ``model_path``; returns it with the runtime that made it."""
    rt = runtime or find_runtime()
    threads = num_threads or default_threads()
    kwargs: dict[str, Any] = {"model_path": str(model_path), "num_threads": threads}
    if delegate:
        kwargs["experimental_delegates"] = [load_delegate(rt, delegate)]
    try:
        interpreter = rt.module.Interpreter(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError, ImportError, AttributeError, SystemError) as e:
        why = _explain(rt, e)
        if why:
            raise RuntimeUnavailableError(why) from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise RuntimeUnavailableError(f"{model_path}: {rt.name} cannot load this model: {first}") from None
    return interpreter, rt
