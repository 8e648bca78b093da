"""Reference for the causality stage: Granger causality computed exactly enough to judge the
worker on any machine, from the CSV files.

usage: causality_reference.py OUT CSV...

Cleans each pair as the worker's stated policy says (`cross_reference.load`), then per UTC month
and pair builds the 5-minute series: buckets of 5 minutes from the epoch, a bucket's close the
close of its last bar, its return ln(close / previous bucket's close) only when the previous bucket
has a bar. For every ordered pair (cause, effect) the two series are put on one grid of buckets;
the rows at lag L are the buckets where both have a return at every bucket t-L..t. Those buckets
fall in runs of consecutive buckets (a gap ends a run); each run longer than L gives its rows
through statsmodels' own `lagmat2ds(run, L, trim="both", dropex=1)`, and the rows of all runs are
stacked.

Why not statsmodels' numbers as the reference: its OLS goes through numpy's BLAS/LAPACK, whose
kernels (and so whose roundings) are picked by the CPU, and its F subtracts two nearly equal sums
of squares. So the reference here depends on no BLAS and no CPU:
- the returns come from `math.log` (the C library's log, the one the worker calls), not numpy's
  SIMD log, whose kernels are CPU-dispatched too;
- the sums of squares come from a Householder QR done in numpy `longdouble` (80-bit extended on
  x86_64, 128-bit on aarch64 Linux: numpy has no BLAS for it, so its own loops, the same on every
  CPU), and SSR_r - SSR_u is read off Q'y directly, never as a difference;
- p is the F distribution's survival function in mpmath at 40 digits.
statsmodels stays the authority on what the test is: for every month, pair and lag the script
asserts that its pooled function on the longest run gives exactly the `ssr_ftest` of
`grangercausalitytests`, and that statsmodels' F and the extended-precision F agree within
statsmodels' own error bound (below), so the two references are the same test.

Writes one line per (cause, effect, month, lag):
  cause|effect|YYYY-MM-DD|lag|F|p|df_den|df_num|nobs|kappa|cond_p|gamma_mag|u_ref
F and p rounded to double from the extended values (repr, exact); nan where the test is undefined
(fewer than 2L+2 rows). What the Rust test needs for its tolerances:
  kappa     = SSR_r / (SSR_r - SSR_u), the condition of F's numerator (how much a relative
              error in the sums of squares is amplified in their difference);
  cond_p    = |d ln p / d ln F|, how a relative error in F moves p;
  gamma_mag = |a ln x| + |b ln(1-x)| + |lnG(a)| + |lnG(b)| + |lnG(a+b)| of the regularised
              incomplete beta I_x(a, b) that p is (a = df_den/2, b = df_num/2): the size of the
              exponent a double-precision evaluation rounds (its absolute error is a relative
              error of p);
  u_ref     = the unit roundoff of this reference's longdouble.
"""

import math
import sys

import mpmath
import numpy as np
from scipy import stats
from statsmodels.regression.linear_model import OLS
from statsmodels.tools.tools import add_constant
from statsmodels.tsa.stattools import grangercausalitytests
from statsmodels.tsa.tsatools import lagmat2ds

from cross_reference import load, month_of

LAGS = 5
BUCKET_US = 5 * 60_000_000
U = 2.0**-53
U_REF = float(np.finfo(np.longdouble).eps) / 2
mpmath.mp.dps = 40


def returns(t, c):
    """bucket -> 5-minute log return, for the buckets whose previous bucket has a bar."""
    b = t // BUCKET_US
    last = np.append(b[1:] != b[:-1], True)  # the last bar of each bucket
    b, c = b[last], c[last]
    ok = b[1:] == b[:-1] + 1
    ratio = c[1:] / c[:-1]  # IEEE division: the same on every machine
    return {int(k): math.log(r) for k, r in zip(b[1:][ok], ratio[ok])}


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


def rows_at(parts, lag):
    rows = [lagmat2ds(p, lag, trim="both", dropex=1) for p in parts if len(p) > lag]
    return np.vstack(rows) if rows else np.empty((0, 2 * lag + 1))


def statsmodels_ftest(dta, lag):
    """grangercausalitytests' ssr F test on the rows: (F, p, df_denom, df_num, nobs)."""
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


def householder_qty(x, y):
    """Q'y of the Householder QR of x's columns, in x's and y's dtype (longdouble here)."""
    x, y = x.copy(), y.copy()
    for k in range(x.shape[1]):
        col = x[k:, k]
        norm = np.sqrt(np.sum(col * col))
        v = col.copy()
        v[0] -= -norm if col[0] > 0 else norm
        vtv = np.sum(v * v)
        rest = x[k:, k + 1 :]
        rest -= np.outer(v, (v @ rest) * (2 / vtv))
        y[k:] -= v * (np.sum(v * y[k:]) * (2 / vtv))
    return y


def sf(f, d1, d2):
    """P(F(d1, d2) > f), in mpmath."""
    return mpmath.betainc(d2 / 2, d1 / 2, 0, d2 / (d2 + d1 * f), regularized=True)


def exact_ftest(dta, lag):
    """(F, p, kappa, cond_p, gamma_mag) in extended precision; None when undefined."""
    n = dta.shape[0]
    df = n - 2 * lag - 1
    if df <= 0:
        return None
    ld = np.longdouble
    # Restricted columns first: constant, the effect's lags; then the cause's lags.
    x = np.column_stack([np.ones(n), dta[:, 1:]]).astype(ld)
    q = householder_qty(x, dta[:, 0].astype(ld))
    explained = np.sum(q[1 + lag : 1 + 2 * lag] ** 2)
    ssr_u = np.sum(q[1 + 2 * lag :] ** 2)
    f = explained / lag / (ssr_u / df)
    kappa = (explained + ssr_u) / explained
    fm = mpmath.mpf(str(f))
    p = sf(fm, lag, df)
    h = mpmath.mpf("1e-10")
    cond_p = abs((mpmath.log(sf(fm * (1 + h), lag, df)) - mpmath.log(sf(fm * (1 - h), lag, df))) / (2 * h))
    a, b = mpmath.mpf(df) / 2, mpmath.mpf(lag) / 2
    xb = df / (df + lag * fm)
    mag = abs(a * mpmath.log(xb)) + abs(b * mpmath.log(1 - xb))
    mag += abs(mpmath.loggamma(a)) + abs(mpmath.loggamma(b)) + abs(mpmath.loggamma(a + b))
    return (float(f), float(p), float(kappa), float(cond_p), float(mag))


def main():
    out = open(sys.argv[1], "w")
    series = {}
    for path in sys.argv[2:]:
        name = path.rsplit("/", 1)[-1].split(".")[0].upper()
        series[name] = load(path)
    names = sorted(series)
    months = sorted(set(np.concatenate([month_of(t) for t, _ in series.values()]).tolist()))
    checked, worst = 0, (0.0, None)
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
                    single = statsmodels_ftest(rows_at([longest], lag), lag)[:4]
                    assert single == tuple(gct[lag][0]["ssr_ftest"]), (cause, effect, lag)
                    checked += 1
                    dta = rows_at(parts, lag)
                    n = dta.shape[0]
                    sm = statsmodels_ftest(dta, lag)
                    exact = exact_ftest(dta, lag)
                    key = f"{cause}|{effect}|{m64.astype('datetime64[D]')}|{lag}"
                    if exact is None:
                        assert math.isnan(sm[0]), key
                        out.write(f"{key}|nan|nan|{n - 2 * lag - 1}|{lag}|{n}|nan|nan|nan|{U_REF!r}\n")
                        continue
                    f, p, kappa, cond_p, mag = exact
                    # statsmodels' F against the exact one, within its own bound: the residual
                    # of a backward-stable least-squares solve is off by at most
                    # gamma (1 + 2 cond(X)) relative (Higham, Accuracy and Stability of Numerical
                    # Algorithms, 2nd ed., Theorem 20.3 and eq. 20.11), gamma = n p u; the two
                    # sums' errors are amplified by kappa in their difference.
                    gamma = n * (2 * lag + 1) * U
                    cond_x = float(np.linalg.cond(np.column_stack([np.ones(n), dta[:, 1:]])))
                    bound = 4 * gamma * (1 + 2 * cond_x) * kappa
                    share = abs(sm[0] - f) / (bound * f)
                    assert share <= 1, (key, sm[0], f, bound)
                    if share > worst[0]:
                        worst = (share, key)
                    out.write(
                        f"{key}|{f!r}|{p!r}|{n - 2 * lag - 1}|{lag}|{n}"
                        f"|{kappa!r}|{cond_p!r}|{mag!r}|{U_REF!r}\n"
                    )
    print(
        f"{checked} single-run tests equal grangercausalitytests exactly; statsmodels' F within "
        f"{worst[0]:.2e} of its error bound of the extended-precision F (worst {worst[1]})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
