"""Reference for the causality stage: Granger causality with statsmodels, from the CSV files.

usage: causality_reference.py OUT CSV...

Cleans each pair as the worker's stated policy says (`cross_reference.load`), then per UTC month
and pair builds the 5-minute series: buckets of 5 minutes from the epoch, a bucket's close the
close of its last bar, its return ln(close / previous bucket's close) only when the previous bucket
has a bar. For every ordered pair (cause, effect) the two series are put on one grid of buckets;
the rows at lag L are the buckets where both have a return at every bucket t-L..t. Those buckets
fall in runs of consecutive buckets (a gap ends a run); each run longer than L gives its rows
through statsmodels' own `lagmat2ds(run, L, trim="both", dropex=1)`, the rows of all runs are
stacked, and the ssr F test is computed as `grangercausalitytests` computes it (statsmodels OLS,
scipy's F survival function). On a single run that is `grangercausalitytests` itself: the script
asserts, for every month, pair and lag, that its function on the longest run gives exactly the
`ssr_ftest` of `grangercausalitytests` on that run.

Writes one line per (cause, effect, month, lag):
  cause|effect|YYYY-MM-DD|lag|F|p|df_den|df_num|nobs
floats as repr (exact), nan where the test is undefined (fewer than 2L+2 rows).
"""

import sys

import numpy as np
from scipy import stats
from statsmodels.regression.linear_model import OLS
from statsmodels.tools.tools import add_constant
from statsmodels.tsa.stattools import grangercausalitytests
from statsmodels.tsa.tsatools import lagmat2ds

from cross_reference import load, month_of

LAGS = 5
BUCKET_US = 5 * 60_000_000


def returns(t, c):
    """bucket -> 5-minute log return, for the buckets whose previous bucket has a bar."""
    b = t // BUCKET_US
    last = np.append(b[1:] != b[:-1], True)  # the last bar of each bucket
    b, c = b[last], c[last]
    ok = b[1:] == b[:-1] + 1
    return dict(zip(b[1:][ok].tolist(), np.log(c[1:] / c[:-1])[ok].tolist()))


def runs(cause, effect):
    """The joint series [effect, cause] (statsmodels' column order) split into runs of
    consecutive buckets."""
    grid = sorted(set(cause) & set(effect))
    out, cur, prev = [], [], None
    for b in grid:
        if prev is not None and b != prev + 1:
            out.append(np.array(cur))
            cur = []
        cur.append((effect[b], cause[b]))
        prev = b
    if cur:
        out.append(np.array(cur))
    return out


def ssr_ftest(parts, lag):
    """grangercausalitytests' ssr F test over the stacked rows of several runs:
    (F, p, df_denom, df_num, nobs)."""
    rows = [lagmat2ds(p, lag, trim="both", dropex=1) for p in parts if len(p) > lag]
    dta = np.vstack(rows) if rows else np.empty((0, 2 * lag + 1))
    n = dta.shape[0]
    if n - 2 * lag - 1 <= 0:
        return (float("nan"), float("nan"), n - 2 * lag - 1, lag, n)
    dtaown = add_constant(dta[:, 1 : (lag + 1)], prepend=False)
    dtajoint = add_constant(dta[:, 1:], prepend=False)
    res2down = OLS(dta[:, 0], dtaown).fit()
    res2djoint = OLS(dta[:, 0], dtajoint).fit()
    fgc1 = (res2down.ssr - res2djoint.ssr) / res2djoint.ssr / lag * res2djoint.df_resid
    p = stats.f.sf(fgc1, lag, res2djoint.df_resid)
    return (fgc1, p, res2djoint.df_resid, lag, n)


def main():
    out = open(sys.argv[1], "w")
    series = {}
    for path in sys.argv[2:]:
        name = path.rsplit("/", 1)[-1].split(".")[0].upper()
        series[name] = load(path)
    names = sorted(series)
    months = sorted(set(np.concatenate([month_of(t) for t, _ in series.values()]).tolist()))
    checked = 0
    for m in months:
        m64 = np.datetime64(m, "M")
        rets = {}
        for p in names:
            t, c = series[p]
            sel = month_of(t) == m64
            if sel.any():
                rets[p] = returns(t[sel], c[sel])
        for cause in sorted(rets):
            for effect in sorted(rets):
                if cause == effect:
                    continue
                parts = runs(rets[cause], rets[effect])
                longest = max(parts, key=len)
                gct = grangercausalitytests(longest, LAGS)
                for lag in range(1, LAGS + 1):
                    # The pooled function is grangercausalitytests on a single run, exactly.
                    single = ssr_ftest([longest], lag)[:4]
                    assert single == tuple(gct[lag][0]["ssr_ftest"]), (cause, effect, lag)
                    checked += 1
                    f, p, df_den, df_num, n = ssr_ftest(parts, lag)
                    out.write(
                        f"{cause}|{effect}|{m64.astype('datetime64[D]')}|{lag}|{float(f)!r}|{float(p)!r}"
                        f"|{int(df_den)}|{int(df_num)}|{n}\n"
                    )
    print(f"{checked} single-run tests equal grangercausalitytests exactly", file=sys.stderr)


if __name__ == "__main__":
    main()
