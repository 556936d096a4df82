//! Regression checks against a baseline: the same-machine check (a baseline from another device
//! or thread count is refused unless `--force`), and the per-entry comparison (perf/README.md,
//! "Regression rule").

use super::result::read_json;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// "5%" or "0.05" -> 0.05.
pub fn parse_tolerance(s: &str) -> Result<f64, String> {
    let (num, scale) = match s.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (s, 1.0),
    };
    let v: f64 = num.trim().parse().map_err(|_| {
        format!("--tolerance '{s}': expected a percentage like 5% or a fraction like 0.05")
    })?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("--tolerance '{s}' must be non-negative"));
    }
    Ok(v * scale)
}

/// "cpu-amd-epyc (2 threads)"; the thread count only for CPU results, where it matters.
fn machine(doc: &Value) -> String {
    let device = doc["device"].as_str().unwrap_or("an unknown device");
    match (doc["backend"].as_str(), doc["threads"].as_u64()) {
        (Some("cuda"), _) | (_, None) => device.to_string(),
        (_, Some(t)) => format!("{device} ({t} threads)"),
    }
}

/// Checks that `new` and the baseline `base` (read from `base_path`) come from one machine: the
/// same device and, on the CPU, the same thread count. Different: an error naming both, or
/// with `force` the warning the comparison prints loudly.
pub fn same_machine(
    new: &Value,
    base: &Value,
    base_path: &Path,
    force: bool,
) -> Result<Option<String>, String> {
    let device_differs = new["device"].as_str().is_none() || new["device"] != base["device"];
    let cpu = new["backend"].as_str() != Some("cuda");
    let threads_differ = cpu
        && matches!(
            (new["threads"].as_u64(), base["threads"].as_u64()),
            (Some(a), Some(b)) if a != b
        );
    if !device_differs && !threads_differ {
        return Ok(None);
    }
    let what = if device_differs {
        "DIFFERENT DEVICES"
    } else {
        "DIFFERENT THREAD COUNTS"
    };
    let (this, that) = (machine(new), machine(base));
    if force {
        return Ok(Some(format!(
            "WARNING: {what}: this run is {this}, the baseline {} is {that}; timings from \
             different machines do not compare, the verdicts below are NOT regressions (--force)",
            base_path.display()
        )));
    }
    Err(format!(
        "baseline {} was recorded on {that}, this run is {this}: timings from different \
         machines do not compare; record a baseline here (--save-baseline) or pass --force",
        base_path.display()
    ))
}

/// `bench compare NEW --baseline OLD [--force]`.
pub fn compare_files(new: &Path, base: &Path, tolerance: f64, force: bool) -> Result<i32, String> {
    let (n, b) = (read_json(new)?, read_json(base)?);
    let warning = same_machine(&n, &b, base, force)?;
    Ok(compare_docs(&n, &b, tolerance, warning.as_deref()))
}

/// Compares entries present in both (matched by suite, name and shape); prints a table and
/// returns 1 if any is a regression: new median slower than the baseline's by more than the
/// tolerance AND by more than the two interquartile ranges together (so noise does not fail).
/// `warning` (machines differ, --force) is printed above and below the table and on stderr.
pub fn compare_docs(new: &Value, base: &Value, tolerance: f64, warning: Option<&str>) -> i32 {
    let key = |e: &Value| {
        format!(
            "{}|{}|{}",
            e["suite"].as_str().unwrap_or(""),
            e["name"].as_str().unwrap_or(""),
            e["shape"].as_str().unwrap_or("")
        )
    };
    let base_by_key: BTreeMap<String, &Value> = base["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (key(e), e))
        .collect();
    if let Some(w) = warning {
        eprintln!("bench: {w}");
        println!("!!! {w} !!!");
    }
    println!(
        "comparison with the baseline (tolerance {:.1}%, noise = the two IQRs added):",
        tolerance * 100.0
    );
    println!(
        "{:<36} {:>11} {:>11} {:>8} {:>9}  verdict",
        "entry", "base ms", "new ms", "change", "noise ms"
    );
    let (mut regressions, mut matched) = (0, 0);
    for e in new["entries"].as_array().into_iter().flatten() {
        let Some(b) = base_by_key.get(&key(e)) else {
            continue;
        };
        let (Some(nm), Some(bm)) = (
            e["stats"]["median_ms"].as_f64(),
            b["stats"]["median_ms"].as_f64(),
        ) else {
            continue;
        };
        matched += 1;
        let iqr = |v: &Value| {
            v["stats"]["q3_ms"].as_f64().unwrap_or(0.0)
                - v["stats"]["q1_ms"].as_f64().unwrap_or(0.0)
        };
        let noise = iqr(e) + iqr(b);
        let slower = nm - bm;
        let verdict = if slower > bm * tolerance && slower > noise {
            regressions += 1;
            "REGRESSION"
        } else if -slower > bm * tolerance && -slower > noise {
            "faster"
        } else {
            "ok"
        };
        println!(
            "{:<36} {bm:>11.3} {nm:>11.3} {:>+7.1}% {noise:>9.3}  {verdict}",
            e["name"].as_str().unwrap_or("?"),
            100.0 * slower / bm
        );
    }
    if matched == 0 {
        println!("no entries in common with the baseline (different model, shapes or suites?)");
    }
    if let Some(w) = warning {
        println!("!!! {w} !!!");
    }
    if regressions > 0 {
        eprintln!("bench: {regressions} regression(s) against the baseline");
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tolerance_forms() {
        assert_eq!(parse_tolerance("5%").unwrap(), 0.05);
        assert_eq!(parse_tolerance("0.1").unwrap(), 0.1);
        assert!(parse_tolerance("-1").is_err() && parse_tolerance("x").is_err());
    }

    #[test]
    fn machines_must_match() {
        let p = Path::new("b.json");
        let amd = json!({"device": "cpu-amd-epyc", "backend": "cpu", "threads": 2});
        let intel = json!({"device": "cpu-intel-xeon", "backend": "cpu", "threads": 8});
        assert_eq!(same_machine(&amd, &amd, p, false), Ok(None));
        let e = same_machine(&intel, &amd, p, false).unwrap_err();
        assert!(
            e.contains("cpu-amd-epyc (2 threads)") && e.contains("cpu-intel-xeon (8 threads)"),
            "{e}"
        );
        let w = same_machine(&intel, &amd, p, true).unwrap().unwrap();
        assert!(w.contains("DIFFERENT DEVICES"), "{w}");
        let amd4 = json!({"device": "cpu-amd-epyc", "backend": "cpu", "threads": 4});
        let e = same_machine(&amd4, &amd, p, false).unwrap_err();
        assert!(e.contains("4 threads") && e.contains("2 threads"), "{e}");
        // the host's thread count does not matter to a GPU run
        let h100 = json!({"device": "cuda-h100", "backend": "cuda", "threads": 16});
        let h100b = json!({"device": "cuda-h100", "backend": "cuda", "threads": 64});
        assert_eq!(same_machine(&h100, &h100b, p, false), Ok(None));
        // a baseline without a device is not known to be this machine
        assert!(same_machine(&amd, &json!({"entries": []}), p, false).is_err());
    }
}
