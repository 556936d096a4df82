//! The result file: the JSON document of a run (fields: perf/README.md), its name
//! `<device>_<YYYYMMDD-HHMMSS>_<commit>.json`, where it goes, the table on stdout, and reading
//! result files back.

use super::ceilings::Ceilings;
use super::method::{Method, ROTATE};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Result format version.
pub const SCHEMA: u32 = 1;

/// Where a run's result goes by default: an ignored directory (`/target` in .gitignore), so
/// that ad-hoc runs leave no untracked files; `--save` writes to `SAVED_DIR`.
pub const SCRATCH_DIR: &str = "target/bench-results";
/// The tracked results (`--save`), and the default input of `bench plot`.
pub const SAVED_DIR: &str = "perf/results";

/// The result directory from `--out` and `--save`.
pub fn out_dir(out: Option<&Path>, save: bool) -> Result<PathBuf, String> {
    match (out, save) {
        (Some(d), false) => Ok(d.to_path_buf()),
        (None, true) => Ok(PathBuf::from(SAVED_DIR)),
        (None, false) => Ok(PathBuf::from(SCRATCH_DIR)),
        (Some(d), true) => Err(format!(
            "--save writes to {SAVED_DIR} and --out to {}: pass one of them",
            d.display()
        )),
    }
}

/// What a result file records besides ceilings and entries.
pub struct RunMeta {
    pub device: String,
    pub device_name: String,
    pub gpu: bool,
    pub threads: usize,
    pub date: String,
    pub commit: String,
    pub model: String,
    pub batch: usize,
    pub seq: usize,
    pub quick: bool,
    pub mx_gemm: String,
    pub method: Method,
    pub counters: String,
    /// Data-parallel ranks (mpirun); 1 in one process.
    pub ranks: usize,
}

impl RunMeta {
    /// The identity a baseline is checked against (compare.rs), before anything runs.
    pub fn identity(&self) -> Value {
        json!({"device": self.device, "backend": self.backend(), "threads": self.threads})
    }
    fn backend(&self) -> &'static str {
        if self.gpu {
            "cuda"
        } else {
            "cpu"
        }
    }
}

pub fn document(meta: &RunMeta, ceilings: &Ceilings, entries: Vec<Value>) -> Value {
    let m = &meta.method;
    json!({
        "schema": SCHEMA,
        "device": meta.device,
        "device_name": meta.device_name,
        "backend": meta.backend(),
        "threads": meta.threads,
        "date": meta.date,
        "commit": meta.commit,
        "model": meta.model,
        "batch": meta.batch,
        "seq": meta.seq,
        "quick": meta.quick,
        "mx_gemm": meta.mx_gemm,
        "method": {"warmup": m.warmup, "min_reps": m.reps, "min_time_s": m.min_time.as_secs_f64(), "rotate": ROTATE},
        "counters": meta.counters,
        "ranks": meta.ranks,
        "ceilings": ceilings.json(),
        "entries": entries,
    })
}

/// `<device>_<stamp>_<commit>.json`
pub fn file_name(doc: &Value, stamp: &str) -> String {
    format!(
        "{}_{stamp}_{}.json",
        doc["device"].as_str().unwrap_or("unknown"),
        doc["commit"].as_str().unwrap_or("unknown")
    )
}

/// " (did not stabilize: ...)" after a ceiling that did not settle, else "".
fn unsettled_note(c: &Value, key: &str) -> String {
    if c[format!("{key}_stable")] == false {
        format!(
            " (did not stabilize: spread {:.1}% over the last rounds)",
            100.0 * c[format!("{key}_spread")].as_f64().unwrap_or(0.0)
        )
    } else {
        String::new()
    }
}

/// The table on stdout: one line per entry; a percentage of a ceiling that did not settle is
/// printed `12.3%?` and explained below the table.
pub fn print_table(doc: &Value) {
    let c = &doc["ceilings"];
    println!(
        "{} ({}), {} threads, commit {}; ceilings: copy {:.1} GB/s{}, sgemm {:.1} GFLOP/s{}",
        doc["device_name"].as_str().unwrap_or("?"),
        doc["backend"].as_str().unwrap_or("?"),
        doc["threads"],
        doc["commit"].as_str().unwrap_or("?"),
        c["copy_gbps"].as_f64().unwrap_or(0.0),
        unsettled_note(c, "copy"),
        c["sgemm_gflops"].as_f64().unwrap_or(0.0),
        unsettled_note(c, "sgemm"),
    );
    println!(
        "{:<36} {:>11} {:>17} {:>20} {:>8}  shape",
        "entry", "median ms", "min..max ms", "rate", "% ceil"
    );
    let mut unsettled = 0;
    for e in doc["entries"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("?");
        if let Some(err) = e["error"].as_str() {
            println!("{name:<36} error: {err}");
            continue;
        }
        let s = &e["stats"];
        let rate = if e["suite"] == "step" {
            let tps = e["tokens_per_s"].as_f64().unwrap_or(0.0);
            if tps < 100.0 {
                format!("{tps:.2} tok/s")
            } else {
                format!("{tps:.0} tok/s")
            }
        } else if e["bound"] == "compute" {
            format!("{:.2} GFLOP/s", e["gflops"].as_f64().unwrap_or(0.0))
        } else {
            format!("{:.2} GB/s", e["gbps"].as_f64().unwrap_or(0.0))
        };
        let pct = e["pct_of_ceiling"]
            .as_f64()
            .or(e["mfu"].as_f64().map(|m| 100.0 * m))
            .unwrap_or(0.0);
        let mark = if e["ceiling_stable"] == false {
            unsettled += 1;
            "?"
        } else {
            " "
        };
        println!(
            "{name:<36} {:>11.3} {:>17} {rate:>20} {pct:>7.1}%{mark} {}",
            s["median_ms"].as_f64().unwrap_or(0.0),
            format!(
                "{:.3}..{:.3}",
                s["min_ms"].as_f64().unwrap_or(0.0),
                s["max_ms"].as_f64().unwrap_or(0.0)
            ),
            e["shape"].as_str().unwrap_or("")
        );
        if let Some(ph) = e["phase_ms"].as_object() {
            let parts: Vec<String> = ph
                .iter()
                .map(|(k, v)| format!("{k} {:.2}", v.as_f64().unwrap_or(0.0)))
                .collect();
            println!("{:<36} phases ms: {}  (% = MFU)", "", parts.join(", "));
        }
    }
    if unsettled > 0 {
        println!(
            "?: {unsettled} percentage(s) of a ceiling that did not stabilize (see the ceilings \
             above): indicative only; rerun on a quieter machine or raise --ceiling-time"
        );
    }
}

/// Writes `text` to `path` through a temporary file, creating the directory.
pub fn write_text(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension()
            .map(|e| e.to_string_lossy().to_string())
            .unwrap_or_default()
    ));
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))
}

/// A result file, checked to have an `entries` array.
pub fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
    if !v["entries"].is_array() {
        return Err(format!(
            "{} has no \"entries\" array: not a bench result file",
            path.display()
        ));
    }
    Ok(v)
}

/// The device part of file names: lower case, runs of other characters as one '-', without
/// "-cpu", at most 48 characters ("AMD EPYC" -> "amd-epyc").
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() {
            out.push(ch.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-')
        .replace("-cpu", "")
        .chars()
        .take(48)
        .collect()
}

/// ("2026-11-23T06:41:17Z", "20261123-064117") from the system clock (UTC).
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc_at(secs)
}

fn utc_at(secs: u64) -> (String, String) {
    let (days, rem) = (secs / 86400, secs % 86400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (mo <= 2) as i64;
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_dates() {
        assert_eq!(slug("AMD EPYC"), "amd-epyc");
        assert_eq!(
            slug("Intel(R) Xeon(R) CPU @ 2.20GHz"),
            "intel-r-xeon-r-2-20ghz"
        );
        assert_eq!(
            utc_at(1_795_416_077),
            (
                "2026-11-23T06:41:17Z".to_string(),
                "20261123-064117".to_string()
            )
        );
    }

    #[test]
    fn out_dir_defaults_to_an_ignored_directory() {
        assert_eq!(out_dir(None, false).unwrap(), PathBuf::from(SCRATCH_DIR));
        assert_eq!(out_dir(None, true).unwrap(), PathBuf::from(SAVED_DIR));
        assert_eq!(
            out_dir(Some(Path::new("x")), false).unwrap(),
            PathBuf::from("x")
        );
        assert!(out_dir(Some(Path::new("x")), true).is_err());
    }
}
