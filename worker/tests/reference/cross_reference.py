"""Reference for the cross-pair stages, from the CSV files with numpy only.

usage: cross_reference.py OUT CSV...

Cleans each pair as the worker's stated policy says (bad prices dropped, sorted by time, of two
rows with one timestamp the later one wins), then per UTC month writes, one record a line:
  C|currency|ts|index|log_return|pairs|pairs_loaded        (currency index)
  A|triangle|ts|implied|quoted|deviation_bp                 (arbitrage minutes)
  E|triangle|start|end|minutes|peak_bp|mean_bp              (arbitrage events: runs of
                                                            minutes beyond the threshold on one side)
ts in Unix microseconds, floats as repr (exact).
"""

import gzip
import itertools
import math
import sys

import numpy as np

THRESHOLD_BP = 2.0
MIN_MINUTES = 3


def load(path):
    # .csv.gz or .csv, as the worker's seed reads them.
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        header = f.readline().strip().split(",")
        cols = [header.index(c) for c in ("time", "open", "high", "low", "close")]
        a = np.loadtxt(f, delimiter=",", usecols=cols, ndmin=2)
    t, o, h, l, c = (a[:, i] for i in range(5))
    ok = np.all(np.isfinite(a[:, 1:]) & (a[:, 1:] > 0), axis=1)
    ok &= (h >= l) & (o <= h) & (o >= l) & (c <= h) & (c >= l)
    t, c = t[ok].astype(np.int64) * 1_000_000, c[ok]
    order = np.argsort(t, kind="stable")
    t, c = t[order], c[order]
    last = np.append(t[1:] != t[:-1], True)  # the later of equal timestamps
    return t[last], c[last]


def month_of(ts_us):
    return ts_us.astype("datetime64[us]").astype("datetime64[M]")


def main():
    out = open(sys.argv[1], "w")
    series = {}
    for path in sys.argv[2:]:
        name = path.rsplit("/", 1)[-1].split(".")[0].upper()
        series[name] = load(path)
    names = sorted(series)
    months = sorted(set(np.concatenate([month_of(t) for t, _ in series.values()]).tolist()))
    for m in months:
        m = np.datetime64(m, "M")
        part = {}
        for p in names:
            t, c = series[p]
            sel = month_of(t) == m
            if sel.any():
                part[p] = (t[sel], c[sel])
        currency_index(out, part)
        arbitrage(out, part)


def currency_index(out, part):
    currencies = sorted({p[:3] for p in part} | {p[3:] for p in part})
    for cur in currencies:
        legs = [(p, 1.0 if p[:3] == cur else -1.0) for p in sorted(part) if cur in (p[:3], p[3:])]
        grid = np.unique(np.concatenate([part[p][0] for p, _ in legs]))
        # One column per pair: its signed log return at each minute of the grid, NaN where it has
        # no bar or no earlier bar in the month.
        r = np.full((len(grid), len(legs)), np.nan)
        for k, (p, sign) in enumerate(legs):
            t, c = part[p]
            idx = np.searchsorted(grid, t)
            # The C library's log, as the worker's f64::ln: numpy's own log is CPU-dispatched
            # (its AVX-512 kernels round differently), and where a currency's legs nearly cancel
            # an ulp of a leg is a large share of the mean's tolerance.
            r[idx[1:], k] = sign * np.fromiter(map(math.log, c[1:] / c[:-1]), float, len(c) - 1)
        n = np.sum(~np.isnan(r), axis=1)
        total = np.zeros(len(grid))
        for k in range(len(legs)):  # summed in pair order, as a left fold
            total = total + np.where(np.isnan(r[:, k]), 0.0, r[:, k])
        mean = np.where(n > 0, total / np.maximum(n, 1), 0.0)
        index = 100.0 * np.fromiter(map(math.exp, np.cumsum(mean)), float, len(mean))
        for i in range(len(grid)):
            out.write(f"C|{cur}|{grid[i]}|{float(index[i])!r}|{float(mean[i])!r}|{n[i]}|{len(legs)}\n")


def rate(part, a, b):
    """Price of a in b and the pair it comes from, or None."""
    if a + b in part:
        return part[a + b][0], part[a + b][1]
    if b + a in part:
        return part[b + a][0], 1.0 / part[b + a][1]
    return None


# USD, EUR, then FX turnover (BIS Triennial Survey 2022); others after, alphabetically.
VEHICLE_ORDER = ["USD", "EUR", "JPY", "GBP", "CNY", "AUD", "CAD", "CHF", "HKD", "SGD", "SEK", "KRW", "NOK", "NZD"]


def vehicle_of(currencies):
    rank = {c: i for i, c in enumerate(VEHICLE_ORDER)}
    return min(currencies, key=lambda c: (rank.get(c, len(VEHICLE_ORDER)), c))


def arbitrage(out, part):
    found = []
    for trio in itertools.combinations(sorted(part), 3):
        cs = sorted({c for p in trio for c in (p[:3], p[3:])})
        if len(cs) != 3:
            continue
        vehicle = vehicle_of(cs)
        cross = next(p for p in trio if vehicle not in (p[:3], p[3:]))
        found.append((f"{cross} via {vehicle}", cross, vehicle))
    for name, cross, v in sorted(found):
        base, quote = cross[:3], cross[3:]
        (ta, ra), (tb, rb) = rate(part, base, v), rate(part, v, quote)
        tq, q = part[cross]
        common = np.intersect1d(np.intersect1d(tq, ta), tb)
        implied = ra[np.searchsorted(ta, common)] * rb[np.searchsorted(tb, common)]
        quoted = q[np.searchsorted(tq, common)]
        dev = (quoted / implied - 1.0) * 1e4
        for i in range(len(common)):
            out.write(f"A|{name}|{common[i]}|{float(implied[i])!r}|{float(quoted[i])!r}|{float(dev[i])!r}\n")
        side = np.where(dev > THRESHOLD_BP, 1, np.where(dev < -THRESHOLD_BP, -1, 0))
        i = 0
        while i < len(common):
            if side[i] == 0:
                i += 1
                continue
            j = i
            while (
                j + 1 < len(common)
                and side[j + 1] == side[i]
                and common[j + 1] - common[j] == 60_000_000
            ):
                j += 1
            if j - i + 1 >= MIN_MINUTES:
                run = dev[i : j + 1]
                peak = run[np.argmax(np.abs(run))]
                out.write(f"E|{name}|{common[i]}|{common[j]}|{j - i + 1}|{float(peak)!r}|{float(run.mean())!r}\n")
            i = j + 1


if __name__ == "__main__":
    main()
