//! Helpers shared by the dataio integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "dataio-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds Megatron .idx bytes field by field from the format description (independent of the
/// crate's writer).
pub fn idx_bytes(dtype_code: u8, sizes: &[i32], pointers: &[i64], doc_indices: &[i64]) -> Vec<u8> {
    let mut b = b"MMIDIDX\x00\x00".to_vec();
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(dtype_code);
    b.extend_from_slice(&(sizes.len() as u64).to_le_bytes());
    b.extend_from_slice(&(doc_indices.len() as u64).to_le_bytes());
    sizes
        .iter()
        .for_each(|s| b.extend_from_slice(&s.to_le_bytes()));
    pointers
        .iter()
        .for_each(|p| b.extend_from_slice(&p.to_le_bytes()));
    doc_indices
        .iter()
        .for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
    b
}

pub fn u16_bytes(tokens: &[u16]) -> Vec<u8> {
    tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
}

/// llm.c shard bytes: 256 int32 header (magic, version, count) then uint16 tokens.
pub fn llmc_bytes(tokens: &[u16]) -> Vec<u8> {
    let mut header = [0i32; 256];
    header[0] = 20240520;
    header[1] = 1;
    header[2] = tokens.len() as i32;
    let mut b: Vec<u8> = header.iter().flat_map(|h| h.to_le_bytes()).collect();
    b.extend(u16_bytes(tokens));
    b
}

/// Expects an error whose message contains every fragment.
pub fn assert_err_contains<T>(r: Result<T, dataio::DataError>, fragments: &[&str]) {
    let msg = match r {
        Ok(_) => panic!("expected an error containing {fragments:?}, got Ok"),
        Err(e) => e.to_string(),
    };
    for f in fragments {
        assert!(msg.contains(f), "error {msg:?} lacks {f:?}");
    }
}
