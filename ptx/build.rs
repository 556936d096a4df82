//! Kernel build. Two independent parts, each behind a feature:
//!
//! `harness` (CARGO_FEATURE_HARNESS): the host execution harness. Needs only a C++17 compiler
//! (`$CXX`, else g++). Every `kernels/*.cu` (and the harness's own test kernels in
//! `host/selftest/*.cu`) is compiled for the CPU against host/cuda_host.cuh, its `extern "C"`
//! kernels are found by preprocessing it and registered by name, and all of it goes into one
//! static library that ptx::harness launches from Rust. See host/mxh.h for the model.
//!
//! `cuda` (CARGO_FEATURE_CUDA): the device build. For every `kernels/*.cu` and `kernels/*.ptx`:
//!   1. read its targets from a header line `// targets: sm_90a sm_80` (default: sm_90a);
//!   2. per target, `.cu` -> `nvcc -ptx -arch=<target>`; `.ptx` is taken as written (its
//!      `.target` line must name a target ptxas accepts for each listed target);
//!   3. require `.version` <= 9.0 (driver 580's JIT rejects newer PTX);
//!   4. `ptxas -arch=<target>`: the build fails with ptxas's own message on any error;
//!   5. keep the SASS ptxas wrote (`<stem>.<target>.cubin`): it is embedded beside the PTX and
//!      loaded instead of it on a device it runs on (no JIT, and it is the code ptxas checked);
//!   6. write `$OUT_DIR/kernels.rs` with `pub const <NAME>_<TARGET>: &str` (PTX) and
//!      `<NAME>_<TARGET>_CUBIN: &[u8]` per variant, and the `MODULES` (primary target) and
//!      `VARIANTS` tables.
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
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_HARNESS");
    if std::env::var_os("CARGO_FEATURE_HARNESS").is_some() {
        harness::build();
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        build_device_kernels();
    }
}

fn build_device_kernels() {
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
                let cubin_path = ptx_path.replace(".ptx", ".cubin");
                let _ = writeln!(
                    consts,
                    "/// `kernels/{}` compiled for {target}.\npub const {name}: &str = include_str!({:?});\n/// Its SASS.\npub const {name}_CUBIN: &[u8] = include_bytes!({:?});",
                    src.path.file_name().unwrap().to_string_lossy(),
                    ptx_path,
                    cubin_path
                );
                if *target == src.targets[0] {
                    let _ = writeln!(modules, "    ({:?}, {name}),", src.stem);
                }
                let _ = writeln!(
                    variants,
                    "    Variant {{ module: {:?}, target: {:?}, ptx: {name}, cubin: Some({name}_CUBIN) }},",
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
        // -fmad=false: no silent contraction of a*b+c into an FMA, the same rule as the host
        // harness's -ffp-contract=off, so a kernel computes on the GPU the bits it computed on
        // the harness (fast and plain twins are compared bit for bit there). A kernel that
        // wants an FMA writes fmaf() explicitly, which both sides honour.
        let out = Command::new(nvcc)
            .args(["-ptx", "-O3", "-std=c++17", "-lineinfo", "-fmad=false"])
            .args(["--Werror", "all-warnings"])
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

    // The same ptxas run that checks the PTX writes the SASS that is embedded beside it.
    let cubin_path = out_dir.join(format!("{}.{target}.cubin", src.stem));
    let out = Command::new(ptxas)
        .arg(format!("-arch={target}"))
        .arg("--warn-on-spills")
        .arg("-o")
        .arg(&cubin_path)
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

/// The host execution harness build (feature `harness`).
mod harness {
    use std::fmt::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Flags for every host translation unit. -fno-strict-aliasing: kernels read bf16 arrays
    /// through uint4 pointers, as CUDA code does; -ffp-contract=off: no silent FMA contraction
    /// (see cuda_host.cuh on how host and device arithmetic differ); -O2 even in debug builds,
    /// or the kernel tests would take minutes.
    const CXXFLAGS: &[&str] = &[
        "-std=c++17",
        "-O2",
        "-fPIC",
        "-fno-strict-aliasing",
        "-ffp-contract=off",
        "-fno-exceptions",
        "-Wall",
        "-Werror",
        "-Wno-unknown-pragmas",
        "-DMXGPT_HOST_HARNESS",
    ];

    struct Module {
        name: String,
        kernels: Vec<String>,
    }

    pub fn build() {
        let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
        let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("harness");
        std::fs::create_dir_all(&out).expect("create OUT_DIR/harness");
        let host = manifest.join("host");
        let kernels = manifest.join("kernels");
        println!("cargo:rerun-if-env-changed=CXX");
        for dir in [&host, &kernels, &host.join("selftest")] {
            println!("cargo:rerun-if-changed={}", dir.display());
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                println!("cargo:rerun-if-changed={}", e.path().display());
            }
        }
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
        let include = [
            format!("-I{}", host.display()),
            format!("-I{}", kernels.display()),
        ];

        let mut sources: Vec<PathBuf> = Vec::new();
        for dir in [&kernels, &host.join("selftest")] {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .unwrap_or_else(|e| super::fail(&format!("cannot read {}: {e}", dir.display())))
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .collect();
            v.sort();
            sources.extend(v);
        }
        let headers: Vec<String> = {
            let mut v: Vec<String> = std::fs::read_dir(&kernels)
                .unwrap()
                .flatten()
                .filter_map(|e| {
                    let p = e.path();
                    (p.extension().is_some_and(|x| x == "cuh"))
                        .then(|| p.file_name().unwrap().to_string_lossy().into_owned())
                })
                .collect();
            v.sort();
            v
        };

        // Scan (preprocess with __global__ left as a token) and compile, on a few threads.
        type Slot = std::sync::Mutex<Option<Result<(Module, PathBuf), String>>>;
        let results: Vec<Slot> = sources
            .iter()
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(8);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(src) = sources.get(i) else { break };
                    let r = compile_module(&cxx, &include, &headers, src, &out);
                    *results[i].lock().unwrap() = Some(r);
                });
            }
        });
        let mut modules = Vec::new();
        let mut objects = Vec::new();
        let mut errors = String::new();
        for r in results {
            match r.into_inner().unwrap().unwrap() {
                Ok((m, obj)) => {
                    modules.push(m);
                    objects.push(obj);
                }
                Err(e) => {
                    let _ = writeln!(errors, "{e}\n");
                }
            }
        }
        if !errors.is_empty() {
            super::fail(&errors);
        }
        let mut names = std::collections::HashMap::new();
        for m in &modules {
            for k in &m.kernels {
                if let Some(other) = names.insert(k.clone(), m.name.clone()) {
                    super::fail(&format!(
                        "kernel {k} is defined in both {other}.cu and {}.cu",
                        m.name
                    ));
                }
            }
        }

        // The registry: one table function per module, listed in mxh_modules.
        let mut reg = String::from(
            "// Generated by ptx/build.rs: the modules of the host harness.\n#include \"mxh_launch.h\"\n",
        );
        for m in &modules {
            let _ = writeln!(
                reg,
                "extern \"C\" const mxh::KernelEntry* mxh_module_{}(unsigned*);",
                m.name
            );
        }
        reg.push_str("typedef const mxh::KernelEntry* (*ModuleTable)(unsigned*);\n");
        reg.push_str("extern \"C\" const ModuleTable mxh_modules[] = {\n");
        for m in &modules {
            let _ = writeln!(reg, "    mxh_module_{},", m.name);
        }
        let _ = writeln!(
            reg,
            "    nullptr}};\nextern \"C\" const unsigned mxh_num_modules = {};",
            modules.len()
        );
        let reg_path = out.join("registry.cpp");
        std::fs::write(&reg_path, reg).unwrap();
        for (src, obj) in [
            (host.join("harness.cpp"), out.join("harness.o")),
            (reg_path, out.join("registry.o")),
        ] {
            run(Command::new(&cxx)
                .args(CXXFLAGS)
                .args(&include)
                .arg("-c")
                .arg(&src)
                .arg("-o")
                .arg(&obj))
            .unwrap_or_else(|e| super::fail(&e));
            objects.push(obj);
        }
        let lib = out.join("libmxgpt_harness.a");
        let _ = std::fs::remove_file(&lib);
        run(Command::new("ar").arg("crs").arg(&lib).args(&objects))
            .unwrap_or_else(|e| super::fail(&e));
        println!("cargo:rustc-link-search=native={}", out.display());
        println!("cargo:rustc-link-lib=static=mxgpt_harness");
        println!("cargo:rustc-link-lib=dylib=stdc++");
    }

    fn run(cmd: &mut Command) -> Result<(), String> {
        let shown = format!("{cmd:?}");
        let o = cmd
            .output()
            .map_err(|e| format!("cannot run {shown}: {e} (the host harness needs a C++17 compiler: install g++ or set CXX)"))?;
        if !o.status.success() {
            return Err(format!(
                "{shown} failed:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(())
    }

    /// Preprocesses `src` for the harness, finds its kernels, writes and compiles the module's
    /// translation unit. Returns the module and its object file.
    fn compile_module(
        cxx: &str,
        include: &[String],
        headers: &[String],
        src: &Path,
        out: &Path,
    ) -> Result<(Module, PathBuf), String> {
        let name = src.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(src)
            .map_err(|e| format!("cannot read {}: {e}", src.display()))?;
        // `// harness: not emulated (why)` in the source: its kernels are listed, never run.
        let not_emulated = text.lines().find_map(|l| {
            l.trim().strip_prefix("// harness: not emulated").map(|r| {
                r.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .to_string()
            })
        });
        // The unit: shared headers at global scope (each has #pragma once), then the module in a
        // namespace of its own, so same-named helpers of different modules cannot collide
        // (on the GPU every module is a separate program; here they share one binary).
        let mut unit = String::from("#include \"cuda_host.cuh\"\n#include \"mxh_launch.h\"\n");
        for h in headers {
            let _ = writeln!(unit, "#include \"{h}\"");
        }
        let _ = writeln!(
            unit,
            "namespace mxk_{name} {{\n#include \"{}\"\n}}",
            src.display()
        );
        let unit_path = out.join(format!("{name}.host.cpp"));
        std::fs::write(&unit_path, &unit).map_err(|e| e.to_string())?;
        let pre = Command::new(cxx)
            .args(["-std=c++17", "-E", "-P", "-DMXGPT_HOST_HARNESS", "-DMXGPT_HOST_SCAN"])
            .args(include)
            .arg(&unit_path)
            .output()
            .map_err(|e| format!("cannot run {cxx}: {e} (the host harness needs a C++17 compiler: install g++ or set CXX)"))?;
        if !pre.status.success() {
            return Err(format!(
                "{cxx} -E failed on {}:\n{}",
                src.display(),
                String::from_utf8_lossy(&pre.stderr)
            ));
        }
        let kernels = scan_kernels(&String::from_utf8_lossy(&pre.stdout));
        if kernels.is_empty() {
            return Err(format!(
                "{}: no extern \"C\" __global__ kernels found",
                src.display()
            ));
        }
        let why = match &not_emulated {
            Some(w) => format!("\"{w}\""),
            None => "nullptr".into(),
        };
        let _ = writeln!(
            unit,
            "extern \"C\" const mxh::KernelEntry* mxh_module_{name}(unsigned* n) {{\n    static const mxh::KernelEntry e[] = {{"
        );
        for k in &kernels {
            let _ = writeln!(
                unit,
                "        mxh::entry<&mxk_{name}::{k}>(\"{name}\", \"{k}\", {why}),"
            );
        }
        let _ = writeln!(
            unit,
            "    }};\n    *n = {};\n    return e;\n}}",
            kernels.len()
        );
        std::fs::write(&unit_path, &unit).map_err(|e| e.to_string())?;
        let obj = out.join(format!("{name}.host.o"));
        run(Command::new(cxx)
            .args(CXXFLAGS)
            .args(include)
            .arg("-c")
            .arg(&unit_path)
            .arg("-o")
            .arg(&obj))?;
        Ok((Module { name, kernels }, obj))
    }

    /// Names of `extern "C" __global__ void [__launch_bounds__(...)] NAME(` in preprocessed text
    /// (cuda_host.cuh leaves `__global__` and `__launch_bounds__` undefined under MXGPT_HOST_SCAN).
    fn scan_kernels(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("__global__") {
            let before = rest[..i].trim_end();
            rest = &rest[i + "__global__".len()..];
            if !before.ends_with("extern \"C\"") {
                continue; // a declaration that cannot be launched by name
            }
            let mut s = rest.trim_start();
            let Some(after_void) = s.strip_prefix("void") else {
                continue;
            };
            s = after_void.trim_start();
            if let Some(lb) = s.strip_prefix("__launch_bounds__") {
                // Skip the balanced parenthesis group.
                let mut depth = 0;
                let mut end = 0;
                for (j, c) in lb.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                end = j + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                s = lb[end..].trim_start();
            }
            let name: String = s
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty()
                && s[name.len()..].trim_start().starts_with('(')
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
        names
    }
}
