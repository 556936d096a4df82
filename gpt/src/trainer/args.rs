//! The command line of `train_gpt`: every option of a training run.

use argh::FromArgs;
use std::path::PathBuf;

/// Train a GPT-2 style model with MXFP4 (or BF16) backward passes.
#[derive(FromArgs, Clone, Debug)]
pub struct TrainArgs {
    /// model: tiny, small, 124m, 345m, 760m, 1.3b, 6.7b (default tiny)
    #[argh(option, default = "String::from(\"tiny\")")]
    pub model: String,
    /// override the number of layers
    #[argh(option)]
    pub layers: Option<usize>,
    /// override the width C
    #[argh(option)]
    pub dim: Option<usize>,
    /// override the number of attention heads
    #[argh(option)]
    pub heads: Option<usize>,
    /// dataset: Megatron prefix, llm.c shard or glob of shards; PREFIX_train/PREFIX_val are
    /// used when they exist (default: the Shakespeare corpus, prepared on first use)
    #[argh(option)]
    pub data: Option<String>,
    /// split one dataset by document ratio into train,val[,test], like Megatron's
    /// --split 949,50,1 (default: PREFIX_train/PREFIX_val files when they exist)
    #[argh(option)]
    pub split: Option<String>,
    /// micro batch size B (default 4)
    #[argh(option, default = "4")]
    pub batch: usize,
    /// sequence length T (default: the model's maximum)
    #[argh(option)]
    pub seq: Option<usize>,
    /// tokens per optimizer step; a multiple of B*T, reached by gradient accumulation
    /// (default B*T)
    #[argh(option)]
    pub total_batch_tokens: Option<usize>,
    /// optimizer steps to train (default 200)
    #[argh(option, default = "200")]
    pub steps: u64,
    /// peak learning rate (default: by model, GPT-3's values: 6e-4 for 124m, 3e-4 for 345m,
    /// 2.5e-4 for 760m, 2e-4 for 1.3b, 1.2e-4 for 6.7b; 3e-3 for tiny, 1e-3 for small)
    #[argh(option)]
    pub lr: Option<f32>,
    /// final learning rate (default lr/10)
    #[argh(option)]
    pub min_lr: Option<f32>,
    /// warmup steps (default: --warmup-fraction of --steps)
    #[argh(option)]
    pub warmup_steps: Option<u64>,
    /// warmup as a fraction of --steps (default 0.05)
    #[argh(option)]
    pub warmup_fraction: Option<f32>,
    /// schedule after warmup: cosine, linear, constant, wsd (default cosine)
    #[argh(option, default = "String::from(\"cosine\")")]
    pub schedule: String,
    /// WSD: fraction of the steps spent decaying (default 0.2)
    #[argh(option, default = "0.2")]
    pub wsd_decay_fraction: f32,
    /// the AdamW beta1 (default 0.9)
    #[argh(option, default = "0.9")]
    pub beta1: f32,
    /// the AdamW beta2 (default 0.95)
    #[argh(option, default = "0.95")]
    pub beta2: f32,
    /// the AdamW epsilon (default 1e-8)
    #[argh(option, default = "1e-8")]
    pub eps: f32,
    /// weight decay on 2-D tensors (default 0.1)
    #[argh(option, default = "0.1")]
    pub weight_decay: f32,
    /// clip the global gradient norm to this (0 = off; default 1.0)
    #[argh(option, default = "1.0")]
    pub grad_clip: f32,
    /// seed for initialization, data order and MXFP4 randomness (default 1337)
    #[argh(option, default = "1337")]
    pub seed: u64,
    /// evaluate the validation loss every N steps (0 = off; default 50)
    #[argh(option, default = "50")]
    pub eval_every: u64,
    /// validation batches per evaluation (default 10)
    #[argh(option, default = "10")]
    pub eval_batches: usize,
    /// print a text sample every N steps (0 = off; default 0)
    #[argh(option, default = "0")]
    pub sample_every: u64,
    /// tokens per text sample (default 64)
    #[argh(option, default = "64")]
    pub sample_tokens: usize,
    /// cpu, cuda or auto (default auto: the GPU when this build has the CUDA backend and a GPU
    /// is present)
    #[argh(option, default = "String::from(\"auto\")")]
    pub device: String,
    /// backward GEMM precision: bf16, mxfp4-rtn, mxfp4-rht, mxfp4-sr, mxfp4 (= RHT + SR; the
    /// recipe), nvfp4 (NVIDIA's recipe), nvfp4-rtn (default bf16)
    #[argh(option, default = "String::from(\"bf16\")")]
    pub backward: String,
    /// forward GEMM precision of the blocks' linear layers: bf16 (the backend's high precision)
    /// or fp8 (E4M3 operands, one scale per tensor) (default bf16)
    #[argh(option, default = "String::from(\"bf16\")")]
    pub forward: String,
    /// FP8 tensor scaling: current (448 / amax of the tensor at each call) or delayed (from the
    /// largest amax of the last --fp8-amax-history training calls) (default current)
    #[argh(option)]
    pub fp8_scaling: Option<String>,
    /// calls in delayed scaling's amax history (default 16)
    #[argh(option)]
    pub fp8_amax_history: Option<usize>,
    /// the Hadamard block size g of the modes with a random Hadamard transform (mxfp4-rht,
    /// mxfp4): 16, 32, 64, 128, 256 (default 64; an error with any other mode)
    #[argh(option)]
    pub hadamard_block: Option<usize>,
    /// the random Hadamard transform's signs: fresh (new signs for every GEMM call, the MXFP4
    /// paper's recipe) or fixed (one sign vector for the whole run, drawn from the seed)
    /// (default fresh; an error with a mode that has no transform)
    #[argh(option)]
    pub hadamard_signs: Option<String>,
    /// keep blocks in BF16 backward: first:N,last:M
    #[argh(option)]
    pub bf16_blocks: Option<String>,
    /// the MX GEMM of the MXFP4 modes on the GPU: auto (the fastest exact path verified on
    /// hardware: bf16), bf16 (dequantized operands on the BF16 tensor cores), int8 (the exact
    /// integer path), tcgen05 (Blackwell FP4 tensor cores; compute capability 10.x) (default auto)
    #[argh(option, default = "String::from(\"auto\")")]
    pub mx_gemm: String,
    /// write JSON lines (train and eval records) to this file
    #[argh(option)]
    pub log_json: Option<PathBuf>,
    /// with a quantized --backward: every N steps, log per linear layer and backward GEMM the
    /// clip and underflow fractions and relative error since the last such record, and measure
    /// that step's quantization noise against the exact GEMM (two extra GEMMs per quantized
    /// GEMM on that step only); 0 turns it off (default 100)
    #[argh(option, default = "100")]
    pub mx_telemetry_every: u64,
    /// directory for checkpoints
    #[argh(option)]
    pub checkpoint_dir: Option<PathBuf>,
    /// write a checkpoint every N steps (0 = only at the end; default 0)
    #[argh(option, default = "0")]
    pub checkpoint_every: u64,
    /// how many checkpoints to keep in --checkpoint-dir (default 3)
    #[argh(option, default = "3")]
    pub keep_checkpoints: usize,
    /// resume from a checkpoint: auto (the newest valid one in --checkpoint-dir, or a fresh
    /// start if there is none) or a path; settings that differ from the checkpoint's are listed
    #[argh(option)]
    pub resume: Option<String>,
    /// skip the optimizer update of a step whose loss or gradient-norm z-score over the last
    /// --outlier-window steps exceeds Z, as llm.c does (default: off)
    #[argh(option)]
    pub skip_outliers: Option<f32>,
    /// steps in the window of the outlier z-scores (default 128)
    #[argh(option, default = "128")]
    pub outlier_window: usize,
    /// read the GPU's NVML counters (power, energy, clocks, ...) every N steps (0 = off;
    /// default 10)
    #[argh(option, default = "10")]
    pub counters_every: u64,
    /// CPU worker threads (default: all cores; also MXGPT_THREADS)
    #[argh(option)]
    pub threads: Option<usize>,
    /// with several ranks: end the job when a collective has waited this many seconds for the
    /// other ranks (one is stuck); must exceed rank 0's evaluation, sampling and model-file
    /// writes, which the others wait for; 0 = wait forever (default 1800)
    #[argh(option, default = "1800.0")]
    pub collective_timeout: f64,
}
