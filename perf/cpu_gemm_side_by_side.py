#!/usr/bin/env python3
"""mxgpt's CPU sgemm beside PyTorch's (torch.matmul: MKL or OpenBLAS) at the GEMM shapes of a
GPT-2 124M training step, in one JSON (issue 16).

Round after round (interleaved, so a noisy neighbour hits every system alike) it runs
  - each given sgemm_bench binary (`cargo build --release -p gpt --example sgemm_bench`; e.g.
    the build before and after a change) with MXGPT_THREADS=--threads and `--json`;
  - PyTorch in a fresh subprocess: torch.set_num_threads(--threads), the same shapes and the
    same operand layouts (transposed views where mxgpt reads a transposed matrix);
each shape timed as the best of several runs (at least 3 and ~--seconds). Writes per-round
values, the median over rounds per shape, and ratios taken within each round (then the
median over rounds) to perf/results/cpu-gemm-side-by-side_<rows>_<date>_<commit>.json with the
device, date, commit and threads. "step" weighs each shape by its calls per training step.

    python3 perf/cpu_gemm_side_by_side.py --rows 256 --rounds 5 \\
        --bench before=/tmp/sgemm_bench-before --bench after=$CARGO_TARGET_DIR/release/examples/sgemm_bench
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TORCH_CODE = r"""
import json, sys, time, torch
rows, threads, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
shapes = json.loads(sys.argv[4])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
for s in shapes:
    m, n, k = s["m"], s["n"], s["k"]
    # Same layouts as mxgpt: A^T stored when "ta" (wgrad's dY^T), B^T stored when "tb" (W, E).
    a = torch.rand(k, m, generator=g).t() if s["ta"] else torch.rand(m, k, generator=g)
    b = torch.rand(n, k, generator=g).t() if s["tb"] else torch.rand(k, n, generator=g)
    out = torch.empty(m, n)
    torch.matmul(a, b, out=out)
    wall = cpu = float("inf")
    reps, t_start = 0, time.perf_counter()
    while reps < 3 or (time.perf_counter() - t_start < seconds and reps < 50):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.matmul(a, b, out=out)
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
        reps += 1
    print(json.dumps({"name": s["name"], "calls": s["calls"], "m": m, "n": n, "k": k,
                      "wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3, "reps": reps}), flush=True)
"""


def run_bench(path, args):
    env = dict(os.environ, MXGPT_THREADS=str(args.threads), SGEMM_BENCH_SECONDS=str(args.seconds))
    out = subprocess.run([path, str(args.rows), "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run_torch(args, shapes):
    out = subprocess.run([args.python, "-c", TORCH_CODE, str(args.rows), str(args.threads),
                          str(args.seconds), json.dumps(shapes)], check=True,
                         capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def step_ms(entries, key):
    return sum(e["calls"] * e[key] for e in entries)


def write_result(args, benches, labels, rounds, now):
    """Summarizes the rounds so far and (re)writes the result file (after every round, so an
    interrupted run keeps what it measured)."""
    names = [e["name"] for e in rounds[0][labels[0]]]
    med = statistics.median
    per_shape = {}
    for i, name in enumerate(names):
        e0 = rounds[0][labels[0]][i]
        row = {"calls": e0["calls"], "m": e0["m"], "n": e0["n"], "k": e0["k"]}
        flop = 2.0 * e0["m"] * e0["n"] * e0["k"]
        for lab in labels:
            w = med(rd[lab][i]["wall_ms"] for rd in rounds)
            c = med(rd[lab][i]["cpu_ms"] for rd in rounds)
            row[lab] = {"wall_ms": w, "cpu_ms": c, "gflops_wall": flop / w / 1e6,
                        "gflop_per_cpu_s": flop / c / 1e6}
        for lab in labels[:-1]:
            row[f"{lab} speed vs pytorch (wall)"] = med(
                rd["pytorch"][i]["wall_ms"] / rd[lab][i]["wall_ms"] for rd in rounds)
            row[f"{lab} speed vs pytorch (cpu)"] = med(
                rd["pytorch"][i]["cpu_ms"] / rd[lab][i]["cpu_ms"] for rd in rounds)
        per_shape[name] = row
    step = {lab: {"wall_ms": med(step_ms(rd[lab], "wall_ms") for rd in rounds),
                  "cpu_ms": med(step_ms(rd[lab], "cpu_ms") for rd in rounds)} for lab in labels}
    ratios = {}
    for lab in labels[:-1]:
        for key in ("wall_ms", "cpu_ms"):
            ratios[f"{lab} step GEMMs speed vs pytorch ({key[:-3]})"] = med(
                step_ms(rd["pytorch"], key) / step_ms(rd[lab], key) for rd in rounds)
            if lab != labels[0]:
                ratios[f"{lab} step GEMMs speedup vs {labels[0]} ({key[:-3]})"] = med(
                    step_ms(rd[labels[0]], key) / step_ms(rd[lab], key) for rd in rounds)

    import torch  # noqa: E402 (only for its version; the timing ran in subprocesses)
    device = "cpu"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            device = line.split(":", 1)[1].strip()
            break
    commit = args.commit
    doc = {
        "schema": "mxgpt-cpu-gemm-side-by-side-1",
        "device": device,
        "date": now.isoformat(),
        "commit": commit,
        "threads": args.threads,
        "rows": args.rows,
        "rounds": len(rounds),
        "seconds_per_shape": args.seconds,
        "torch": {"version": torch.__version__, "blas": "mkl" if torch.backends.mkl.is_available()
                  else "other"},
        "benches": dict(benches),
        "step_gemm_ms_median": step,
        "ratios": ratios,
        "per_shape_median": per_shape,
        "per_round": rounds,
        "note": args.note or ("best-of-reps per shape per round (wall and process CPU time), "
                              "systems interleaved within each round; ratios per round, then the "
                              "median over rounds; 'step' = sum over shapes of calls x time"),
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"cpu-gemm-side-by-side_{args.rows}_"
                        f"{now.strftime('%Y%m%d-%H%M%S')}_{commit}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(json.dumps({"step_gemm_ms_median": step, "ratios": ratios}, indent=1))
    print("wrote", path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=256, help="B*T (default 256 = 4 x 64)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=0.3, help="per shape and system, per round")
    p.add_argument("--bench", action="append", required=True, help="LABEL=PATH of sgemm_bench")
    p.add_argument("--python", default=sys.executable, help="interpreter with torch")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--note", default="")
    p.add_argument("--commit", default="", help="commit of the measured code (default: HEAD)")
    args = p.parse_args()
    benches = [b.split("=", 1) for b in args.bench]
    labels = [lab for lab, _ in benches] + ["pytorch"]

    rounds = []
    now = datetime.datetime.now(datetime.timezone.utc)
    if not args.commit:
        args.commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip() or "unknown"
    for r in range(args.rounds):
        rd = {}
        for label, path in benches:
            rd[label] = run_bench(path, args)
        shapes = [{key: e[key] for key in ("name", "calls", "m", "n", "k", "ta", "tb")}
                  for e in rd[benches[0][0]]]
        rd["pytorch"] = run_torch(args, shapes)
        rounds.append(rd)
        print(f"round {r + 1}: " + ", ".join(
            f"{lab} step GEMMs {step_ms(rd[lab], 'wall_ms'):.0f} ms" for lab in labels),
            flush=True)
        write_result(args, benches, labels, rounds, now)

if __name__ == "__main__":
    main()
