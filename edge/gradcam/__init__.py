"""Grad-CAM: heatmaps from the full Keras model, in a worker process the daemon starts on demand (``docs/unit.md``).

Only :mod:`edge.gradcam.cam` imports TensorFlow, and only inside the worker process or the one-off CLI.
"""
