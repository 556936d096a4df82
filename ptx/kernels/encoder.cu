// targets: sm_90a sm_80
//
// Encoder: token + position embedding, forward and deterministic backward.
//
//   forward   out[b,t,c] = wte[tok[b,t], c] + wpe[t, c]            (bf16 in, f32 add, bf16 out)
//   backward  dwte[v,c] += sum over (b,t) with tok[b,t] == v of dout[b,t,c]
//             dwpe[t,c] += sum over b of dout[b,t,c]
//
// Determinism: no float atomics. dwpe: one thread per (t,c) adds its B terms in b order. dwte:
// the positions are grouped by token into an index (CSR form): uniq[u] = token id (ascending),
// starts[u]..starts[u+1] index into positions[], which lists b*T+t ascending within each token.
// One thread per (u,c) adds its terms in that order. Same inputs -> bit-identical gradients on
// every run and every launch geometry.
//
// The index, one int buffer of 2 + 2*cap + 1 + B*T (cap = min(B*T, V), the most distinct tokens
// a batch can have): [nu, rows | uniq[cap] | starts[cap + 1] | positions[B*T]], nu = distinct
// tokens, rows = largest token + 1; entries past nu are unused. Built either on the host (the
// reference: a stable counting sort, gpt/src/cuda/kernels/encoder.rs) or on the device by the
// encoder_index_* kernels below, into preallocated buffers, with the same contents.
//
// Parameters (all pointers are device pointers; tensors row-major, contiguous):
//   encoder_forward(bf16* out[B*T*C], const int* tok[B*T], const bf16* wte[V*C],
//                   const bf16* wpe[maxT*C], int B, int T, int C)
//       block 256, grid ceil(B*T*C / 256). Token ids must be in [0, V): not checked here.
//   encoder_backward_wpe(bf16* dwpe[maxT*C], const bf16* dout[B*T*C], int B, int T, int C)
//       block 256, grid ceil(T*C / 256). Accumulates into dwpe (gradient accumulation).
//   encoder_backward_wte(bf16* dwte[V*C], const bf16* dout[B*T*C], const int* index, int cap,
//                        int C)
//       block 256, grid (ceil(C / 256), any gy <= 65535): block row y handles the tokens
//       u = y, y + gy, ... < nu (nu read from index[0] on the device, so a captured graph stays
//       valid for every batch). Accumulates into dwte rows of the used tokens only.
//
// Device index build (no host work, no allocation; five launches in stream order):
//   encoder_index_clear(int* counts[V], int V)                       grid ceil(V / 256) x 256
//   encoder_index_count(int* counts, const int* tok, int BT, int V)  grid ceil(BT / 256) x 256
//       counts[v] = occurrences of v (integer atomics: the counts do not depend on the order).
//   encoder_index_scan(int* counts, int* tokstart[V], int* index, int V, int cap)   1 x 1024
//       thread k owns tokens [k*per, (k+1)*per), per = ceil(V / 1024); a block scan of the
//       (occurrences, distinct) pairs gives each thread its first offset and first slot; it then
//       writes uniq, starts, tokstart[v] = first offset of token v, resets counts[v] to 0 (the
//       scatter's cursor), and the last thread writes nu and starts[nu] = BT; the thread with the
//       largest token writes rows.
//   encoder_index_scatter(int* counts, const int* tokstart, const int* tok, int* tmp[BT], int BT,
//                         int V)                                    grid ceil(BT / 256) x 256
//       tmp[tokstart[v] + atomicAdd(&counts[v], 1)] = p: every position in its token's segment,
//       in whatever order the atomics ran (so counts[v] is the occurrence count again).
//   encoder_index_order(const int* counts, const int* tokstart, const int* tok, const int* tmp,
//                       int* index, int BT, int V, int cap)          grid ceil(BT / 256) x 256
//       rank of p in its segment = how many of the segment's positions are smaller; positions
//       [tokstart[v] + rank] = p. Positions are distinct, so the result is the ascending order
//       whatever order the scatter left: the host's counting sort, bit for bit.
//   Token ids outside [0, V) are skipped (the backend checks them on the host before upload).
//
// Vectorized variants (same sums in the same order, so the same bits as the kernels above):
//   encoder_forward_vec(same arguments)      block 256, grid ceil(B*T*C / 8 / 256): one thread
//       per 8 channels of one (b, t): one 16-byte load of wte and of wpe, one 16-byte store.
//   encoder_backward_wpe_vec(same arguments) block 256, grid ceil(T*C / 8 / 256): one thread per
//       8 channels of one t, 16-byte loads of dout for b = 0..B-1 in order, 16-byte RMW of dwpe.
//   encoder_backward_wte_vec(same arguments) block (min(256, 32 * ceil(C / 256)), 1),
//       grid (ceil(C / 8 / blockDim.x), gy): one thread per 8 channels of one token row; the
//       positions' dout rows are read 16 bytes per lane (a warp reads 512 contiguous bytes).
//   All three need C % 8 == 0 and every bf16 pointer 16-byte aligned (the launcher checks both
//   and otherwise runs the scalar kernels).
//
// Cost (GPT-2 124M, B*T = 8*1024 = 8192, C = 768): forward reads 2 * 2 B and writes 2 B per
// output element: 6 * 6.3M = 38 MB; 1 add per element, so purely memory-bound: 11 us at the
// H100 SXM's 3.35 TB/s, 8 us at the H200's 4.8 TB/s (wte rows of repeated tokens may hit L2,
// so the HBM bytes can be fewer). Backward reads dout twice (12.6 MB each) plus the touched
// rows of dwte/dwpe (read + write): ~60 MB, ~18 us / 13 us at roofline. The scalar kernels
// issue 2-byte accesses (8x the memory instructions of the vec kernels); the vec kernels keep
// one 16-byte load per input in flight per thread, and the wte kernel's loop over a token's
// positions is unrolled by 4 so that several dout loads are in flight. What limits the wte
// backward is the spread of positions per token (most tokens of a batch occur a few times, so
// each block is short); target >= 80% of measured copy bandwidth for the forward and the wpe
// backward. The device index build (B*T = 8192, V = 50257): clear + scan touch the 200 KB
// counts array a few times and the scan is one block walking V / 1024 = 50 tokens per thread
// (a few microseconds of latency); the order kernel costs the sum over tokens of
// occurrences^2 compares (about 10^6 for a text batch, where the commonest token takes a few
// percent; 6.7 * 10^7 in the worst case, one token repeated B*T times), against the host build's
// O(B*T + V) plus a synchronizing 100 KB upload it replaces. Harness-tested, ptxas-assembled,
// not timed.
#include "common.cuh"
#include "vec.cuh"

extern "C" __global__ void encoder_forward(bf16* out, const int* tok, const bf16* wte,
                                           const bf16* wpe, int B, int T, int C) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t total = (size_t)B * T * C;
    if (idx >= total) return;
    size_t bt = idx / C;
    int c = (int)(idx - bt * C);
    int t = (int)(bt % T);
    int token = tok[bt];
    out[idx] = to_bf16(to_f32(wte[(size_t)token * C + c]) + to_f32(wpe[(size_t)t * C + c]));
}

extern "C" __global__ void encoder_backward_wpe(bf16* dwpe, const bf16* dout, int B, int T, int C) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)T * C) return;
    float acc = 0.0f;
    for (int b = 0; b < B; b++) acc += to_f32(dout[(size_t)b * T * C + idx]);
    dwpe[idx] = to_bf16(to_f32(dwpe[idx]) + acc);
}

extern "C" __global__ void encoder_backward_wte(bf16* dwte, const bf16* dout, const int* index,
                                                int cap, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int nu = index[0];
    const int* uniq = index + 2;
    const int* starts = uniq + cap;
    const int* positions = starts + cap + 1;
    for (int u = blockIdx.y; u < nu; u += gridDim.y) {
        float acc = 0.0f;
        for (int k = starts[u]; k < starts[u + 1]; k++)
            acc += to_f32(dout[(size_t)positions[k] * C + c]);
        size_t dst = (size_t)uniq[u] * C + c;
        dwte[dst] = to_bf16(to_f32(dwte[dst]) + acc);
    }
}

extern "C" __global__ void __launch_bounds__(256)
encoder_forward_vec(bf16* out, const int* tok, const bf16* wte, const bf16* wpe, int B, int T,
                    int C) {
    size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    size_t total = (size_t)B * T * C;
    if (idx >= total) return;  // C % 8 == 0: a vector never crosses a row or the end
    size_t bt = idx / C;
    int c = (int)(idx - bt * C);
    int t = (int)(bt % T);
    int token = tok[bt];
    float a[8], p[8];
    load_bf16x8(a, wte + (size_t)token * C + c);
    load_bf16x8(p, wpe + (size_t)t * C + c);
#pragma unroll
    for (int k = 0; k < 8; k++) a[k] = a[k] + p[k];
    store_bf16x8(out + idx, a);
}

extern "C" __global__ void __launch_bounds__(256)
encoder_backward_wpe_vec(bf16* dwpe, const bf16* dout, int B, int T, int C) {
    size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (idx >= (size_t)T * C) return;
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int b = 0; b < B; b++) {
        float d[8];
        load_bf16x8(d, dout + (size_t)b * T * C + idx);
#pragma unroll
        for (int k = 0; k < 8; k++) acc[k] += d[k];
    }
    float g[8];
    load_bf16x8(g, dwpe + idx);
#pragma unroll
    for (int k = 0; k < 8; k++) g[k] = g[k] + acc[k];
    store_bf16x8(dwpe + idx, g);
}

extern "C" __global__ void __launch_bounds__(256)
encoder_backward_wte_vec(bf16* dwte, const bf16* dout, const int* index, int cap, int C) {
    int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= C) return;
    const int nu = index[0];
    const int* uniq = index + 2;
    const int* starts = uniq + cap;
    const int* positions = starts + cap + 1;
    for (int u = blockIdx.y; u < nu; u += gridDim.y) {
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        int end = starts[u + 1];
#pragma unroll 4
        for (int k = starts[u]; k < end; k++) {
            float d[8];
            load_bf16x8(d, dout + (size_t)positions[k] * C + c);
#pragma unroll
            for (int j = 0; j < 8; j++) acc[j] += d[j];
        }
        bf16* dst = dwte + (size_t)uniq[u] * C + c;
        float g[8];
        load_bf16x8(g, dst);
#pragma unroll
        for (int j = 0; j < 8; j++) g[j] = g[j] + acc[j];
        store_bf16x8(dst, g);
    }
}

// ---- the index on the device (see the header) ----

extern "C" __global__ void encoder_index_clear(int* counts, int V) {
    int v = blockIdx.x * blockDim.x + threadIdx.x;
    if (v < V) counts[v] = 0;
}

extern "C" __global__ void encoder_index_count(int* counts, const int* tok, int BT, int V) {
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= BT) return;
    int v = tok[p];
    if ((unsigned)v < (unsigned)V) atomicAdd(&counts[v], 1);
}

#define EI_SCAN_THREADS 1024

extern "C" __global__ void __launch_bounds__(EI_SCAN_THREADS)
encoder_index_scan(int* counts, int* tokstart, int* index, int V, int cap) {
    __shared__ int s_occ[EI_SCAN_THREADS];
    __shared__ int s_nz[EI_SCAN_THREADS];
    const int tid = threadIdx.x, nt = blockDim.x;
    const int per = (V + nt - 1) / nt;
    const int v0 = min(V, tid * per), v1 = min(V, v0 + per);
    int occ = 0, nz = 0;
    for (int v = v0; v < v1; v++) {
        int n = counts[v];
        occ += n;
        nz += n > 0;
    }
    s_occ[tid] = occ;
    s_nz[tid] = nz;
    __syncthreads();
    // Inclusive scan (Hillis-Steele): log2(1024) = 10 rounds of two barriers.
    for (int off = 1; off < nt; off <<= 1) {
        int a = tid >= off ? s_occ[tid - off] : 0;
        int b = tid >= off ? s_nz[tid - off] : 0;
        __syncthreads();
        s_occ[tid] += a;
        s_nz[tid] += b;
        __syncthreads();
    }
    const int nu = s_nz[nt - 1];
    int offset = s_occ[tid] - occ, slot = s_nz[tid] - nz;
    int* uniq = index + 2;
    int* starts = uniq + cap;
    int last = -1;
    for (int v = v0; v < v1; v++) {
        int n = counts[v];
        if (n > 0) {
            uniq[slot] = v;
            starts[slot] = offset;
            tokstart[v] = offset;
            counts[v] = 0;
            slot++;
            offset += n;
            last = v;
        }
    }
    if (last >= 0 && slot == nu) index[1] = last + 1;  // the thread holding the largest token
    if (tid == nt - 1) {
        index[0] = nu;
        starts[nu] = s_occ[nt - 1];
        if (nu == 0) index[1] = 0;
    }
}

extern "C" __global__ void encoder_index_scatter(int* counts, const int* tokstart, const int* tok,
                                                 int* tmp, int BT, int V) {
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= BT) return;
    int v = tok[p];
    if ((unsigned)v >= (unsigned)V) return;
    tmp[tokstart[v] + atomicAdd(&counts[v], 1)] = p;
}

extern "C" __global__ void encoder_index_order(const int* counts, const int* tokstart,
                                               const int* tok, const int* tmp, int* index, int BT,
                                               int V, int cap) {
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= BT) return;
    int v = tok[p];
    if ((unsigned)v >= (unsigned)V) return;
    const int s = tokstart[v], n = counts[v];
    int rank = 0;
    for (int j = s; j < s + n; j++) rank += tmp[j] < p;
    int* positions = index + 2 + 2 * cap + 1;
    positions[s + rank] = p;
}
