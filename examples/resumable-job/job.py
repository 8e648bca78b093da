#!/usr/bin/env python3
"""A job ephemera can run on a disposable worker: daily realized volatility of 1-minute FX bars.

Run by `ephemera-worker exec --fetch … --checkpoint ckpt --checkpoint-to s3://… --outputs out
--to s3://… -- python3 job.py`. It shows what a job needs to do to survive a Spot reclaim:

- its inputs are in the working directory (unpacked there by `--fetch`);
- it keeps its progress in $EPHEMERA_CHECKPOINT, written whole (write, then rename), after every
  chunk and when it gets SIGTERM; ephemera saves that directory to S3 and puts it back before the
  relaunch starts this script again;
- it writes its results under out/, which ephemera stores with a manifest after it exits 0.

Only the standard library: the instance needs nothing but python3.
"""

import csv
import gzip
import json
import math
import os
import signal
import sys
import time

CHUNK = 2000  # bars between checkpoints
PAUSE = float(os.environ.get("JOB_PAUSE_SECONDS", "0.3"))  # a heavier computation, played

stop = False


def on_sigterm(_signum, _frame):
    # The instance is going away: finish the chunk in hand, save, and exit.
    global stop
    stop = True


def save(path, state):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def bars(files):
    for name in files:
        pair = os.path.basename(name).split(".")[0]
        with gzip.open(name, "rt", newline="") as f:
            for row in csv.DictReader(f):
                yield pair, row["dtime"][:10], float(row["close"])


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    worker = int(os.environ.get("EPHEMERA_WORKER", "1"))
    workers = int(os.environ.get("EPHEMERA_WORKERS", "1"))
    checkpoint = os.environ.get("EPHEMERA_CHECKPOINT", "ckpt")
    os.makedirs(checkpoint, exist_ok=True)
    state_path = os.path.join(checkpoint, "state.json")

    # This worker's share of the pairs.
    files = sorted(f for f in os.listdir("bars") if f.endswith(".csv.gz"))
    files = [os.path.join("bars", f) for i, f in enumerate(files) if i % workers == worker - 1]

    state = {"row": 0, "days": {}, "last": {}}
    if os.path.exists(state_path):
        with open(state_path) as f:
            state = json.load(f)
    resumed_from = state["row"]
    print(f"attempt {os.environ.get('EPHEMERA_ATTEMPT', '1')}: {len(files)} pair(s), "
          f"starting at bar {resumed_from}", flush=True)

    for i, (pair, day, close) in enumerate(bars(files)):
        if i < state["row"]:
            continue
        prev = state["last"].get(pair)
        if prev:
            r = math.log(close / prev)
            d = state["days"].setdefault(f"{pair},{day}", [0, 0.0])
            d[0] += 1
            d[1] += r * r
        state["last"][pair] = close
        state["row"] = i + 1
        if state["row"] % CHUNK == 0:
            save(state_path, state)
            print(f"bar {state['row']}: checkpoint saved", flush=True)
            if stop:
                print("SIGTERM: stopping at a checkpoint", file=sys.stderr, flush=True)
                return 0
            time.sleep(PAUSE)

    os.makedirs("out", exist_ok=True)
    with open("out/daily_volatility.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pair", "day", "returns", "realized_volatility"])
        for key in sorted(state["days"]):
            n, ss = state["days"][key]
            w.writerow(key.split(",") + [n, f"{math.sqrt(ss):.8f}"])
    with open("out/result.json", "w") as f:
        json.dump({"bars": state["row"], "days": len(state["days"]),
                   "resumed_from_bar": resumed_from,
                   "attempt": int(os.environ.get("EPHEMERA_ATTEMPT", "1"))}, f)
    print(f"done: {state['row']} bars, {len(state['days'])} pair-days", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
