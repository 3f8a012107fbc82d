"""The unit (``docs/unit.md``).

numpy's BLAS runs on one thread in every process of the unit. It only ever multiplies a few small matrices here (the
familiarity score), and a second BLAS thread spins while it waits for a core: on a machine whose cores the model's
``invoke()`` keeps busy, scoring a batch of 13 results cost 1.26 ms of CPU with OpenBLAS' own worker against 0.09 ms
without (``docs/benchmarks.md``). OpenBLAS reads the variable once, when numpy loads it, so it is set here, before
anything of the unit imports numpy; an operator's own setting is kept.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
