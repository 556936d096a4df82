// The training step's per-step scalars and device state (step.cu, adamw.cu's
// adamw_update_multi_dev). Layouts must match gpt/src/cuda/kernels/step.rs (repr(C)).
#pragma once

// Written by the host with one copy before each step (outside any captured graph), read by the
// step's kernels, so a graph captured once stays valid for every step.
struct StepParams {
    float lr, beta1, beta2;
    float beta1_correction, beta2_correction;  // 1 - beta^t, computed on the host
    float eps, weight_decay;                   // weight_decay: for the decayed ranges
    float grad_clip;                           // 0 = no clipping
    unsigned int seed;                         // the AdamW stochastic-rounding seed of the step
    unsigned int slot;                         // where the step's (loss, norm) go in the ring
    int micro_batches;                         // step_loss_accumulate calls the loss averages
    int pad;
};  // 48 bytes

// Device-only state carried between the step's kernels.
struct StepState {
    double loss_sum;   // sum over micro batches of each one's mean loss (as the trainer sums)
    float grad_scale;  // the clip factor AdamW applies (step_finish)
    int halted;        // set (and kept) by a non-finite loss or norm: AdamW skips from then on
};  // 16 bytes
