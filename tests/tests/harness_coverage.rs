//! Which kernels the host execution harness runs, and which it cannot: printed as a table in the
//! output of `cargo test` (a custom test main, so the output is never captured), with the kernels
//! that use instructions the harness does not emulate (wgmma, TMA, tcgen05) listed by name. Fails
//! if a kernel module of ptx/kernels has no launcher in gpt/src/cuda/kernels (no launcher means
//! no GPU test reaches it), or if a module says it is not emulated without saying why.

use runtime::cuda::ptx::harness;
use std::collections::BTreeMap;

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let launchers: String = std::fs::read_dir(format!("{root}/gpt/src/cuda/kernels"))
        .expect("gpt/src/cuda/kernels")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let mut modules: BTreeMap<&str, Vec<&harness::KernelInfo>> = BTreeMap::new();
    for k in harness::kernels() {
        modules.entry(k.module).or_default().push(k);
    }
    let (mut runs, mut not_covered, mut problems) = (0, Vec::new(), Vec::new());
    println!("\nhost execution harness: kernels by module");
    for (module, kernels) in &modules {
        let status = match kernels[0].not_emulated {
            Some(why) => format!("NOT COVERED by the harness ({why}): needs a GPU"),
            None => "runs on the harness".to_string(),
        };
        println!("  {module:<16} {:>2} kernel(s)  {status}", kernels.len());
        for k in kernels {
            println!("      {}{}", k.name, k.signature);
            match k.not_emulated {
                Some("") => problems.push(format!("{module}: 'not emulated' without a reason")),
                Some(_) => not_covered.push(format!("{module}::{}", k.name)),
                None => runs += 1,
            }
        }
        if *module != "selftest" && !launchers.contains(&format!("\"{module}\"")) {
            problems.push(format!(
                "module {module} has no launcher in gpt/src/cuda/kernels (g.kernel(\"{module}\", ...))"
            ));
        }
    }
    println!(
        "  {runs} kernels run on the harness; not covered: {}",
        if not_covered.is_empty() {
            "none".to_string()
        } else {
            not_covered.join(", ")
        }
    );
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("harness_coverage: {p}");
        }
        std::process::exit(1);
    }
}
