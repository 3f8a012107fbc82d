"""The unit's decision policy, one owner for it: the threshold and the low-confidence band in force, and where each
came from.

Three sources, the later winning: the model's manifest (the converter's calibrated values), ``[model]`` in
``edge.toml`` (the plant's), and ``cmd/threshold`` (a quality lead's, now). A commanded value is kept in the state
directory (``decision.json``, replaced atomically), so it survives a model swap and a restart: before, the next
``cmd/model`` silently put the configuration's back. ``cmd/threshold {"reset": true}`` drops it. The status shows
each value with its source (``docs/mqtt.md``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from contract import topics
from core import manifest as mf

log = logging.getLogger(__name__)

Source = Literal["model", "config", "command"]
FIELDS = ("threshold", "low_confidence_band")


class DecisionPolicy:
    def __init__(self, path: Path, *, threshold: float | None = None,
                 low_confidence_band: tuple[float, float] | None = None):
        self.path = path
        self.config: dict[str, Any] = {k: v for k, v in zip(FIELDS, (threshold, low_confidence_band), strict=True)
                                       if v is not None}
        self.commanded: dict[str, Any] = {}
        self.set_at: str | None = None
        self._load()

    def _load(self) -> None:
        """The commanded values from the last run; a file that cannot be read is said in one line and ignored
        (the configuration's and the model's values hold)."""
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            values = {k: v for k, v in data.get("values", {}).items() if k in FIELDS}
            mf.Decision(**values)  # valid as a decision, or not taken
        except (OSError, ValueError, AttributeError, TypeError, ValidationError) as e:
            log.error("%s: cannot be read, the commanded threshold is not restored: %s", self.path,
                      str(e).splitlines()[0])
            return
        self.commanded = {k: tuple(v) if k == "low_confidence_band" else v for k, v in values.items()}
        self.set_at = data.get("set_at")

    def decision(self, model: mf.Decision) -> mf.Decision:
        """The decision in force for a model whose manifest says ``model``."""
        return model.model_copy(update={**self.config, **self.commanded})

    def sources(self, model: mf.Decision) -> dict[str, Any]:
        """Each value in force with where it came from, for the status."""
        used = self.decision(model)
        out: dict[str, Any] = {}
        for k in FIELDS:
            source: Source = "command" if k in self.commanded else "config" if k in self.config else "model"
            value = getattr(used, k)
            out[k] = {"value": list(value) if isinstance(value, tuple) else value, "from": source,
                      **({"set_at": self.set_at} if source == "command" else {})}
        return out

    def command(self, *, threshold: float | None = None, low_confidence_band: tuple[float, float] | None = None,
                reset: bool = False) -> None:
        """A ``cmd/threshold``: the new values, kept on disk before they are used. Raises :class:`ValueError` when
        the result is not a valid decision (a band that no longer holds the threshold is allowed, as in a
        manifest; one that is not ordered is not), and :class:`OSError` when it cannot be kept."""
        new = {} if reset else {**self.commanded, **{k: v for k, v in zip(FIELDS, (threshold, low_confidence_band),
                                                                          strict=True) if v is not None}}
        try:
            mf.Decision(**new)
        except ValidationError as e:
            raise ValueError(e.errors()[0]["msg"]) from None
        set_at = topics.iso(time.time())
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"values": new, "set_at": set_at}))
        tmp.replace(self.path)
        self.commanded, self.set_at = new, (None if reset else set_at)
