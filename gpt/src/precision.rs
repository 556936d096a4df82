//! Which precision the backward GEMMs of the linear layers use (MXFP4.md section 5).

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
}

impl BackwardMode {
    pub const ALL: [BackwardMode; 5] = [
        BackwardMode::Bf16,
        BackwardMode::Mxfp4Rtn,
        BackwardMode::Mxfp4Rht,
        BackwardMode::Mxfp4Sr,
        BackwardMode::Mxfp4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackwardMode::Bf16 => "bf16",
            BackwardMode::Mxfp4Rht => "mxfp4-rht",
            BackwardMode::Mxfp4Rtn => "mxfp4-rtn",
            BackwardMode::Mxfp4 => "mxfp4",
            BackwardMode::Mxfp4Sr => "mxfp4-sr",
        }
    }

    /// The official code's `BW_USE_MXFP4` number.
    pub fn official_number(self) -> u32 {
        match self {
            BackwardMode::Bf16 => 0,
            BackwardMode::Mxfp4Rht => 1,
            BackwardMode::Mxfp4Rtn => 2,
            BackwardMode::Mxfp4 => 3,
            BackwardMode::Mxfp4Sr => 4,
        }
    }

    pub fn is_mxfp4(self) -> bool {
        self != BackwardMode::Bf16
    }

    pub fn uses_rht(self) -> bool {
        matches!(self, BackwardMode::Mxfp4Rht | BackwardMode::Mxfp4)
    }

    pub fn uses_sr(self) -> bool {
        matches!(self, BackwardMode::Mxfp4Sr | BackwardMode::Mxfp4)
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
