"""Errors a user can cause and fix, reported by the edge's commands as one line (exit status 2)."""

from __future__ import annotations

from contract.settings import ConfigError
from contract.sqlite import SchemaError
from edge.classifier import ModelMismatchError
from edge.manifest import ManifestError
from edge.models import UnknownModelError
from edge.modelstore import InstallError
from edge.runtime import RuntimeUnavailableError
from edge.signature import SignatureError
from edge.sources.base import SourceError
from edge.verify import VerificationError

USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, InstallError, ManifestError, ModelMismatchError, UnknownModelError, RuntimeUnavailableError,
    SchemaError, SignatureError, SourceError, VerificationError)
