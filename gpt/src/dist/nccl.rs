//! NCCL for the CUDA backend, loaded at run time (`dlopen`) so that no build and no CPU machine
//! ever needs it: `MXGPT_NCCL_LIB`, else the library of the `nvidia-nccl-cu13` wheel installed
//! with `pip install --target .toolchain/nccl nvidia-nccl-cu13`, else `libnccl.so.2` on the
//! loader's path. The unique id that joins the ranks travels over the process transport (MPI).
//!
//! Status: compiled everywhere and its loading tested on CPU machines; it has never run on a
//! GPU. `gpt::cuda::dist::NcclCollective` moves ZeRO-1's shards with it. The
//! data-parallel sums are meant to keep the CPU's rank order: NCCL's own reductions sum in an
//! order that depends on its algorithm and topology, so gradients would move with grouped
//! `send`/`recv` (`exchange`) and be added on the device by our own kernel, rank 0 first.

use super::Transport;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;

/// ncclUniqueId: 128 opaque bytes, passed by value to ncclCommInitRank.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId([u8; 128]);
type Comm = *mut c_void;
/// A cudaStream_t (null: the legacy default stream).
pub type Stream = *mut c_void;
const NCCL_UINT8: c_int = 1; // ncclUint8: raw bytes (bf16 moves as 2 bytes per element)

/// The NCCL entry points this module calls (nccl.h, NCCL 2.x).
struct Api {
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int,
    comm_destroy: unsafe extern "C" fn(Comm) -> c_int,
    get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    send: unsafe extern "C" fn(*const c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    recv: unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    group_start: unsafe extern "C" fn() -> c_int,
    group_end: unsafe extern "C" fn() -> c_int,
}

/// Where to look for the library, in order.
fn candidates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::env::var_os("MXGPT_NCCL_LIB")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    let root = std::env::var_os("MXGPT_ROOT").map_or(PathBuf::from("."), PathBuf::from);
    for sub in ["nvidia/nccl/lib", "nvidia/cu13/lib"] {
        v.push(root.join(".toolchain/nccl").join(sub).join("libnccl.so.2"));
    }
    v.push(PathBuf::from("libnccl.so.2"));
    v
}

/// Opens the first of `paths` that loads and resolves every entry point. The handle is never
/// closed: the functions live as long as the process.
#[allow(clippy::missing_transmute_annotations)] // each target type is the field's
fn load_from(paths: &[PathBuf]) -> Result<Api, String> {
    let mut tried = Vec::new();
    for p in paths {
        let c = CString::new(p.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: dlopen with a NUL-terminated path; dlerror returns a C string or null.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            let why = unsafe { libc::dlerror() };
            let why = if why.is_null() {
                "not found".into()
            } else {
                unsafe { CStr::from_ptr(why) }.to_string_lossy().to_string()
            };
            tried.push(format!("{}: {why}", p.display()));
            continue;
        }
        let sym = |name: &str| -> Result<*mut c_void, String> {
            let n = CString::new(name).unwrap();
            // SAFETY: dlsym on a live handle with a NUL-terminated name.
            let f = unsafe { libc::dlsym(h, n.as_ptr()) };
            if f.is_null() {
                Err(format!(
                    "{} has no {name}: not an NCCL 2 library",
                    p.display()
                ))
            } else {
                Ok(f)
            }
        };
        // SAFETY: each symbol is the nccl.h function of that name, whose C signature the field's
        // type spells out.
        unsafe {
            return Ok(Api {
                get_unique_id: std::mem::transmute(sym("ncclGetUniqueId")?),
                comm_init_rank: std::mem::transmute(sym("ncclCommInitRank")?),
                comm_destroy: std::mem::transmute(sym("ncclCommDestroy")?),
                get_error_string: std::mem::transmute(sym("ncclGetErrorString")?),
                send: std::mem::transmute(sym("ncclSend")?),
                recv: std::mem::transmute(sym("ncclRecv")?),
                group_start: std::mem::transmute(sym("ncclGroupStart")?),
                group_end: std::mem::transmute(sym("ncclGroupEnd")?),
            });
        }
    }
    Err(format!(
        "NCCL could not be loaded (install it with `pip install --target .toolchain/nccl nvidia-nccl-cu13`, or set MXGPT_NCCL_LIB to libnccl.so.2); tried:\n  {}",
        tried.join("\n  ")
    ))
}

/// One NCCL communicator over the ranks of a process transport, on the current CUDA device.
pub struct Nccl {
    api: Api,
    comm: Comm,
}

impl Nccl {
    /// Loads NCCL and joins every rank of `dist`: rank 0 makes the unique id, MPI carries it.
    pub fn init(dist: &dyn Transport) -> Result<Nccl, String> {
        let api = load_from(&candidates())?;
        let mut id = UniqueId([0; 128]);
        if dist.rank() == 0 {
            // SAFETY: writes the 128 bytes of `id`.
            check(
                &api,
                unsafe { (api.get_unique_id)(&mut id) },
                "ncclGetUniqueId",
            )?;
        }
        dist.broadcast(&mut id.0, 0)?;
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: comm is written on success; the id is the same on every rank.
        let r = unsafe {
            (api.comm_init_rank)(&mut comm, dist.size() as c_int, id, dist.rank() as c_int)
        };
        check(&api, r, "ncclCommInitRank")?;
        Ok(Nccl { api, comm })
    }

    /// Enqueues on `stream`, as one NCCL group, each (peer, address, bytes) of `sends` to that
    /// peer and of `recvs` from it: raw bytes at device addresses (the data movement of a
    /// reduce-scatter whose sum is ours, and of the all-gather). A peer may be this rank (NCCL
    /// >= 2.7 pairs a send and a receive to self within the group).
    ///
    /// # Safety
    /// Every address is device memory of the current context, valid for its byte count.
    pub unsafe fn exchange_bytes(
        &self,
        sends: &[(usize, u64, usize)],
        recvs: &[(usize, u64, usize)],
        stream: Stream,
    ) -> Result<(), String> {
        check(&self.api, (self.api.group_start)(), "ncclGroupStart")?;
        for &(peer, p, n) in sends {
            let r = (self.api.send)(
                p as *const c_void,
                n,
                NCCL_UINT8,
                peer as c_int,
                self.comm,
                stream,
            );
            if let Err(e) = check(&self.api, r, "ncclSend") {
                (self.api.group_end)();
                return Err(e);
            }
        }
        for &(peer, p, n) in recvs {
            let r = (self.api.recv)(
                p as *mut c_void,
                n,
                NCCL_UINT8,
                peer as c_int,
                self.comm,
                stream,
            );
            if let Err(e) = check(&self.api, r, "ncclRecv") {
                (self.api.group_end)();
                return Err(e);
            }
        }
        check(&self.api, (self.api.group_end)(), "ncclGroupEnd")
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator made in `init`, destroyed once.
        unsafe { (self.api.comm_destroy)(self.comm) };
    }
}

fn check(api: &Api, r: c_int, what: &str) -> Result<(), String> {
    if r == 0 {
        return Ok(());
    }
    // SAFETY: ncclGetErrorString returns a static C string.
    let s = unsafe { CStr::from_ptr((api.get_error_string)(r)) };
    Err(format!(
        "{what} failed: NCCL error {r} ({})",
        s.to_string_lossy()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_wrong_library_is_named() {
        let e = load_from(&[PathBuf::from("/nonexistent/libnccl.so.2")])
            .err()
            .unwrap();
        assert!(
            e.contains("/nonexistent/libnccl.so.2") && e.contains("nvidia-nccl-cu13"),
            "{e}"
        );
        let e = load_from(&[PathBuf::from("libc.so.6")]).err().unwrap();
        assert!(e.contains("has no ncclGetUniqueId"), "{e}");
    }
}
