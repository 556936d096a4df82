//! Kernel build: only with the `cuda` feature (CARGO_FEATURE_CUDA); otherwise it does nothing.
//!
//! For every `kernels/*.cu` and `kernels/*.ptx`:
//!   1. read its targets from a header line `// targets: sm_90a sm_80` (default: sm_90a);
//!   2. per target, `.cu` -> `nvcc -ptx -arch=<target>`; `.ptx` is taken as written (its
//!      `.target` line must name a target ptxas accepts for each listed target);
//!   3. require `.version` <= 9.0 (driver 580's JIT rejects newer PTX);
//!   4. `ptxas -arch=<target>`: the build fails with ptxas's own message on any error;
//!   5. write `$OUT_DIR/kernels.rs` with one `pub const <NAME>_<TARGET>: &str` per variant, and
//!      the `MODULES` (primary target) and `VARIANTS` tables.
//!
//! Tools: `MXGPT_NVCC` / `MXGPT_PTXAS` if set, else `$CUDA_PATH/bin/...`, else `PATH`
//! (tools/cuda/install-toolchain.sh writes an env file that sets all of these).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_TARGETS: &[&str] = &["sm_90a"];
const MAX_PTX_VERSION: (u32, u32) = (9, 0);

struct Source {
    path: PathBuf,
    stem: String,
    is_cu: bool,
    targets: Vec<String>,
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["MXGPT_NVCC", "MXGPT_PTXAS", "CUDA_PATH", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kernels_dir = manifest.join("kernels");
    println!("cargo:rerun-if-changed={}", kernels_dir.display());

    let sources = match collect_sources(&kernels_dir) {
        Ok(s) => s,
        Err(e) => fail(&e),
    };
    let nvcc = tool("MXGPT_NVCC", "nvcc");
    let ptxas = tool("MXGPT_PTXAS", "ptxas");

    // One job per (source, target); run them on a few threads (nvcc's front end is ~1 s/file).
    let jobs: Vec<(usize, String)> = sources
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.targets.iter().map(move |t| (i, t.clone())))
        .collect();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<String, String>>>> =
        jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((i, target)) = jobs.get(j) else {
                    break;
                };
                let r = build_variant(&sources[*i], target, &nvcc, &ptxas, &out_dir);
                *results[j].lock().unwrap() = Some(r);
            });
        }
    });

    let mut errors = String::new();
    let mut consts = String::new();
    let mut modules = String::new();
    let mut variants = String::new();
    for (j, (i, target)) in jobs.iter().enumerate() {
        let src = &sources[*i];
        match results[j].lock().unwrap().take().unwrap() {
            Err(e) => {
                let _ = writeln!(errors, "{e}\n");
            }
            Ok(ptx_path) => {
                let name = const_name(&src.stem, target);
                let _ = writeln!(
                    consts,
                    "/// `kernels/{}` compiled for {target}.\npub const {name}: &str = include_str!({:?});",
                    src.path.file_name().unwrap().to_string_lossy(),
                    ptx_path
                );
                if *target == src.targets[0] {
                    let _ = writeln!(modules, "    ({:?}, {name}),", src.stem);
                }
                let _ = writeln!(
                    variants,
                    "    Variant {{ module: {:?}, target: {:?}, ptx: {name} }},",
                    src.stem, target
                );
            }
        }
    }
    if !errors.is_empty() {
        fail(&errors);
    }
    let code = format!(
        "{consts}\n/// `(module name, PTX)` for each module's primary target.\n\
         pub const MODULES: &[(&str, &str)] = &[\n{modules}];\n\n\
         /// Every (module, target) variant.\npub const VARIANTS: &[Variant] = &[\n{variants}];\n"
    );
    std::fs::write(out_dir.join("kernels.rs"), code).expect("write kernels.rs");
}

fn fail(msg: &str) -> ! {
    // A panic in build.rs prints the message verbatim under "--- stderr", which keeps ptxas's
    // multi-line output readable.
    eprintln!("{msg}");
    panic!("ptx kernel build failed (see messages above)");
}

fn tool(env_var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    if let Some(cuda) = std::env::var_os("CUDA_PATH") {
        let p = Path::new(&cuda).join("bin").join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name) // resolved through PATH; a missing tool is reported at first use
}

fn collect_sources(dir: &Path) -> Result<Vec<Source>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read kernel dir {}: {e}", dir.display()))?;
    let mut sources = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_string();
        if ext != "cu" && ext != "ptx" {
            continue; // headers (.cuh) and notes are not modules
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "{}: module names must be [A-Za-z0-9_]",
                path.display()
            ));
        }
        let targets = parse_targets(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        sources.push(Source {
            path,
            stem,
            is_cu: ext == "cu",
            targets,
        });
    }
    // .cuh includes are tracked too, so editing a shared header rebuilds.
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "cuh") {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
    sources.sort_by(|a, b| a.stem.cmp(&b.stem));
    if sources.is_empty() {
        return Err(format!("no .cu or .ptx kernels in {}", dir.display()));
    }
    Ok(sources)
}

/// Targets from the first `// targets:` line, in order (the first is the primary target).
fn parse_targets(text: &str) -> Result<Vec<String>, String> {
    let Some(line) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("// targets:"))
    else {
        return Ok(DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect());
    };
    let targets: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    if targets.is_empty() {
        return Err("empty '// targets:' line".into());
    }
    for t in &targets {
        let digits = t
            .strip_prefix("sm_")
            .map(|d| d.trim_end_matches(['a', 'f']));
        if !digits.is_some_and(|d| d.len() >= 2 && d.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!(
                "bad target '{t}' in '// targets:' (expected e.g. sm_90a, sm_80)"
            ));
        }
    }
    Ok(targets)
}

fn const_name(stem: &str, target: &str) -> String {
    format!(
        "{}_{}",
        stem.to_ascii_uppercase(),
        target.to_ascii_uppercase()
    )
}

/// Produces `$OUT_DIR/<stem>.<target>.ptx`, checked by ptxas; returns its path.
fn build_variant(
    src: &Source,
    target: &str,
    nvcc: &Path,
    ptxas: &Path,
    out_dir: &Path,
) -> Result<String, String> {
    let ptx_path = out_dir.join(format!("{}.{target}.ptx", src.stem));
    let shown = src.path.display();
    if src.is_cu {
        // -O3 and no fast-math: the kernels are checked against CPU references, and expf/tanhf
        // accuracy matters more than the few percent fast-math would give on memory-bound ops.
        let out = Command::new(nvcc)
            .args(["-ptx", "-O3", "-std=c++17", "-lineinfo", "--Werror", "all-warnings"])
            .arg(format!("-arch={target}"))
            .arg("-o")
            .arg(&ptx_path)
            .arg(&src.path)
            .output()
            .map_err(|e| format!("cannot run {} ({e}); install the toolchain with tools/cuda/install-toolchain.sh and source .toolchain/cuda/env.sh", nvcc.display()))?;
        if !out.status.success() {
            return Err(format!(
                "nvcc failed on {shown} for {target}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    } else {
        std::fs::copy(&src.path, &ptx_path)
            .map_err(|e| format!("cannot copy {shown} to {}: {e}", ptx_path.display()))?;
    }
    let text = std::fs::read_to_string(&ptx_path)
        .map_err(|e| format!("cannot read {}: {e}", ptx_path.display()))?;
    check_version(&text).map_err(|e| format!("{shown} ({target}): {e}"))?;

    let out = Command::new(ptxas)
        .arg(format!("-arch={target}"))
        .args(["--warn-on-spills", "-o", "/dev/null"])
        .arg(&ptx_path)
        .output()
        .map_err(|e| format!("cannot run {} ({e})", ptxas.display()))?;
    if !out.status.success() {
        return Err(format!(
            "ptxas -arch={target} rejected {shown} (PTX at {}):\n{}{}",
            ptx_path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(ptx_path.to_string_lossy().into_owned())
}

fn check_version(ptx: &str) -> Result<(), String> {
    let line = ptx
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version"))
        .ok_or("no .version directive")?;
    let v = line.trim();
    let (major, minor) = v.split_once('.').ok_or(format!("bad .version '{v}'"))?;
    let parsed = (major.parse::<u32>(), minor.parse::<u32>());
    let (Ok(major), Ok(minor)) = parsed else {
        return Err(format!("bad .version '{v}'"));
    };
    if (major, minor) > MAX_PTX_VERSION {
        return Err(format!(
            "PTX .version {major}.{minor} is newer than {}.{} (driver 580's JIT); use the CUDA 13.0 toolchain",
            MAX_PTX_VERSION.0, MAX_PTX_VERSION.1
        ));
    }
    Ok(())
}
