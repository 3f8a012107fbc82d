"""The table of edge.toml keys in docs/configuration.md is made from the schema (defaults) and examples/edge.toml
(meanings), so it cannot drift from either. `UPDATE_README=1 pytest tests/test_readme.py` rewrites it after a change
to either. The README itself stays a short front page that points at every page of docs/."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from edge import config
from harness import REPO

README = REPO / "docs" / "configuration.md"
BEGIN, END = "<!-- edge.toml keys: made by tests/test_readme.py -->", "<!-- end of edge.toml keys -->"
KEY = re.compile(r"^#?\s*([a-z_0-9]+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")
SECTION = re.compile(r"^#?\s*\[([a-z_.]+)\]\s*(?:#\s*(.*))?$")


def meanings(example: Path) -> dict[str, str]:
    """``section.key`` → the comment beside it in the example (with its continuation lines)."""
    out: dict[str, str] = {}
    section, last = "", ""
    for line in example.read_text().splitlines():
        if m := SECTION.match(line):
            section, last = m.group(1), ""
            continue
        if (m := KEY.match(line)) and section:
            last = f"{section}.{m.group(1)}"
            out[last] = m.group(3) or ""
        elif last and re.match(r"^\s+#\s*(.*)$", line) and not line.lstrip("# ").startswith("["):
            out[last] = f"{out[last]} {line.strip().lstrip('#').strip()}".strip()
        else:
            last = ""
    return out


def default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def rows(model: type[BaseModel], prefix: str, notes: dict[str, str]) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = [a for a in getattr(field.annotation, "__args__", (field.annotation,))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            out += rows(nested[0], f"{key}.", notes)
        else:
            note = notes.get(key, "").replace("|", "\\|")
            out.append(f"| `{key}` | {default(field)} | {note} |")
    return out


def table() -> str:
    saved = os.environ.pop("STATE_DIRECTORY", None)  # the default outside systemd
    try:
        body = rows(config.EdgeConfig, "", meanings(REPO / "examples" / "edge.toml"))
    finally:
        if saved is not None:
            os.environ["STATE_DIRECTORY"] = saved
    return "\n".join([BEGIN, "| key | default | meaning |", "|---|---|---|", *body, END])


def test_readme_lists_every_edge_toml_key_with_its_default() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text, "the README lost its edge.toml table markers"
    current = text[text.index(BEGIN):text.index(END) + len(END)]
    if os.environ.get("UPDATE_README"):
        README.write_text(text.replace(current, table()))
        return
    assert current == table(), "edge.toml's keys changed: UPDATE_README=1 pytest tests/test_readme.py"
