"""A team's Python job for the worker's two per-pair stages, for `make bench` to time beside it.

Usage: peer.py DATABASE_URL SOURCE SCHEMA PART OF

Written as a team that knows PostgreSQL would write it: for each of its pairs (those whose index
in name order is PART modulo OF, so OF processes share the pairs), it copies the pair's bars out
(COPY … CSV into pandas), computes the 17 indicator columns with TA-Lib's C library and the 12
rolling least-squares columns with pandas' rolling windows, and copies both tables in (CSV), one
transaction per pair. Same columns and keys as the worker's `indicators` and `regression`; the
values agree with the worker's to rounding (pandas' rolling sums are not the worker's exact
re-anchored ones). Prints the rows it wrote.
"""
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference"))
# The same 17 TA-Lib calls as the worker's reference tests.
from talib_reference import indicators as talib_indicators  # noqa: E402

INDICATORS = [
    "rsi_14", "macd", "macd_signal", "macd_hist", "adx_14", "plus_di_14", "minus_di_14",
    "stoch_k", "stoch_d", "cci_14", "willr_14", "roc_10", "mfi_14", "bb_upper", "bb_middle",
    "bb_lower", "atr_14",
]
WINDOWS = [60, 240, 1440]
REGRESSION = [f"{m}_{w}" for w in WINDOWS for m in ("slope", "intercept", "r2", "rmse")]


def indicators(df):
    o, h, l, c, v = (df[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    return pd.DataFrame(dict(zip(INDICATORS, talib_indicators(o, h, l, c, v))), index=df.index)


def regression(close):
    t = pd.Series(np.arange(len(close), dtype=float), index=close.index)
    out = {}
    for w in WINDOWS:
        rt, ry = t.rolling(w), close.rolling(w)
        slope = rt.cov(close) / rt.var()
        # The fit's value at the window's first bar, as the worker reports it.
        intercept = ry.mean() - slope * (w - 1) / 2.0
        r2 = rt.corr(close) ** 2
        rmse = np.sqrt((1.0 - r2).clip(lower=0.0) * ry.var(ddof=0))
        out.update({f"slope_{w}": slope, f"intercept_{w}": intercept, f"r2_{w}": r2,
                    f"rmse_{w}": rmse})
    return pd.DataFrame(out)[REGRESSION]


def copy_in(cur, table, pair, ts, frame):
    frame = frame.replace([np.inf, -np.inf], np.nan)
    frame.insert(0, "ts", ts)
    frame.insert(0, "pair", pair)
    buf = io.StringIO()
    frame.to_csv(buf, header=False, index=False, na_rep="")
    with cur.copy(f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN (FORMAT csv)") as cp:
        cp.write(buf.getvalue())
    return len(frame)


def main():
    url, source, schema, part, of = sys.argv[1:6]
    part, of = int(part), int(of)
    written = 0
    with psycopg.connect(url) as conn:
        pairs = [r[0] for r in conn.execute(f"SELECT DISTINCT pair FROM {source} ORDER BY 1")]
        for k, pair in enumerate(pairs):
            if k % of != part:
                continue
            with conn.cursor() as cur:
                raw = io.BytesIO()
                with cur.copy(
                    f"COPY (SELECT ts, open, high, low, close, volume FROM {source} "
                    f"WHERE pair = '{pair}' ORDER BY ts) TO STDOUT (FORMAT csv)"
                ) as cp:
                    for chunk in cp:
                        raw.write(chunk)
                raw.seek(0)
                prices = ["open", "high", "low", "close", "volume"]
                df = pd.read_csv(raw, names=["ts", *prices], dtype=dict.fromkeys(prices, "float64"))
                written += copy_in(cur, f"{schema}.indicators", pair, df["ts"], indicators(df))
                written += copy_in(cur, f"{schema}.regression", pair, df["ts"],
                                   regression(df["close"]))
            conn.commit()
    print(written)


if __name__ == "__main__":
    main()
