"""What the tests, the benchmarks and ``make demo`` share to run the product as a user would: a real Mosquitto and a
collecting client, the unit and the relay as processes, an SMTP sink, certificates, and the casting photos.

It sits beside the product, never under it: no product package imports it (``make lint`` checks the direction).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
