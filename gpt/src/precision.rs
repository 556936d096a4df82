//! Which precision the backward GEMMs of the linear layers use (docs/numerics.md sections 6
//! and 10).

use std::fmt;
use std::str::FromStr;

/// `--backward` modes. The number in brackets in each doc line is the official code's
/// `BW_USE_MXFP4` value, so results can be compared with the paper's runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackwardMode {
    /// [0] no quantization: dgrad and wgrad in the backend's high precision.
    Bf16,
    /// [1] random Hadamard transform, then round-to-nearest-even MXFP4.
    Mxfp4Rht,
    /// [2] plain OCP MXFP4 with round-to-nearest-even.
    Mxfp4Rtn,
    /// [3] the recipe: random Hadamard transform + stochastic rounding.
    Mxfp4,
    /// [4] stochastic rounding without the Hadamard transform.
    Mxfp4Sr,
    /// NVFP4, NVIDIA's recipe: SR on the gradient, 16-point RHT with one fixed sign vector on
    /// wgrad's operands (no official BW_USE_MXFP4 number).
    Nvfp4,
    /// Plain NVFP4: round to nearest everywhere, no transform (the ablation).
    Nvfp4Rtn,
}

impl BackwardMode {
    pub const ALL: [BackwardMode; 7] = [
        BackwardMode::Bf16,
        BackwardMode::Mxfp4Rtn,
        BackwardMode::Mxfp4Rht,
        BackwardMode::Mxfp4Sr,
        BackwardMode::Mxfp4,
        BackwardMode::Nvfp4Rtn,
        BackwardMode::Nvfp4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackwardMode::Bf16 => "bf16",
            BackwardMode::Mxfp4Rht => "mxfp4-rht",
            BackwardMode::Mxfp4Rtn => "mxfp4-rtn",
            BackwardMode::Mxfp4 => "mxfp4",
            BackwardMode::Mxfp4Sr => "mxfp4-sr",
            BackwardMode::Nvfp4 => "nvfp4",
            BackwardMode::Nvfp4Rtn => "nvfp4-rtn",
        }
    }

    /// The official code's `BW_USE_MXFP4` number (None for the NVFP4 modes, which it lacks).
    pub fn official_number(self) -> Option<u32> {
        match self {
            BackwardMode::Bf16 => Some(0),
            BackwardMode::Mxfp4Rht => Some(1),
            BackwardMode::Mxfp4Rtn => Some(2),
            BackwardMode::Mxfp4 => Some(3),
            BackwardMode::Mxfp4Sr => Some(4),
            BackwardMode::Nvfp4 | BackwardMode::Nvfp4Rtn => None,
        }
    }

    /// Any 4-bit backward (MXFP4 or NVFP4): the backward GEMMs quantize their operands.
    pub fn is_quantized(self) -> bool {
        self != BackwardMode::Bf16
    }

    /// One of the MXFP4 modes (E8M0 scales per 32).
    pub fn is_mxfp4(self) -> bool {
        matches!(
            self,
            BackwardMode::Mxfp4Rtn
                | BackwardMode::Mxfp4Rht
                | BackwardMode::Mxfp4Sr
                | BackwardMode::Mxfp4
        )
    }

    /// One of the NVFP4 modes (E4M3 scales per 16 and a tensor scale).
    pub fn is_nvfp4(self) -> bool {
        matches!(self, BackwardMode::Nvfp4 | BackwardMode::Nvfp4Rtn)
    }

    /// MXFP4's random Hadamard transform with block g on both GEMMs (NVFP4's fixed 16-point
    /// transform on wgrad is part of its recipe, not this).
    pub fn uses_rht(self) -> bool {
        matches!(self, BackwardMode::Mxfp4Rht | BackwardMode::Mxfp4)
    }

    /// Stochastic rounding (of both MXFP4 operands; of the gradient operand in `nvfp4`).
    pub fn uses_sr(self) -> bool {
        matches!(
            self,
            BackwardMode::Mxfp4Sr | BackwardMode::Mxfp4 | BackwardMode::Nvfp4
        )
    }
}

impl fmt::Display for BackwardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackwardMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BackwardMode::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = BackwardMode::ALL.iter().map(|m| m.name()).collect();
                format!(
                    "unknown --backward mode '{s}': expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// `--forward`: the precision of the forward GEMMs of the blocks' linear layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardMode {
    /// The backend's high precision (BF16 on the GPU, FP32 on the CPU).
    Bf16,
    /// E4M3 operands with one scale per tensor, FP32 accumulation (docs/numerics.md section 9).
    Fp8,
}

impl ForwardMode {
    pub const ALL: [ForwardMode; 2] = [ForwardMode::Bf16, ForwardMode::Fp8];

    pub fn name(self) -> &'static str {
        match self {
            ForwardMode::Bf16 => "bf16",
            ForwardMode::Fp8 => "fp8",
        }
    }
}

impl fmt::Display for ForwardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ForwardMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ForwardMode::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown --forward mode '{s}': expected bf16 or fp8"))
    }
}
