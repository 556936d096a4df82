//! Kernel sources for the CUDA backend, embedded as PTX text.
//!
//! Sources live in `ptx/kernels/`: CUDA-C (`*.cu`, compiled with `nvcc -ptx`) and hand-written
//! PTX (`*.ptx`). Each file may name its targets in a header line `// targets: sm_90a sm_80`
//! (default `sm_90a`); build.rs produces one PTX variant per target, checks each with `ptxas`
//! for that target (the build fails with ptxas's message), requires PTX ISA <= 9.0 (the JIT of
//! driver 580), and embeds the text. Only with the `cuda` feature: without it both tables are
//! empty and no CUDA tool is needed.
//!
//! Nothing here has been run on a GPU yet: the build proves only that every module compiles and
//! assembles.

pub mod host;

/// One embedded PTX module for one target.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    /// Module name: the source file stem (`encoder` for `kernels/encoder.cu`).
    pub module: &'static str,
    /// The ptxas target it was compiled and checked for, e.g. `sm_90a` or `sm_80`.
    pub target: &'static str,
    /// PTX text (no NUL terminator).
    pub ptx: &'static str,
}

#[cfg(feature = "cuda")]
include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// `(module name, PTX)` for each module's primary target (the first in its `targets:` line).
#[cfg(not(feature = "cuda"))]
pub const MODULES: &[(&str, &str)] = &[];

/// Every (module, target) variant.
#[cfg(not(feature = "cuda"))]
pub const VARIANTS: &[Variant] = &[];

/// Compute capability `(major, minor)` and whether the target is an arch-specific `a` target.
pub fn parse_target(target: &str) -> Option<(u32, u32, bool)> {
    let digits = target.strip_prefix("sm_")?;
    let (digits, arch_specific) = match digits.strip_suffix('a') {
        Some(d) => (d, true),
        None => (digits, false),
    };
    if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some((major.parse().ok()?, minor.parse().ok()?, arch_specific))
}

/// The variant of `module` that a device of compute capability `major.minor` can load: an
/// arch-specific target (`sm_90a`) only on exactly that chip, otherwise the highest plain target
/// not above the device (PTX JIT compiles forward). `None` if no variant fits.
pub fn select_variant(module: &str, major: u32, minor: u32) -> Option<&'static Variant> {
    let device = (major, minor);
    let mut best: Option<(&'static Variant, (u32, u32, bool))> = None;
    for v in VARIANTS.iter().filter(|v| v.module == module) {
        let Some((ma, mi, a)) = parse_target(v.target) else {
            continue;
        };
        let fits = if a {
            (ma, mi) == device
        } else {
            (ma, mi) <= device
        };
        if !fits {
            continue;
        }
        // Prefer the exact arch-specific build, then the highest plain target.
        let rank = (ma, mi, a);
        if best.is_none_or(|(_, r)| rank > r) {
            best = Some((v, rank));
        }
    }
    best.map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(parse_target("sm_90a"), Some((9, 0, true)));
        assert_eq!(parse_target("sm_80"), Some((8, 0, false)));
        assert_eq!(parse_target("sm_100a"), Some((10, 0, true)));
        assert_eq!(parse_target("sm_120"), Some((12, 0, false)));
        assert_eq!(parse_target("compute_90"), None);
        assert_eq!(parse_target("sm_9"), None);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn no_kernels_without_feature() {
        assert!(MODULES.is_empty() && VARIANTS.is_empty());
        assert!(select_variant("encoder", 9, 0).is_none());
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn every_module_has_a_checked_variant() {
        assert!(!MODULES.is_empty());
        for (name, ptx) in MODULES {
            assert!(ptx.contains(".version"), "{name}: no .version line");
            assert!(ptx.contains(".entry"), "{name}: no kernel entry");
            assert!(
                VARIANTS.iter().any(|v| v.module == *name),
                "{name}: no variant"
            );
        }
        for v in VARIANTS {
            let target_line = format!(".target {}", v.target);
            assert!(
                v.ptx.contains(&target_line),
                "{}: PTX lacks '{target_line}'",
                v.module
            );
        }
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn selection_follows_device_capability() {
        // H100 (9.0) gets sm_90a; an A100 (8.0) gets sm_80 when the module has it, else nothing;
        // a 7.5 card gets nothing.
        for (name, _) in MODULES {
            let h100 = select_variant(name, 9, 0).expect("every module targets sm_90a");
            assert_eq!(h100.target, "sm_90a", "{name}");
            let has80 = VARIANTS
                .iter()
                .any(|v| v.module == *name && v.target == "sm_80");
            assert_eq!(
                select_variant(name, 8, 0).map(|v| v.target),
                has80.then_some("sm_80")
            );
            if has80 {
                // B200 (10.0) cannot run sm_90a PTX but JIT-compiles the sm_80 variant.
                assert_eq!(select_variant(name, 10, 0).map(|v| v.target), Some("sm_80"));
            }
            assert!(select_variant(name, 7, 5).is_none());
        }
    }
}
