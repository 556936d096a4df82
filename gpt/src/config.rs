//! Model shapes: the named GPT-2/GPT-3 style configurations and their overrides.

use std::fmt;

/// GPT-2's BPE vocabulary (50,000 merges + 256 bytes + `<|endoftext|>`).
pub const GPT2_VOCAB: usize = 50257;

/// The shape of a GPT-2 style model. Everything else (parameter layout, activation arena,
/// FLOPs) derives from these numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// Longest sequence the position embedding covers.
    pub max_seq: usize,
    /// Real vocabulary size (token ids are < this).
    pub vocab: usize,
    /// Vocabulary padded to a multiple of 128 so GEMM tiles divide it; the padded logits are
    /// ignored by the loss and their embedding rows never receive gradient.
    pub padded_vocab: usize,
    pub layers: usize,
    pub heads: usize,
    /// Model width C.
    pub channels: usize,
}

/// The `--model` names, with (layers, channels, heads, max sequence).
pub const MODEL_NAMES: &[(&str, usize, usize, usize, usize)] = &[
    // tiny: ~3.4M parameters, 95% of them the embedding; trains in seconds on a CPU.
    ("tiny", 2, 64, 4, 256),
    // small: the model of the small-scale MXFP4 study (~16M parameters).
    ("small", 4, 256, 4, 256),
    ("124m", 12, 768, 12, 1024),
    // GPT3-345M of the MXFP4 paper.
    ("345m", 24, 1024, 16, 1024),
    ("760m", 36, 1280, 20, 1024),
    ("1.3b", 24, 2048, 16, 2048),
    ("6.7b", 32, 4096, 32, 2048),
];

/// Peak learning rate used when `--lr` is not given: GPT-3's table for the published sizes
/// (Brown et al. 2020, table 2.1), larger for the small test models.
pub fn default_lr(name: &str) -> f32 {
    match name {
        "tiny" => 3e-3,
        "small" => 1e-3,
        "345m" => 3e-4,
        "760m" => 2.5e-4,
        "1.3b" => 2e-4,
        "6.7b" => 1.2e-4,
        _ => 6e-4,
    }
}

pub fn model_names() -> Vec<&'static str> {
    MODEL_NAMES.iter().map(|m| m.0).collect()
}

impl ModelConfig {
    pub fn new(
        layers: usize,
        channels: usize,
        heads: usize,
        max_seq: usize,
    ) -> Result<Self, String> {
        let cfg = ModelConfig {
            max_seq,
            vocab: GPT2_VOCAB,
            padded_vocab: GPT2_VOCAB.div_ceil(128) * 128,
            layers,
            heads,
            channels,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A named configuration (`tiny`, `124m`, `345m`, ...); unknown names list the choices.
    pub fn named(name: &str) -> Result<Self, String> {
        let (_, l, c, h, t) = MODEL_NAMES.iter().find(|m| m.0 == name).ok_or_else(|| {
            format!(
                "unknown --model '{name}': expected one of {}",
                model_names().join(", ")
            )
        })?;
        ModelConfig::new(*l, *c, *h, *t)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.layers == 0 || self.channels == 0 || self.heads == 0 || self.max_seq == 0 {
            return Err(format!(
                "model shape must be positive: layers {}, dim {}, heads {}, max seq {}",
                self.layers, self.channels, self.heads, self.max_seq
            ));
        }
        if self.channels % self.heads != 0 {
            return Err(format!(
                "--dim {} is not divisible by --heads {}: each head needs dim/heads channels",
                self.channels, self.heads
            ));
        }
        Ok(())
    }

    pub fn head_size(&self) -> usize {
        self.channels / self.heads
    }

    /// Number of parameters (counting the padded embedding rows, as the buffers do).
    pub fn num_parameters(&self) -> usize {
        crate::layout::ParamLayout::new(self).total
    }

    /// Model FLOPs per trained token (forward + backward), the convention of PaLM and llm.c:
    /// 6 FLOPs per matmul parameter (2 forward, 4 backward; the matmul parameters are the 12·C²
    /// per block plus the LM head) plus 12·L·C·T for attention's QK^T and PV (counted without
    /// the causal halving, as everyone does, so MFU figures compare).
    pub fn flops_per_token(&self, seq: usize) -> f64 {
        let c = self.channels as f64;
        let l = self.layers as f64;
        let matmul_params = l * 12.0 * c * c + c * self.padded_vocab as f64;
        6.0 * matmul_params + 12.0 * l * c * seq as f64
    }
}

impl fmt::Display for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} layers, dim {}, {} heads (head size {}), max seq {}, vocab {} (padded {})",
            self.layers,
            self.channels,
            self.heads,
            self.head_size(),
            self.max_seq,
            self.vocab,
            self.padded_vocab
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_configs_match_the_published_shapes() {
        let m = ModelConfig::named("345m").unwrap();
        assert_eq!(
            (m.layers, m.channels, m.heads, m.max_seq),
            (24, 1024, 16, 1024)
        );
        assert_eq!(m.padded_vocab, 50304);
        let g = ModelConfig::named("124m").unwrap();
        // GPT-2 small has 124,439,808 parameters with the unpadded vocab; padding adds 47 rows.
        assert_eq!(g.num_parameters(), 124_439_808 + 47 * 768);
        let t = ModelConfig::named("tiny").unwrap();
        assert!(t.num_parameters() < 5_000_000 && t.max_seq >= 256);
    }

    #[test]
    fn unknown_name_lists_choices() {
        let e = ModelConfig::named("huge").unwrap_err();
        assert!(
            e.contains("huge") && e.contains("345m") && e.contains("tiny"),
            "{e}"
        );
    }

    #[test]
    fn heads_must_divide_dim() {
        let e = ModelConfig::new(2, 100, 3, 64).unwrap_err();
        assert!(e.contains("100") && e.contains("3"), "{e}");
    }
}
