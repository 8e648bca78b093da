"""Times TA-Lib's C library (PyPI TA-Lib) on the worker's 17 indicator columns, for `make bench`.

Usage: talib_bench.py BARS  (the layout of talib_reference.py). Prints the best of 3, in seconds.
"""
import sys
import time

import numpy as np

from talib_reference import indicators

bars = np.fromfile(sys.argv[1], dtype="<f8").reshape(5, -1)
o, h, l, c, v = (np.ascontiguousarray(r) for r in bars)
best = float("inf")
for _ in range(3):
    t = time.perf_counter()
    cols = indicators(o, h, l, c, v)
    best = min(best, time.perf_counter() - t)
assert len(cols) == 17
print(f"{best:.6f}")
