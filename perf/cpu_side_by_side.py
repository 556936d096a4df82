#!/usr/bin/env python3
"""mxgpt's CPU training step beside PyTorch's on the same machine, in one JSON (issue 16).

Runs, round after round (interleaved, so a noisy neighbour hits every system alike):
  - each given tools/bench binary (e.g. the build before and after a change): the step suite,
    `--backward bf16,mxfp4`, at one model and shape;
  - perf/torch_reference.py --device cpu: the same GPT-2 step in FP32, eager and torch.compile,
    with torch.set_num_threads equal to mxgpt's thread count;
then writes the per-round medians, the median over rounds and the ratios (taken within each
round, then the median over rounds) to
perf/results/cpu-side-by-side_<model>_<date>_<commit>.json (device, date, commit, threads).

    python3 perf/cpu_side_by_side.py --model 124m --batch 4 --seq 64 --rounds 3 \\
        --bench before=/path/to/old/bench --bench after=target/release/bench \\
        --python /work/venv-torch/bin/python

Needs PyTorch in --python's environment (PyPI's wheel runs on the CPU); `--no-torch` skips it.
"""

import argparse
import datetime
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_bench(path, args, threads, out):
    cmd = [path, "--suite", "step", "--model", args.model, "--batch", str(args.batch), "--seq",
           str(args.seq), "--backward", args.modes, "--reps", str(args.reps), "--warmup", "1",
           "--min-time", "0", "--ceiling-time", "0.2", "--out", out]
    env = dict(os.environ, MXGPT_THREADS=str(threads))
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    newest = max(glob.glob(os.path.join(out, "*.json")), key=os.path.getmtime)
    doc = json.load(open(newest))
    res = {}
    for e in doc["entries"]:
        if e.get("suite") == "step" and "stats" in e:
            res[e["mode"]] = {"median_ms": e["stats"]["median_ms"], "phase_ms": e["phase_ms"]}
    return res, doc.get("device_name", "cpu")


def run_torch(args, threads, out):
    cmd = [args.python, os.path.join(HERE, "torch_reference.py"), "--device", "cpu", "--suite",
           "step", "--model", args.model, "--batch", str(args.batch), "--seq", str(args.seq),
           "--precision", "fp32", "--threads", str(threads), "--variants", args.torch_variants,
           "--modes", "bf16", "--warmup", "2", "--reps", str(args.reps), "--out", out]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    newest = max(glob.glob(os.path.join(out, "torch-*.json")), key=os.path.getmtime)
    doc = json.load(open(newest))
    return {e["variant"]: {"median_ms": e["stats"]["median_ms"]} for e in doc["entries"]}, doc


def summarize(rounds, labels, with_torch):
    """Ratios taken within each round (systems side by side under the same load), then the
    median over rounds: a load spike that hits one round moves both sides of its ratios."""
    def med(f):
        return statistics.median(f(rd) for rd in rounds)

    ratios = {}
    for label in labels:
        for m in rounds[0][label]:
            if with_torch:
                for v in rounds[0]["pytorch"]:
                    ratios[f"{label}/{m} speed vs pytorch {v}"] = med(
                        lambda rd: rd["pytorch"][v]["median_ms"] / rd[label][m]["median_ms"])
            if label != labels[0]:
                ratios[f"{label}/{m} speedup vs {labels[0]}"] = med(
                    lambda rd: rd[labels[0]][m]["median_ms"] / rd[label][m]["median_ms"])
    return ratios


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="124m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3, help="timed steps per system per round")
    p.add_argument("--modes", default="bf16,mxfp4", help="mxgpt backward modes")
    p.add_argument("--bench", action="append", default=[],
                   help="LABEL=PATH of a tools/bench binary (repeatable; default: this build)")
    p.add_argument("--python", default=sys.executable, help="python with torch")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--torch-variants", default="eager,compile", help="eager, compile (comma)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("MXGPT_THREADS", "0"))
                   or os.cpu_count())
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    benches = [b.split("=", 1) for b in args.bench] or [["mxgpt",
                                                         os.path.join(target, "release/bench")]]
    rounds = []
    device = "cpu"
    torch_meta = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            row = {}
            for label, path in benches:
                row[label], device = run_bench(path, args, args.threads, tmp)
                print(f"round {r + 1} {label}: " + ", ".join(
                    f"{m} {v['median_ms']:.0f} ms" for m, v in row[label].items()), flush=True)
            if not args.no_torch:
                row["pytorch"], doc = run_torch(args, args.threads, tmp)
                torch_meta = {"torch": doc["torch"], "threads": doc["threads"]}
                print(f"round {r + 1} pytorch: " + ", ".join(
                    f"{m} {v['median_ms']:.0f} ms" for m, v in row["pytorch"].items()), flush=True)
            rounds.append(row)
    summary = {}
    for system in rounds[0]:
        summary[system] = {m: statistics.median(rd[system][m]["median_ms"] for rd in rounds)
                           for m in rounds[0][system]}
    ratios = summarize(rounds, [label for label, _ in benches], not args.no_torch)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    now = datetime.datetime.now(datetime.timezone.utc)
    doc = {"schema": "mxgpt-cpu-side-by-side-1", "device": device, "date": now.isoformat(),
           "commit": commit, "threads": args.threads, "model": args.model, "batch": args.batch,
           "seq": args.seq, "reps_per_round": args.reps, "rounds": rounds,
           "median_over_rounds_ms": summary, "ratios": ratios,
           "benches": {label: path for label, path in benches}, "pytorch": torch_meta,
           "note": "interleaved rounds on one machine; pytorch in FP32 (eager and "
                   "torch.compile), mxgpt bf16 = FP32 math on the CPU"}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out,
                        f"cpu-side-by-side_{args.model}_{now:%Y%m%d-%H%M%S}_{commit}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    for system, modes in summary.items():
        print(f"{system:<10} " + ", ".join(f"{m} {ms:.0f} ms" for m, ms in modes.items()))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
