"""Errors the converter reports to the user as one line (exit status 2), gathered so the CLI can name them once."""

from __future__ import annotations

from converter.convert import ConversionError
from converter.dataset import DatasetError
from core.images import ImageError
from core.manifest import ManifestError
from core.runtime import RuntimeUnavailableError
from edge.tfload import ModelError


class UserError(Exception):
    """Bad input on the command line (a path that cannot be used): one line, exit status 2."""


KNOWN_ERRORS: tuple[type[Exception], ...] = (
    UserError, ModelError, ConversionError, DatasetError, ImageError, ManifestError, RuntimeUnavailableError)
