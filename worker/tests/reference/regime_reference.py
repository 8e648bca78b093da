"""Reference for the regime stage, from the CSV files with pandas (and TA-Lib C for ADX).

usage: regime_reference.py OUT CSV...

Cleans each pair as the worker's policy says, then writes one line per bar:
  pair|ts|rv_60|pct_low|pct_high|vol_regime|adx_14|slope_240|trend_regime
ts in Unix microseconds; pct_low counts the window's values strictly below the bar's, pct_high
those not above it (equal values), so an exact tie shows as an interval; 'nan' / '' when undefined.
"""

import gzip
import math
import sys

import numpy as np
import pandas as pd
import talib
from numpy.lib.stride_tricks import sliding_window_view


def load(path):
    with gzip.open(path, "rt") as f:
        df = pd.read_csv(f)
    df = df[["time", "open", "high", "low", "close"]]
    px = df[["open", "high", "low", "close"]]
    ok = (np.isfinite(px) & (px > 0)).all(axis=1)
    ok &= (df.high >= df.low) & (df.open <= df.high) & (df.open >= df.low)
    ok &= (df.close <= df.high) & (df.close >= df.low)
    df = df[ok].sort_values("time", kind="stable")
    return df.drop_duplicates("time", keep="last").reset_index(drop=True)


def slope(close, w=240):
    out = np.full(len(close), np.nan)
    x = np.arange(w) - (w - 1) / 2.0
    for a in range(0, len(close) - w + 1, 20_000):
        win = sliding_window_view(close[a : a + 20_000 + w - 1], w)
        yc = win - win.mean(axis=1, keepdims=True)
        out[a + w - 1 : a + w - 1 + len(win)] = (yc @ x) / (x @ x)
    return out


def main():
    out = open(sys.argv[1], "w")
    for path in sys.argv[2:]:
        pair = path.rsplit("/", 1)[-1].split(".")[0].upper()
        df = load(path)
        c = df.close.astype(float)
        # The C library's log, as the worker's f64::ln (numpy's own is CPU-dispatched).
        r = (c / c.shift(1)).map(lambda v: math.log(v) if v == v else v)
        rv = np.sqrt((r**2).rolling(60).sum())
        ts = pd.to_datetime(df.time, unit="s")
        # Ranked at 12 significant digits, as the stage ranks (ties that differ in the last bits).
        mag = np.floor(np.log10(np.abs(rv.values), where=rv.values > 0, out=np.zeros(len(rv))))
        scale = 10.0 ** (11 - mag)
        key = np.where(rv.values > 0, np.round(rv.values * scale) / scale, rv.values)
        s = pd.Series(key, index=pd.DatetimeIndex(ts))
        roll = s.rolling("30D", closed="both")  # the 30 days before, and the bar itself
        held = roll.count() - 1
        low = (roll.rank(method="min") - 1) / held
        high = (roll.rank(method="max") - 1) / held
        enough = (held >= 1440) & s.notna()
        low, high = low.where(enough).values, high.where(enough).values
        vol = np.where(np.isnan(low), "", np.where(low < 0.25, "low", np.where(low >= 0.75, "high", "normal")))
        adx = talib.ADX(df.high.values, df.low.values, c.values, 14)
        sl = slope(c.values)
        trend = np.where(
            np.isnan(adx) | np.isnan(sl),
            "",
            np.where((adx > 25) & (sl > 0), "up", np.where((adx > 25) & (sl < 0), "down", "range")),
        )
        t_us = df.time.values.astype(np.int64) * 1_000_000
        rv = rv.values
        for i in range(len(df)):
            out.write(
                f"{pair}|{t_us[i]}|{float(rv[i])!r}|{float(low[i])!r}|{float(high[i])!r}|{vol[i]}"
                f"|{float(adx[i])!r}|{float(sl[i])!r}|{trend[i]}\n"
            )


if __name__ == "__main__":
    main()
