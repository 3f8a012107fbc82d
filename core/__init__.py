"""The edge core: the one classifier, as the unit, the converter, the console and the Grad-CAM worker all run it.

What a model is (:mod:`core.manifest`), how a frame becomes its input (:mod:`core.preprocess`, :mod:`core.framing`),
the runtime that runs it (:mod:`core.runtime`), the call (:mod:`core.classifier`, :mod:`core.signature`), where
models and images are found (:mod:`core.models`, :mod:`core.images`), and parity proven on this machine's runtime
(:mod:`core.verify`). It imports the contract and nothing else of the project: the layers are in ``pyproject.toml``
and ``docs/architecture.md``.
"""
