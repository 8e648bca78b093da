"""Reference values for the worker's feature stages, from TA-Lib's C library (the PyPI TA-Lib
wheel) and a two-pass least-squares fit per window (numpy).

Usage: talib_reference.py BARS OUT
BARS: float64 little-endian, 5 rows (open, high, low, close, volume) of n bars.
OUT:  float64 little-endian, one row of n values per output column (NaN where undefined), in
      the worker's column order: the 17 indicator columns, then slope/intercept/r2/rmse for
      windows 60, 240, 1440.
"""
import sys

import numpy as np
import talib
from numpy.lib.stride_tricks import sliding_window_view


def indicators(o, h, l, c, v):
    return [
        talib.RSI(c, 14),
        *talib.MACD(c, 12, 26, 9),
        talib.ADX(h, l, c, 14),
        talib.PLUS_DI(h, l, c, 14),
        talib.MINUS_DI(h, l, c, 14),
        *talib.STOCH(h, l, c, 14, 3, 0, 3, 0),
        talib.CCI(h, l, c, 14),
        talib.WILLR(h, l, c, 14),
        talib.ROC(c, 10),
        talib.MFI(h, l, c, v, 14),
        *talib.BBANDS(c, 20, 2.0, 2.0, 0),
        talib.ATR(h, l, c, 14),
    ]


def regression(c, w, chunk=4096):
    n = len(c)
    out = [np.full(n, np.nan) for _ in range(4)]
    if n < w:
        return out
    x = np.arange(w, dtype=float)
    xc = x - x.mean()
    sxx = xc @ xc
    windows = sliding_window_view(c, w)
    for s in range(0, len(windows), chunk):
        y = windows[s : s + chunk]
        ym = y.mean(axis=1)
        yc = y - ym[:, None]
        slope = (yc @ xc) / sxx
        intercept = ym - slope * x.mean()
        resid = yc - slope[:, None] * xc[None, :]
        sse = (resid * resid).sum(axis=1)
        sst = (yc * yc).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            # Undefined over a window of equal closes (no line explains a constant).
            r2 = np.where(np.ptp(y, axis=1) > 0, 1.0 - sse / sst, np.nan)
        rows = slice(s + w - 1, s + w - 1 + len(y))
        out[0][rows], out[1][rows], out[2][rows] = slope, intercept, r2
        out[3][rows] = np.sqrt(sse / w)
    return out


def main():
    bars = np.fromfile(sys.argv[1], dtype="<f8").reshape(5, -1)
    o, h, l, c, v = (np.ascontiguousarray(r) for r in bars)
    cols = indicators(o, h, l, c, v)
    for w in (60, 240, 1440):
        cols.extend(regression(c, w))
    np.stack(cols).astype("<f8").tofile(sys.argv[2])


if __name__ == "__main__":
    main()
