//! Where every tensor lives: one parameter buffer (and a gradient buffer of the same shape), one
//! activation arena sized from (config, B, T), and a small scratch arena for activation
//! gradients. Plain offsets, as in llm.c, so every backend sees the same memory map and a
//! checkpoint is just the parameter buffer.

use crate::config::ModelConfig;
use std::ops::Range;

/// The memory regions a backend owns. A `TensorRef` names a span inside one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arena {
    Params,
    Grads,
    Acts,
    /// Activation gradients: a handful of [B*T, *] buffers reused by every layer.
    Scratch,
    /// Per-row statistics kept in FP32 on every backend: layernorm mean and 1/std, attention
    /// log-sum-exp, per-row losses (BF16 would lose the precision the backward needs).
    Stats,
}

/// A span of `len` elements at `offset` in one arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorRef {
    pub arena: Arena,
    pub offset: usize,
    pub len: usize,
}

impl TensorRef {
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
    pub fn overlaps(&self, other: &TensorRef) -> bool {
        self.arena == other.arena
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }
}

/// The parameter tensors, in llm.c's order (each per-layer kind stored as [L, ...] contiguous).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    Wte,
    Wpe,
    Ln1W,
    Ln1B,
    QkvW,
    QkvB,
    AttProjW,
    AttProjB,
    Ln2W,
    Ln2B,
    FcW,
    FcB,
    FcProjW,
    FcProjB,
    LnfW,
    LnfB,
}

#[derive(Clone, Debug)]
pub struct ParamTensor {
    pub kind: ParamKind,
    pub name: &'static str,
    pub offset: usize,
    /// 1 for wte/wpe/lnf, L for the per-layer kinds.
    pub copies: usize,
    /// Shape of one copy: [rows, cols] for matrices, [len] as [len, 1]... see `is_matrix`.
    pub rows: usize,
    pub cols: usize,
    pub is_matrix: bool,
}

impl ParamTensor {
    pub fn elements_per_copy(&self) -> usize {
        self.rows * self.cols
    }
    pub fn len(&self) -> usize {
        self.copies * self.elements_per_copy()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// AdamW decays 2-D tensors only (matrices and embeddings), never biases or LN gains.
    pub fn weight_decay(&self) -> bool {
        self.is_matrix
    }
}

#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub tensors: Vec<ParamTensor>,
    pub total: usize,
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        let (l, c, vp, t) = (cfg.layers, cfg.channels, cfg.padded_vocab, cfg.max_seq);
        use ParamKind::*;
        let specs: [(ParamKind, &'static str, usize, usize, usize, bool); 16] = [
            (Wte, "wte", 1, vp, c, true),
            (Wpe, "wpe", 1, t, c, true),
            (Ln1W, "ln1w", l, c, 1, false),
            (Ln1B, "ln1b", l, c, 1, false),
            (QkvW, "qkvw", l, 3 * c, c, true),
            (QkvB, "qkvb", l, 3 * c, 1, false),
            (AttProjW, "attprojw", l, c, c, true),
            (AttProjB, "attprojb", l, c, 1, false),
            (Ln2W, "ln2w", l, c, 1, false),
            (Ln2B, "ln2b", l, c, 1, false),
            (FcW, "fcw", l, 4 * c, c, true),
            (FcB, "fcb", l, 4 * c, 1, false),
            (FcProjW, "fcprojw", l, c, 4 * c, true),
            (FcProjB, "fcprojb", l, c, 1, false),
            (LnfW, "lnfw", 1, c, 1, false),
            (LnfB, "lnfb", 1, c, 1, false),
        ];
        let mut tensors = Vec::with_capacity(specs.len());
        let mut offset = 0;
        for (kind, name, copies, rows, cols, is_matrix) in specs {
            let t = ParamTensor {
                kind,
                name,
                offset,
                copies,
                rows,
                cols,
                is_matrix,
            };
            offset += t.len();
            tensors.push(t);
        }
        ParamLayout {
            tensors,
            total: offset,
        }
    }

    pub fn tensor(&self, kind: ParamKind) -> &ParamTensor {
        self.tensors
            .iter()
            .find(|t| t.kind == kind)
            .expect("every kind is in the layout")
    }

    /// The parameter span of `kind` for `layer` (layer 0 for the unique tensors).
    pub fn param(&self, kind: ParamKind, layer: usize) -> TensorRef {
        self.span(Arena::Params, kind, layer)
    }

    /// The gradient span matching `param(kind, layer)`.
    pub fn grad(&self, kind: ParamKind, layer: usize) -> TensorRef {
        self.span(Arena::Grads, kind, layer)
    }

    fn span(&self, arena: Arena, kind: ParamKind, layer: usize) -> TensorRef {
        let t = self.tensor(kind);
        assert!(
            layer < t.copies,
            "{} has {} copies, asked for layer {layer}",
            t.name,
            t.copies
        );
        let n = t.elements_per_copy();
        TensorRef {
            arena,
            offset: t.offset + layer * n,
            len: n,
        }
    }
}

/// Activations of one layer, saved by the forward pass for the backward pass.
#[derive(Clone, Copy, Debug)]
pub struct LayerActs {
    pub ln1: TensorRef,       // [BT, C]
    pub ln1_mean: TensorRef,  // [BT]
    pub ln1_rstd: TensorRef,  // [BT]
    pub qkv: TensorRef,       // [BT, 3C]
    pub atty: TensorRef,      // [BT, C]
    pub att_lse: TensorRef,   // [B, NH, T] log-sum-exp of each softmax row (flash style)
    pub attproj: TensorRef,   // [BT, C]
    pub residual2: TensorRef, // [BT, C]
    pub ln2: TensorRef,       // [BT, C]
    pub ln2_mean: TensorRef,  // [BT]
    pub ln2_rstd: TensorRef,  // [BT]
    pub fch: TensorRef,       // [BT, 4C] pre-GELU
    pub fch_gelu: TensorRef,  // [BT, 4C]
    pub fcproj: TensorRef,    // [BT, C]
    pub residual3: TensorRef, // [BT, C]
}

/// The activation arena and the activation-gradient scratch for micro batch B x T.
#[derive(Clone, Debug)]
pub struct ActLayout {
    pub batch: usize,
    pub seq: usize,
    pub encoded: TensorRef, // [BT, C] the residual stream entering layer 0
    pub layers: Vec<LayerActs>,
    pub lnf: TensorRef,      // [BT, C]
    pub lnf_mean: TensorRef, // [BT]
    pub lnf_rstd: TensorRef, // [BT]
    pub logits: TensorRef,   // [BT, Vp]; overwritten in place by dlogits in training
    pub losses: TensorRef,   // [BT]
    pub acts_total: usize,
    pub stats_total: usize,
    // Scratch (activation gradients), reused by every layer.
    pub d_residual: TensorRef, // [BT, C] gradient of the residual stream, accumulated
    pub d_ln: TensorRef,       // [BT, C]
    pub d_atty: TensorRef,     // [BT, C]
    pub d_qkv: TensorRef,      // [BT, 3C]
    pub d_fch: TensorRef,      // [BT, 4C]
    pub scratch_total: usize,
}

impl ActLayout {
    pub fn new(cfg: &ModelConfig, batch: usize, seq: usize) -> Self {
        let bt = batch * seq;
        let c = cfg.channels;
        let mut acts = Bump {
            arena: Arena::Acts,
            next: 0,
        };
        let mut stats = Bump {
            arena: Arena::Stats,
            next: 0,
        };
        let encoded = acts.take(bt * c);
        let layers = (0..cfg.layers)
            .map(|_| LayerActs {
                ln1: acts.take(bt * c),
                ln1_mean: stats.take(bt),
                ln1_rstd: stats.take(bt),
                qkv: acts.take(bt * 3 * c),
                atty: acts.take(bt * c),
                att_lse: stats.take(batch * cfg.heads * seq),
                attproj: acts.take(bt * c),
                residual2: acts.take(bt * c),
                ln2: acts.take(bt * c),
                ln2_mean: stats.take(bt),
                ln2_rstd: stats.take(bt),
                fch: acts.take(bt * 4 * c),
                fch_gelu: acts.take(bt * 4 * c),
                fcproj: acts.take(bt * c),
                residual3: acts.take(bt * c),
            })
            .collect();
        let lnf = acts.take(bt * c);
        let lnf_mean = stats.take(bt);
        let lnf_rstd = stats.take(bt);
        let logits = acts.take(bt * cfg.padded_vocab);
        let losses = stats.take(bt);
        let mut scratch = Bump {
            arena: Arena::Scratch,
            next: 0,
        };
        ActLayout {
            batch,
            seq,
            encoded,
            layers,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            losses,
            acts_total: acts.next,
            stats_total: stats.next,
            d_residual: scratch.take(bt * c),
            d_ln: scratch.take(bt * c),
            d_atty: scratch.take(bt * c),
            d_qkv: scratch.take(bt * 3 * c),
            d_fch: scratch.take(bt * 4 * c),
            scratch_total: scratch.next,
        }
    }

    /// The residual stream entering `layer` (layer == L gives the stream entering lnf).
    pub fn residual_in(&self, layer: usize) -> TensorRef {
        if layer == 0 {
            self.encoded
        } else {
            self.layers[layer - 1].residual3
        }
    }
}

struct Bump {
    arena: Arena,
    next: usize,
}

impl Bump {
    fn take(&mut self, len: usize) -> TensorRef {
        let t = TensorRef {
            arena: self.arena,
            offset: self.next,
            len,
        };
        self.next += len;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_contiguous_and_disjoint() {
        let cfg = ModelConfig::named("tiny").unwrap();
        let p = ParamLayout::new(&cfg);
        let mut next = 0;
        for t in &p.tensors {
            assert_eq!(t.offset, next, "{}", t.name);
            next += t.len();
        }
        assert_eq!(next, p.total);
        let a = p.param(ParamKind::QkvW, 1);
        assert_eq!(a.len, 3 * cfg.channels * cfg.channels);
        assert!(!a.overlaps(&p.param(ParamKind::QkvW, 0)));
    }

    #[test]
    fn activations_are_disjoint() {
        let cfg = ModelConfig::named("tiny").unwrap();
        let a = ActLayout::new(&cfg, 2, 16);
        let mut all = vec![a.encoded, a.lnf, a.lnf_mean, a.lnf_rstd, a.logits, a.losses];
        for l in &a.layers {
            all.extend([
                l.ln1,
                l.ln1_mean,
                l.ln1_rstd,
                l.qkv,
                l.atty,
                l.att_lse,
                l.attproj,
                l.residual2,
                l.ln2,
                l.ln2_mean,
                l.ln2_rstd,
                l.fch,
                l.fch_gelu,
                l.fcproj,
                l.residual3,
            ]);
        }
        for (i, x) in all.iter().enumerate() {
            assert!(x.offset + x.len <= a.acts_total);
            for y in &all[i + 1..] {
                assert!(!x.overlaps(y));
            }
        }
    }
}
