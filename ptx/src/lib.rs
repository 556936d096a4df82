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

#[cfg(feature = "harness")]
pub mod harness;
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
    /// SASS for `target` as ptxas built it (the same run that checked for spills), loaded
    /// instead of the PTX on a device that can run it (`cubin_runs_on`).
    pub cubin: Option<&'static [u8]>,
}

#[cfg(feature = "cuda")]
include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// `(module name, PTX)` for each module's primary target (the first in its `targets:` line).
#[cfg(not(feature = "cuda"))]
pub const MODULES: &[(&str, &str)] = &[];

/// Every (module, target) variant.
#[cfg(not(feature = "cuda"))]
pub const VARIANTS: &[Variant] = &[];

/// What a target name promises about where its code runs (PTX ISA, "Target ISA notes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TargetKind {
    /// `sm_XY`: PTX that the driver can JIT for any device of compute capability >= X.Y; its
    /// SASS runs on X.y with y >= Y.
    Plain,
    /// `sm_XYf` (PTX 8.8+): family-specific features; runs on devices of the same major
    /// version with minor >= Y (sm_100f: B200 10.0 and B300 10.3).
    Family,
    /// `sm_XYa`: architecture-specific features (wgmma, tcgen05); runs on exactly X.Y.
    ArchSpecific,
}

/// A parsed target: compute capability and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub major: u32,
    pub minor: u32,
    pub kind: TargetKind,
}

/// Parses `sm_90a`, `sm_100f`, `sm_80`, `sm_120` (None for anything else).
pub fn parse_target(target: &str) -> Option<Target> {
    let digits = target.strip_prefix("sm_")?;
    let (digits, kind) = if let Some(d) = digits.strip_suffix('a') {
        (d, TargetKind::ArchSpecific)
    } else if let Some(d) = digits.strip_suffix('f') {
        (d, TargetKind::Family)
    } else {
        (digits, TargetKind::Plain)
    };
    if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some(Target {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        kind,
    })
}

impl Target {
    /// Whether this target's PTX can be loaded on a device of compute capability major.minor.
    pub fn ptx_runs_on(&self, major: u32, minor: u32) -> bool {
        match self.kind {
            TargetKind::ArchSpecific => (self.major, self.minor) == (major, minor),
            TargetKind::Family => self.major == major && minor >= self.minor,
            TargetKind::Plain => (self.major, self.minor) <= (major, minor),
        }
    }

    /// Whether SASS built for this target runs on a device of compute capability major.minor
    /// (SASS is compatible only within one major version, never forward across it).
    pub fn cubin_runs_on(&self, major: u32, minor: u32) -> bool {
        match self.kind {
            TargetKind::ArchSpecific => (self.major, self.minor) == (major, minor),
            TargetKind::Family | TargetKind::Plain => self.major == major && minor >= self.minor,
        }
    }
}

/// The variant of `module` that a device of compute capability `major.minor` should load: the
/// exact arch-specific build (`sm_90a` on an H100), else a family build of its family
/// (`sm_100f` on a B300), else the highest plain target not above the device (PTX JIT compiles
/// forward). `None` if no variant fits.
pub fn select_variant(module: &str, major: u32, minor: u32) -> Option<&'static Variant> {
    let mut best: Option<(&'static Variant, (TargetKind, u32, u32))> = None;
    for v in VARIANTS.iter().filter(|v| v.module == module) {
        let Some(t) = parse_target(v.target) else {
            continue;
        };
        if !t.ptx_runs_on(major, minor) {
            continue;
        }
        let rank = (t.kind, t.major, t.minor);
        if best.is_none_or(|(_, r)| rank > r) {
            best = Some((v, rank));
        }
    }
    best.map(|(v, _)| v)
}

/// The image to load for `v` on a device of compute capability major.minor: its cubin when the
/// SASS runs there, else its PTX (JIT). `true` in the second field means a cubin.
pub fn image_for(v: &Variant, major: u32, minor: u32) -> (&'static [u8], bool) {
    match (v.cubin, parse_target(v.target)) {
        (Some(c), Some(t)) if t.cubin_runs_on(major, minor) => (c, true),
        _ => (v.ptx.as_bytes(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(major: u32, minor: u32, kind: TargetKind) -> Option<Target> {
        Some(Target { major, minor, kind })
    }

    #[test]
    fn parses_targets() {
        use TargetKind::*;
        assert_eq!(parse_target("sm_90a"), t(9, 0, ArchSpecific));
        assert_eq!(parse_target("sm_80"), t(8, 0, Plain));
        assert_eq!(parse_target("sm_100a"), t(10, 0, ArchSpecific));
        assert_eq!(parse_target("sm_100f"), t(10, 0, Family));
        assert_eq!(parse_target("sm_103f"), t(10, 3, Family));
        assert_eq!(parse_target("sm_120"), t(12, 0, Plain));
        assert_eq!(parse_target("compute_90"), None);
        assert_eq!(parse_target("sm_9"), None);
        assert_eq!(parse_target("sm_90x"), None);
    }

    #[test]
    fn which_devices_run_which_targets() {
        let a90 = parse_target("sm_90a").unwrap();
        let f100 = parse_target("sm_100f").unwrap();
        let f103 = parse_target("sm_103f").unwrap();
        let p80 = parse_target("sm_80").unwrap();
        // PTX: exact chip / same family upward / any newer device.
        assert!(a90.ptx_runs_on(9, 0) && !a90.ptx_runs_on(10, 0) && !a90.ptx_runs_on(8, 9));
        assert!(f100.ptx_runs_on(10, 0) && f100.ptx_runs_on(10, 3) && !f100.ptx_runs_on(12, 0));
        assert!(!f103.ptx_runs_on(10, 0) && f103.ptx_runs_on(10, 3));
        assert!(p80.ptx_runs_on(8, 0) && p80.ptx_runs_on(9, 0) && p80.ptx_runs_on(12, 0));
        assert!(!p80.ptx_runs_on(7, 5));
        // SASS: never across a major version.
        assert!(p80.cubin_runs_on(8, 6) && !p80.cubin_runs_on(9, 0));
        assert!(a90.cubin_runs_on(9, 0) && !a90.cubin_runs_on(9, 1));
        assert!(f100.cubin_runs_on(10, 3) && !f100.cubin_runs_on(11, 0));
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
    fn cubins_are_embedded_and_chosen_only_where_they_run() {
        for v in VARIANTS {
            let c = v
                .cubin
                .unwrap_or_else(|| panic!("{} {}: no cubin", v.module, v.target));
            assert_eq!(
                &c[..4],
                b"\x7fELF",
                "{} {}: a cubin is an ELF image",
                v.module,
                v.target
            );
            let t = parse_target(v.target).unwrap();
            let (img, is_cubin) = image_for(v, t.major, t.minor);
            assert!(
                is_cubin && img.as_ptr() == c.as_ptr(),
                "{} {}",
                v.module,
                v.target
            );
            // One major version up, only PTX can serve (and only for plain targets).
            let (img, is_cubin) = image_for(v, t.major + 1, 0);
            assert!(!is_cubin && img == v.ptx.as_bytes());
        }
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn selection_follows_device_capability() {
        // H100 (9.0) gets sm_90a; an A100 (8.0) gets sm_80 when the module has it, else nothing;
        // a 7.5 card gets nothing.
        for (name, _) in MODULES {
            let targets: Vec<&str> = VARIANTS
                .iter()
                .filter(|v| v.module == *name)
                .map(|v| v.target)
                .collect();
            if !targets.contains(&"sm_90a") {
                // Blackwell-only modules (mx_gemm_tcgen05: sm_100a) load on exactly 10.0.
                assert_eq!(targets, ["sm_100a"], "{name}");
                assert!(select_variant(name, 9, 0).is_none(), "{name}");
                assert_eq!(
                    select_variant(name, 10, 0).map(|v| v.target),
                    Some("sm_100a")
                );
                assert!(select_variant(name, 10, 3).is_none(), "{name}");
                continue;
            }
            let h100 = select_variant(name, 9, 0).expect("every other module targets sm_90a");
            assert_eq!(h100.target, "sm_90a", "{name}");
            let has80 = VARIANTS
                .iter()
                .any(|v| v.module == *name && v.target == "sm_80");
            assert_eq!(
                select_variant(name, 8, 0).map(|v| v.target),
                has80.then_some("sm_80")
            );
            let has89 = targets.contains(&"sm_89");
            if has89 {
                // Ada (8.9) gets its own variant (the FP8 modules: e4m3 mma from sm_89 on).
                assert_eq!(select_variant(name, 8, 9).map(|v| v.target), Some("sm_89"));
            }
            if has80 {
                // B200 (10.0) cannot run sm_90a PTX but JIT-compiles the newest plain variant.
                let newest_plain = if has89 { "sm_89" } else { "sm_80" };
                assert_eq!(
                    select_variant(name, 10, 0).map(|v| v.target),
                    Some(newest_plain),
                    "{name}"
                );
            }
            assert!(select_variant(name, 7, 5).is_none());
        }
    }
}
