#!/usr/bin/env python3
"""The MXFP4 step's overhead over the bf16 step on the CPU, before vs after a change (issue 16).

Runs, round after round (interleaved, so a noisy neighbour hits every build alike), each given
tools/bench binary's step suite once per backward mode at two repetition counts under
`perf stat -e task-clock`. The difference of the two runs' CPU time over the difference of
their step counts is the CPU-seconds of one steady-state step (model init, ceilings and warmup
cancel); this is the number to trust on a shared machine, where a process gets a varying share
of the cores and wall time says little. The bench's own median step time and per-phase wall
breakdown (from the longer run) come along. Ratios are taken within each round, then the median
over rounds. Writes perf/results/cpu-mx-overhead_<model>_<date>_<commit>.json.

    python3 perf/cpu_mx_overhead.py --bench before=/path/old/bench --bench after=/path/new/bench \\
        --model 124m --batch 4 --seq 64 --rounds 3
"""

import argparse
import datetime
import glob
import json
import os
import statistics
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "cpu"


def run(path, args, mode, reps, out):
    """CPU-seconds of the whole process (perf stat task-clock) and the bench's step entry."""
    cmd = ["perf", "stat", "-x,", "-e", "task-clock", path, "--suite", "step", "--model",
           args.model, "--batch", str(args.batch), "--seq", str(args.seq), "--backward", mode,
           "--reps", str(reps), "--warmup", "1", "--min-time", "0", "--ceiling-time", "0.2",
           "--out", out]
    env = dict(os.environ, MXGPT_THREADS=str(args.threads))
    p = subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    ms = next(float(l.split(",")[0]) for l in p.stderr.splitlines() if "task-clock" in l)
    newest = max(glob.glob(os.path.join(out, "*.json")), key=os.path.getmtime)
    doc = json.load(open(newest))
    e = next(e for e in doc["entries"] if e.get("suite") == "step" and "stats" in e)
    return ms / 1e3, {"median_ms": e["stats"]["median_ms"], "phase_ms": e["phase_ms"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", action="append", required=True, help="label=path, in order")
    p.add_argument("--model", default="124m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--modes", default="bf16,mxfp4")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", default="1,3", help="the two step counts, lo,hi")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--commit", default=None)
    args = p.parse_args()
    benches = [b.split("=", 1) for b in args.bench]
    modes = args.modes.split(",")
    lo, hi = (int(x) for x in args.reps.split(","))
    rounds = []
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.rounds):
            rd = {"loadavg_start": open("/proc/loadavg").read().split()[:3]}
            for label, path in benches:
                for mode in modes:
                    cpu_lo, _ = run(path, args, mode, lo, out)
                    cpu_hi, entry = run(path, args, mode, hi, out)
                    entry.update(cpu_s_lo=cpu_lo, cpu_s_hi=cpu_hi,
                                 cpu_s_per_step=(cpu_hi - cpu_lo) / (hi - lo))
                    rd.setdefault(label, {})[mode] = entry
                    print(f"round {r} {label} {mode}: {entry['cpu_s_per_step']:.2f} CPU-s/step, "
                          f"median {entry['median_ms']:.0f} ms wall", flush=True)
            rd["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
            rounds.append(rd)

    def med(f):
        return statistics.median(f(rd) for rd in rounds)

    summary = {}
    for label, _ in benches:
        for mode in modes:
            summary[f"{label}/{mode} CPU-s per step"] = med(lambda rd: rd[label][mode]["cpu_s_per_step"])
            summary[f"{label}/{mode} wall ms per step"] = med(lambda rd: rd[label][mode]["median_ms"])
        if "bf16" in modes:
            for mode in modes:
                if mode != "bf16":
                    summary[f"{label}: {mode} / bf16, CPU time"] = med(
                        lambda rd: rd[label][mode]["cpu_s_per_step"] / rd[label]["bf16"]["cpu_s_per_step"])
                    summary[f"{label}: {mode} / bf16, wall"] = med(
                        lambda rd: rd[label][mode]["median_ms"] / rd[label]["bf16"]["median_ms"])
    first = benches[0][0]
    for label, _ in benches[1:]:
        for mode in modes:
            summary[f"{label}/{mode} speedup vs {first}, CPU time"] = med(
                lambda rd: rd[first][mode]["cpu_s_per_step"] / rd[label][mode]["cpu_s_per_step"])
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                           capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc)
    doc = {"what": "MXFP4 vs bf16 CPU step, before vs after (issue 16)", "device": cpu_model(),
           "cores": os.cpu_count(), "threads": args.threads, "date": now.isoformat(),
           "commit": commit, "model": args.model, "batch": args.batch, "seq": args.seq,
           "reps": [lo, hi], "benches": dict(benches), "summary": summary, "rounds": rounds}
    name = f"cpu-mx-overhead_{args.model}_{now.strftime('%Y%m%d-%H%M%S')}_{commit}.json"
    path = os.path.join(ROOT, "perf", "results", name)
    json.dump(doc, open(path, "w"), indent=1)
    print(json.dumps(summary, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
