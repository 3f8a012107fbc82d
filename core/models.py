"""The models folder: which models a unit has, and the one safe way to turn a model name into a manifest path.

Names come from users and from MQTT commands, so a name is checked against the manifest's own name pattern before
it touches the file system: ``../../etc/passwd`` is not a model name.
"""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class UnknownModelError(LookupError):
    """No such model in the models folder; the message lists the ones there are."""


def list_models(models_dir: Path) -> list[str]:
    """Names of the models with a manifest in ``models_dir``, sorted."""
    if not models_dir.is_dir():
        return []
    return sorted(p.stem for p in models_dir.glob("*.json")
                  if not p.name.startswith(".") and p.with_suffix(".tflite").is_file() and _NAME.match(p.stem))


def manifest_path(models_dir: Path, name: str) -> Path:
    """The manifest of model ``name``; :class:`UnknownModelError` naming the known models when there is none."""
    known = list_models(models_dir)
    if not _NAME.match(name) or name not in known:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise UnknownModelError(f"unknown model {shown!r} in {models_dir}; known: {', '.join(known) or 'none'}")
    return models_dir / f"{name}.json"
