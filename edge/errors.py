"""Errors a user can cause and fix, reported by the edge's commands as one line (exit status 2)."""

from __future__ import annotations

from contract.settings import ConfigError
from contract.sqlite import SchemaError
from core.classifier import ModelMismatchError
from core.manifest import ManifestError
from core.models import UnknownModelError
from core.runtime import RuntimeUnavailableError
from core.signature import SignatureError
from core.verify import VerificationError
from edge.modelstore import InstallError
from edge.sources.base import SourceError
from edge.variants import VariantError

USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, InstallError, ManifestError, ModelMismatchError, UnknownModelError, RuntimeUnavailableError,
    SchemaError, SignatureError, SourceError, VariantError, VerificationError)
