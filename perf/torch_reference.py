#!/usr/bin/env python3
"""The official recipe's approach to an MXFP4 backward, in PyTorch, for side-by-side timing with
mxgpt on the same GPU: fake quantization (quantize-dequantize the operands with PyTorch ops,
then an ordinary BF16 torch.matmul), as the "Training LLMs with MXFP4" code does through
microxcaling.

Two measurements, both written to one JSON result (device, date, commit) under perf/results:

  gemm  every backward GEMM of the model's linear layers (dgrad and wgrad of qkv, attproj, fc,
        fcproj at B*T tokens): torch.matmul on BF16 operands, and the fake-quant MXFP4 version
        (RHT g=64 + stochastic rounding on both operands along K, then the BF16 matmul and the
        16/9 correction), so the quantization's cost shows per GEMM;
  step  one GPT-2 training step (forward, backward, AdamW) in plain PyTorch with BF16 autocast,
        with the linear layers' backward GEMMs in BF16 and in fake-quant MXFP4: the MXFP4 step
        overhead of the PyTorch approach, to compare with mxgpt's (`bench --suite step`).

The quantizer follows docs/numerics.md (E2M1 with an E8M0 scale per 32 elements along K, the
shared exponent floor(log2 amax) - 2 from frexp, SR after a 3/4 pre-scale, RTN ties to even);
its random numbers come from torch.rand, not mxgpt's Philox streams, so SR codes differ from
mxgpt's while the distribution is the same (RTN agreed with `tools/mx quantize` bit for bit on
random rows spanning 2^-10..2^10, ties and clipping values, checked on the CPU when this was
written). It is a timing reference, not a numerics reference.

    python3 perf/torch_reference.py --model 124m --batch 8 --seq 1024 [--out perf/results]

Needs PyTorch with CUDA (a GPU host has it). CPU mode (`--device cpu`, issue 16): the same step
in FP32 (`--precision fp32`, the CPU default: mxgpt's CPU math), `torch.set_num_threads(--threads)`
(default MXGPT_THREADS, else all cores), measured in eager mode and under torch.compile
(`--variants eager,compile`); perf/cpu_side_by_side.py runs it beside tools/bench.

    python3 perf/torch_reference.py --device cpu --suite step --model 124m --batch 4 --seq 64 \
        --variants eager,compile --modes bf16
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

MODELS = {  # name: (layers, channels, heads, max_seq); vocab 50257 padded to 50304
    "tiny": (2, 64, 4, 256),
    "small": (4, 256, 4, 256),
    "124m": (12, 768, 12, 1024),
    "345m": (24, 1024, 16, 1024),
}
VOCAB, PADDED_VOCAB = 50257, 50304
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


# ---- fake quantization (quantize, then dequantize) along the last dimension ----


def hadamard(g, device):
    """H_g / sqrt(g), the Sylvester Hadamard matrix scaled to be orthonormal."""
    h = torch.ones(1, 1)
    while h.shape[0] < g:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(g)).to(device)


def rht(x, signs, h):
    """x [rows, K] -> each g-segment along K becomes H (s * x): one batched matmul in FP32."""
    rows, k = x.shape
    g = signs.numel()
    seg = (x.float().view(rows, k // g, g) * signs)
    return (seg @ h).view(rows, k)


def fake_quant_mxfp4(x, sr):
    """Quantize-dequantize x [rows, K] in MX blocks of 32 along K; returns FP32 values q * 2^e
    (without SR's 4/3, which the caller applies once as 16/9 to the product)."""
    rows, k = x.shape
    b = x.float().view(rows, k // 32, 32)
    amax = b.abs().amax(dim=-1, keepdim=True)
    _, exp = torch.frexp(amax)  # amax = m 2^exp, m in [0.5, 1): floor(log2 amax) = exp - 1
    e = torch.clamp(exp - 3, -127, 127)
    e = torch.where(amax > 0, e, torch.full_like(e, -127))
    y = torch.ldexp(b, -e)  # exact power-of-two scaling
    a = y.abs()
    grid = E2M1.to(x.device)
    if sr:
        a = a * 0.75
        lo_idx = (a.unsqueeze(-1) >= grid).sum(-1) - 1  # grid point at or below a
        lo = grid[lo_idx]
        hi = grid[torch.clamp(lo_idx + 1, max=7)]
        p = torch.where(hi > lo, (a - lo) / (hi - lo), torch.zeros_like(a))
        q = torch.where(torch.rand_like(a) < p, hi, lo)
    else:
        # Round to nearest, ties to the even code: count the thresholds passed (strict where the
        # tie goes down, inclusive where it goes up).
        t = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], device=x.device)
        inclusive = torch.tensor([0, 1, 0, 1, 0, 1, 0], dtype=torch.bool, device=x.device)
        passed = torch.where(inclusive, a.unsqueeze(-1) >= t, a.unsqueeze(-1) > t)
        q = grid[passed.sum(-1)]
    return (torch.sign(y) * torch.ldexp(q, e)).view(rows, k)


def mx_matmul(a, b_t, signs, h, sr=True):
    """C = A B with A [M, K] and B given as B^T [N, K], both fake-quantized along K after the
    same RHT; BF16 matmul, FP32 correction 16/9 for SR."""
    if signs is not None:
        a, b_t = rht(a, signs, h), rht(b_t, signs, h)
    qa = fake_quant_mxfp4(a, sr).to(torch.bfloat16)
    qb = fake_quant_mxfp4(b_t, sr).to(torch.bfloat16)
    c = qa @ qb.t()
    return c * (16.0 / 9.0) if sr else c


class MxLinearFn(torch.autograd.Function):
    """y = x W^T + b with the backward GEMMs in fake-quant MXFP4 (RHT + SR): dgrad reduces over
    the output features, wgrad over the tokens, fresh signs per call."""

    @staticmethod
    def forward(ctx, x, w, b, g):
        ctx.save_for_backward(x, w)
        ctx.g = g
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        g = ctx.g
        dev = dy.device
        h = hadamard(g, dev)
        lead = dy.shape[:-1]
        dy2 = dy.reshape(-1, dy.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        signs = (torch.randint(0, 2, (g,), device=dev) * 2 - 1).float()
        dx = mx_matmul(dy2, w.t().contiguous(), signs, h)  # [rows, oc] . [oc, ic]
        signs = (torch.randint(0, 2, (g,), device=dev) * 2 - 1).float()
        dw = mx_matmul(dy2.t().contiguous(), x2.t().contiguous(), signs, h)  # [oc, rows] . [rows, ic]
        db = dy2.sum(0)
        return dx.reshape(*lead, -1).to(dy.dtype), dw.to(w.dtype), db.to(w.dtype), None


class Linear(torch.nn.Linear):
    def __init__(self, i, o, mx):
        super().__init__(i, o)
        self.mx = mx

    def forward(self, x):
        if self.mx:
            return MxLinearFn.apply(x, self.weight, self.bias, 64)
        return super().forward(x)


class Block(torch.nn.Module):
    def __init__(self, c, nh, mx):
        super().__init__()
        self.nh = nh
        self.ln1, self.ln2 = torch.nn.LayerNorm(c), torch.nn.LayerNorm(c)
        self.qkv, self.proj = Linear(c, 3 * c, mx), Linear(c, c, mx)
        self.fc, self.fcproj = Linear(c, 4 * c, mx), Linear(4 * c, c, mx)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.nh, c // self.nh).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(torch.nn.Module):
    def __init__(self, layers, c, nh, max_seq, mx):
        super().__init__()
        self.wte = torch.nn.Embedding(PADDED_VOCAB, c)
        self.wpe = torch.nn.Embedding(max_seq, c)
        self.blocks = torch.nn.ModuleList(Block(c, nh, mx) for _ in range(layers))
        self.lnf = torch.nn.LayerNorm(c)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.lnf(x) @ self.wte.weight.t()  # tied LM head, kept in high precision
        return F.cross_entropy(logits[..., :VOCAB].float().flatten(0, 1), targets.flatten())


# ---- timing ----


def timed(fn, warmup, reps, device):
    """Median milliseconds of fn() over reps after warmup (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"median_ms": samples[len(samples) // 2], "min_ms": samples[0], "max_ms": samples[-1],
            "reps": reps}


def gemm_entries(layers, c, rows, device, warmup, reps):
    """Each linear layer's dgrad and wgrad: BF16 matmul vs fake-quant MXFP4 matmul."""
    entries = []
    h = hadamard(64, device)
    signs = (torch.randint(0, 2, (64,), device=device) * 2 - 1).float()
    for name, ic, oc in [("qkv", c, 3 * c), ("attproj", c, c), ("fc", c, 4 * c), ("fcproj", 4 * c, c)]:
        dy = torch.randn(rows, oc, device=device, dtype=torch.bfloat16) * 1e-3
        x = torch.randn(rows, ic, device=device, dtype=torch.bfloat16)
        w = torch.randn(oc, ic, device=device, dtype=torch.bfloat16) * 0.02
        for what, a, b_t, (m, n, k) in [
            ("dgrad", dy, w.t().contiguous(), (rows, ic, oc)),
            ("wgrad", dy.t().contiguous(), x.t().contiguous(), (oc, ic, rows)),
        ]:
            flops = 2.0 * m * n * k
            for variant, fn in [
                ("bf16", lambda: a @ b_t.t()),
                ("mxfp4_fakequant", lambda: mx_matmul(a, b_t, signs, h)),
            ]:
                st = timed(fn, warmup, reps, device)
                entries.append({"suite": "torch_gemm", "name": f"{variant}/{name}/{what}",
                                "shape": f"M={m} N={n} K={k}", "stats": st, "flops": flops,
                                "tflops": flops / (st["median_ms"] * 1e-3) / 1e12})
    return entries


def step_entries(cfg, batch, seq, device, warmup, reps, precision="bf16", variants=("eager",),
                 modes=("bf16", "mxfp4_fakequant")):
    """One training step in plain PyTorch, BF16 backward vs fake-quant MXFP4 backward; per
    variant: eager, or torch.compile of the model (inductor)."""
    layers, c, nh, max_seq = cfg
    entries = []
    for variant in variants:
        for mode in modes:
            mx = mode == "mxfp4_fakequant"
            torch.manual_seed(0)
            model = GPT(layers, c, nh, max_seq, mx).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1,
                                    fused=device == "cuda")
            fwd = torch.compile(model) if variant == "compile" else model
            idx = torch.randint(0, VOCAB, (batch, seq), device=device)
            tgt = torch.randint(0, VOCAB, (batch, seq), device=device)

            def step():
                if precision == "bf16":
                    with torch.autocast(device_type=device, dtype=torch.bfloat16):
                        loss = fwd(idx, tgt)
                else:
                    loss = fwd(idx, tgt)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            st = timed(step, warmup, reps, device)
            name = mode if variant == "eager" else f"{variant}/{mode}"
            entries.append({"suite": "torch_step", "name": name, "mode": mode,
                            "variant": variant, "precision": precision,
                            "shape": f"B={batch} T={seq} L={layers} C={c}", "stats": st,
                            "tokens_per_s": batch * seq / (st["median_ms"] * 1e-3)})
            del model, opt, fwd
        if len(modes) == 2:
            bf16, mx = entries[-2]["stats"]["median_ms"], entries[-1]["stats"]["median_ms"]
            entries[-1]["overhead_vs_bf16"] = mx / bf16 - 1.0
    return entries


def commit():
    """The bundle's COMMIT file when run from a bundle, else git, else unknown."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in [os.path.join(here, "..", "COMMIT"), os.path.join(here, "COMMIT")]:
        if os.path.exists(path):
            return open(path).read().strip()
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                                       stderr=subprocess.DEVNULL).decode().strip()
    except Exception:
        return "unknown"


def cpu_name():
    """The CPU model from /proc/cpuinfo (as tools/bench names it), else "cpu"."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="124m", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--suite", default="gemm,step", help="gemm, step or both (comma list)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default="perf/results")
    p.add_argument("--precision", choices=["bf16", "fp32"],
                   help="autocast dtype of the step (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--threads", type=int,
                   help="torch.set_num_threads on the CPU (default MXGPT_THREADS, else all)")
    p.add_argument("--variants", default="eager", help="step variants: eager, compile (comma)")
    p.add_argument("--modes", default="bf16,mxfp4_fakequant", help="step backward modes (comma)")
    args = p.parse_args()
    if args.device == "cpu":
        threads = args.threads or int(os.environ.get("MXGPT_THREADS", "0")) or os.cpu_count()
        torch.set_num_threads(threads)
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_reference: --device cuda but PyTorch sees no GPU")
    cfg = MODELS[args.model]
    suites = args.suite.split(",")
    entries = []
    if "gemm" in suites:
        entries += gemm_entries(cfg[0], cfg[1], args.batch * args.seq, args.device, args.warmup,
                                args.reps)
    if "step" in suites:
        entries += step_entries(cfg, args.batch, args.seq, args.device, args.warmup, args.reps,
                                precision, tuple(args.variants.split(",")),
                                tuple(args.modes.split(",")))
    name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    now = datetime.datetime.now(datetime.timezone.utc)
    doc = {"schema": "mxgpt-torch-reference-1", "device": name, "date": now.isoformat(),
           "commit": commit(), "torch": torch.__version__, "model": args.model,
           "batch": args.batch, "seq": args.seq, "threads": torch.get_num_threads(),
           "precision": precision, "entries": entries}
    os.makedirs(args.out, exist_ok=True)
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    path = os.path.join(args.out, f"torch-{slug}_{now:%Y%m%d-%H%M%S}_{doc['commit']}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)
    for e in entries:
        extra = f" {e['tflops']:.1f} TFLOP/s" if "tflops" in e else ""
        extra += f" overhead {100 * e['overhead_vs_bf16']:+.1f}%" if "overhead_vs_bf16" in e else ""
        print(f"{e['name']:<36} {e['shape']:<24} {e['stats']['median_ms']:9.3f} ms{extra}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
