//! tools: the `data`, `mx` and `bench` command-line programs (src/bin) and what they share.

pub mod bench;
pub mod gpu_bench;
pub mod probe;

use std::fs;
use std::path::Path;

/// Reads a raw little-endian f32 file, naming the file and the problem on error.
pub fn read_f32_file(path: &Path) -> Result<Vec<f32>, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "{}: {} bytes is not a whole number of f32 values (expected a multiple of 4)",
            path.display(),
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

/// Writes bytes to `path` atomically (temporary file, then rename), so a failed run never leaves
/// a half-written output under the real name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension()
            .map(|e| e.to_string_lossy().to_string())
            .unwrap_or_default()
    ));
    fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot rename {} to {}: {e}", tmp.display(), path.display())
    })
}

/// Writes f32 values as raw little-endian bytes, atomically.
pub fn write_f32_file(path: &Path, values: &[f32]) -> Result<(), String> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(path, &bytes)
}

/// The commit results are recorded under: `MXGPT_COMMIT` when set (a GPU bundle has no git
/// checkout; its session script sets it from the bundle's COMMIT file), else the short hash of
/// the checkout, else "unknown".
pub fn git_commit() -> String {
    if let Some(c) = std::env::var("MXGPT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
    {
        return c.trim().to_string();
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
