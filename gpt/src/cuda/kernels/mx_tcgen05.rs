//! The Blackwell MX GEMM (ptx/kernels/mx_gemm_tcgen05.cu: `tcgen05.mma ... kind::mxf4
//! .block_scale`, sm_100a) and, as plain functions that need no GPU, the encodings it depends
//! on: the kind::mxf4 instruction descriptor, the sm_100 shared-memory matrix descriptor, and
//! where an operand element or a scale factor sits in the kernel's shared-memory tiles.
//!
//! NOT VERIFIED ON HARDWARE. The bit layouts are those of the PTX ISA 9.0 tables quoted below
//! (section 9.7.16.4, "Matrix Descriptors"), cross-read with CUTLASS
//! (cute/arch/mma_sm100_desc.hpp); tests/tests/gpu_mx_tcgen05.rs checks these encoders field
//! by field against the ISA's bit positions, and checks that the constants written into the
//! kernel are what these functions produce. Whether the tensor core agrees is known only once
//! that test's hardware case has run on a B200.
//!
//! The kernel takes the launch parameters of `mx::gemm_int8` and nothing more, so the
//! descriptors are not kernel arguments: the kernel holds them as literals (`MXT_IDESC`,
//! `MXT_AB_DESC`, `MXT_SF_DESC`, with the start address ORed in on the device as
//! `(addr & 0x3FFFF) >> 4`, exactly `SmemDesc::encode`'s start field), and the test reads those
//! literals from the source and compares them with [`instr_desc_mxf4`] and [`SmemDesc::encode`].

use super::mx::MxRef;
use super::Ptr;
use runtime::cuda::{half::bf16, CudaError, Gpu, LaunchConfig, Result};

/// Output tile of one CTA (rows of A, rows of B); M of the MMA (cta_group::1 allows only 128).
pub const TILE_M: usize = 128;
/// N of the MMA and of the tile.
pub const TILE_N: usize = 128;
/// K of one `kind::mxf4` MMA (dense): 64 E2M1 elements, two MX blocks, 32 bytes per row.
pub const K_STEP: usize = 64;
/// Threads per CTA: one warpgroup (4 warps), one thread per tile row.
pub const THREADS: u32 = 128;

/// Operand tile strides (bytes): the two 16-byte K chunks of an 8-row group are `CORE_LBO`
/// apart (the descriptor's leading-dimension byte offset), 8-row groups `CORE_SBO` apart (its
/// stride-dimension byte offset). Each 8 x 16-byte core matrix is 128 contiguous bytes.
pub const CORE_LBO: u32 = 128;
pub const CORE_SBO: u32 = 256;
/// Bytes of one operand tile (128 rows x 32 bytes).
pub const OPERAND_TILE_BYTES: usize = TILE_M / 8 * CORE_SBO as usize;
/// Scale tile: 128 rows x one 32-bit word (scale bytes of blocks 0 and 1 of the step, two pad
/// bytes), laid out for `tcgen05.cp.32x128b.warpx4`; its descriptor has SBO = 128 (8 rows of 16
/// bytes) and LBO = 0 (a 128-bit-wide copy has one core matrix along K).
pub const SF_SBO: u32 = 128;
pub const SF_TILE_BYTES: usize = 4 * TILE_M;
/// Tensor memory: columns allocated per CTA, and the first column of D, scale_A and scale_B.
pub const TMEM_COLS: u32 = 256;
pub const TMEM_D_COL: u32 = 0;
pub const TMEM_SFA_COL: u32 = 128;
pub const TMEM_SFB_COL: u32 = 132;
/// Scale byte of padding (rows past M/N, the empty second block of a K % 64 == 32 tail):
/// 2^0, never NaN, so its zero codes contribute exactly 0.
pub const PAD_SCALE: u8 = 127;

/// Type code of E2M1 in the a/b type fields of the kind::mxf4 instruction descriptor.
pub const MXF4_E2M1: u32 = 1;

/// The fields of the 32-bit instruction descriptor of `.kind::mxf4` / `.kind::mxf4nvf4`
/// (PTX ISA 9.0, Table 44 "Instruction descriptor format for .kind::mxf4 and
/// .kind::mxf4nvf4"), each as the raw value of its bit field:
///
/// | bits  | field |
/// |-------|-------|
/// | 0-1   | reserved, 0 |
/// | 2     | sparsity (dense 0) |
/// | 3     | reserved, 0 |
/// | 4-5   | matrix B scale factor data id (0 or 2) |
/// | 6     | reserved, 0 |
/// | 7-9   | atype (E2M1 = 1) |
/// | 10-11 | btype (E2M1 = 1) |
/// | 12    | reserved, 0 |
/// | 13/14 | negate A / negate B |
/// | 15/16 | transpose A / transpose B (kind::mxf4: no transpose, 0) |
/// | 17-22 | N >> 3 |
/// | 23    | scale matrix type (UE8M0 = 1 for kind::mxf4) |
/// | 24-26 | reserved, 0 |
/// | 27-28 | M >> 7 |
/// | 29-30 | matrix A scale factor data id (0 or 2) |
/// | 31    | K dimension (dense K = 64: 0; dense K = 96: 1) |
///
/// CUTLASS (`InstrDescriptorBlockScaled`) writes M as M >> 4 in bits 24-28 instead; for the
/// only M values kind::mxf4 has (128, 256) the two words are identical.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mxf4InstrDesc {
    pub sparse: bool,
    pub b_sf_id: u32,
    pub a_type: u32,
    pub b_type: u32,
    pub negate_a: bool,
    pub negate_b: bool,
    pub transpose_a: bool,
    pub transpose_b: bool,
    /// N >> 3.
    pub n_dim: u32,
    pub scale_ue8m0: bool,
    /// M >> 7.
    pub m_dim: u32,
    pub a_sf_id: u32,
    pub k96: bool,
}

impl Mxf4InstrDesc {
    /// The dense E2M1 x E2M1 MMA of shape M x N x 64 with UE8M0 scales (the form this kernel
    /// uses), scale-factor ids as given. Errors unless M is 128 or 256, N a multiple of 8 in
    /// 8..=256 and each id 0 or 2 (Table 44's allowed values).
    pub fn dense(m: u32, n: u32, a_sf_id: u32, b_sf_id: u32) -> std::result::Result<Self, String> {
        if m != 128 && m != 256 {
            return Err(format!("kind::mxf4: M = {m} must be 128 or 256"));
        }
        if !n.is_multiple_of(8) || !(8..=256).contains(&n) {
            return Err(format!(
                "kind::mxf4: N = {n} must be a multiple of 8 in 8..=256"
            ));
        }
        for (what, id) in [("A", a_sf_id), ("B", b_sf_id)] {
            if id != 0 && id != 2 {
                return Err(format!(
                    "kind::mxf4: the scale factor {what} id {id} must be 0 or 2"
                ));
            }
        }
        Ok(Mxf4InstrDesc {
            a_type: MXF4_E2M1,
            b_type: MXF4_E2M1,
            n_dim: n >> 3,
            m_dim: m >> 7,
            scale_ue8m0: true,
            a_sf_id,
            b_sf_id,
            ..Default::default()
        })
    }

    /// The 32-bit word. Panics if a field does not fit its width (a caller bug).
    pub fn encode(&self) -> u32 {
        let field = |name: &str, v: u32, width: u32, at: u32| -> u32 {
            assert!(
                v < (1 << width),
                "instruction descriptor field {name} = {v} does not fit {width} bits"
            );
            v << at
        };
        field("sparse", self.sparse as u32, 1, 2)
            | field("b_sf_id", self.b_sf_id, 2, 4)
            | field("a_type", self.a_type, 3, 7)
            | field("b_type", self.b_type, 2, 10)
            | field("negate_a", self.negate_a as u32, 1, 13)
            | field("negate_b", self.negate_b as u32, 1, 14)
            | field("transpose_a", self.transpose_a as u32, 1, 15)
            | field("transpose_b", self.transpose_b as u32, 1, 16)
            | field("n_dim", self.n_dim, 6, 17)
            | field("scale_ue8m0", self.scale_ue8m0 as u32, 1, 23)
            | field("m_dim", self.m_dim, 2, 27)
            | field("a_sf_id", self.a_sf_id, 2, 29)
            | field("k96", self.k96 as u32, 1, 31)
    }
}

/// The instruction descriptor of the dense kind::mxf4 MMA M x N x 64 (E2M1, UE8M0 scales,
/// K-major A and B); panics on a shape Table 44 does not allow. The kernel's `MXT_IDESC` is
/// `instr_desc_mxf4(128, 128, 0, 0)`.
pub fn instr_desc_mxf4(m: u32, n: u32, a_sf_id: u32, b_sf_id: u32) -> u32 {
    Mxf4InstrDesc::dense(m, n, a_sf_id, b_sf_id)
        .unwrap_or_else(|e| panic!("{e}"))
        .encode()
}

/// The swizzling mode field (bits 61-63) of the shared-memory descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Swizzle {
    /// No swizzling (the canonical "interleave" layout of 8 x 16-byte core matrices).
    #[default]
    None = 0,
    /// 128-byte swizzling with 32-byte atomicity.
    B128Atom32 = 1,
    B128 = 2,
    B64 = 4,
    B32 = 6,
}

/// The 64-bit shared-memory matrix descriptor of tcgen05 (PTX ISA 9.0, Table 40 "Shared memory
/// descriptor layout"):
///
/// | bits  | field |
/// |-------|-------|
/// | 0-13  | matrix start address, encoded |
/// | 16-29 | leading dimension byte offset (or absolute address), encoded |
/// | 32-45 | stride dimension byte offset, encoded |
/// | 46-48 | fixed constant 0b001 |
/// | 49-51 | matrix base offset |
/// | 52    | leading dimension stride mode (0 relative offset, 1 absolute address) |
/// | 53-60 | fixed 0 |
/// | 61-63 | swizzling mode (0 none, 1 128B with 32B atoms, 2 128B, 4 64B, 6 32B) |
///
/// where encode(x) = (x & 0x3FFFF) >> 4 (addresses and offsets are multiples of 16 bytes).
/// Unlike sm_90's wgmma descriptor, bit 46 (the "version") must be set and the swizzle field is
/// three bits at 61.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmemDesc {
    /// Shared-memory (`.shared::cta` window) byte address of the matrix.
    pub start: u32,
    /// Leading dimension byte offset: for K-major no-swizzle, the distance between the core
    /// matrices of adjacent 16-byte K chunks.
    pub lbo: u32,
    /// Stride dimension byte offset: for K-major, the distance between 8-row groups.
    pub sbo: u32,
    /// 3 bits; 0 unless a swizzle pattern starts off its natural boundary.
    pub base_offset: u32,
    /// Bit 52: the leading dimension field is an absolute address (sm_103a only).
    pub lbo_absolute: bool,
    pub swizzle: Swizzle,
}

/// The 14-bit encoding of a descriptor address or byte offset.
pub fn desc_encode(x: u32) -> u64 {
    ((x & 0x3FFFF) >> 4) as u64
}

impl SmemDesc {
    /// The 64-bit word. Panics unless start, lbo and sbo are multiples of 16 below 2^18 and
    /// base_offset fits 3 bits.
    pub fn encode(&self) -> u64 {
        for (name, v) in [("start", self.start), ("lbo", self.lbo), ("sbo", self.sbo)] {
            assert!(
                v % 16 == 0 && v < (1 << 18),
                "shared-memory descriptor {name} = {v} must be a multiple of 16 below 2^18"
            );
        }
        assert!(self.base_offset < 8, "base offset {} > 7", self.base_offset);
        desc_encode(self.start)
            | desc_encode(self.lbo) << 16
            | desc_encode(self.sbo) << 32
            | 1u64 << 46
            | (self.base_offset as u64) << 49
            | (self.lbo_absolute as u64) << 52
            | (self.swizzle as u64) << 61
    }
}

/// The descriptor of an operand tile at shared address `start` (K-major, no swizzle,
/// LBO = `CORE_LBO`, SBO = `CORE_SBO`). The kernel's `MXT_AB_DESC` is `operand_desc(0)`.
pub fn operand_desc(start: u32) -> u64 {
    SmemDesc {
        start,
        lbo: CORE_LBO,
        sbo: CORE_SBO,
        ..Default::default()
    }
    .encode()
}

/// The descriptor of a scale tile at `start`, the source of `tcgen05.cp.32x128b.warpx4`
/// (SBO = 128, LBO = 0). The kernel's `MXT_SF_DESC` is `sf_desc(0)`.
pub fn sf_desc(start: u32) -> u64 {
    SmemDesc {
        start,
        lbo: 0,
        sbo: SF_SBO,
        ..Default::default()
    }
    .encode()
}

/// Where element (row, k) of one K step (row < 128, k < 64) sits in an operand tile: (byte
/// offset, bit shift of its nibble: 0 for even k, 4 for odd). The canonical K-major
/// no-swizzle layout: 8-row groups `CORE_SBO` apart, the two 16-byte K chunks `CORE_LBO` apart,
/// 16 bytes per row inside a core matrix; inside a byte, element 2i in the low nibble.
pub fn operand_offset(row: usize, k: usize) -> (usize, u32) {
    assert!(
        row < TILE_M && k < K_STEP,
        "element ({row}, {k}) outside the tile"
    );
    let kbyte = k / 2;
    let byte =
        row / 8 * CORE_SBO as usize + kbyte / 16 * CORE_LBO as usize + row % 8 * 16 + kbyte % 16;
    (byte, 4 * (k % 2) as u32)
}

/// Byte of scale factor `block` (0, 1; 2 and 3 are the pad bytes) of tile row `row` in a scale
/// tile: row r's word at (r % 32) * 16 + (r / 32) * 4. After `tcgen05.cp.32x128b.warpx4` the
/// word is in column (base + r / 32) of lane r % 32 of every 32-lane quarter (see
/// [`sf_tmem_after_copy`]).
pub fn sf_offset(row: usize, block: usize) -> usize {
    assert!(
        row < TILE_M && block < 4,
        "scale ({row}, {block}) outside the tile"
    );
    row % 32 * 16 + row / 32 * 4 + block
}

/// Where `tcgen05.cp.32x128b.warpx4` puts byte `offset` of its 512-byte source (32 rows of 16
/// bytes: row r at r * 16 with the descriptor `sf_desc`): (lane within each 32-lane quarter,
/// column relative to the destination, byte within the 32-bit cell). The source row is the
/// lane; its four words are four consecutive columns, low byte first (PTX ISA "tcgen05.cp",
/// "Data Movement Shape": 32 lanes x 128 bits, `.warpx4` multicasts to all four warps' lanes).
pub fn sf_tmem_after_copy(offset: usize) -> (u32, u32, u32) {
    assert!(offset < SF_TILE_BYTES);
    let (row, within) = (offset / 16, offset % 16);
    (row as u32, (within / 4) as u32, (within % 4) as u32)
}

/// Where the M = 128 block-scaled MMA reads scale factor `block` (0, 1) of row `row`, relative
/// to the scale-factor address, for scale-factor id `sf_id` (the byte of the cell it starts at):
/// (lane within each 32-lane quarter, column, byte). From CUTLASS's tensor-memory layout of
/// scale factors for M = 128 (cute `tmem_sf_frg`: replicated over the four 32-lane quarters,
/// row r in column r / 32 of lane r % 32, one byte per scale); the ISA's figure of this layout
/// is not in its text. Unverified on hardware.
pub fn sf_tmem_for_mma(row: usize, block: usize, sf_id: u32) -> (u32, u32, u32) {
    assert!(row < TILE_M && block < 2 && (sf_id == 0 || sf_id == 2));
    ((row % 32) as u32, (row / 32) as u32, sf_id + block as u32)
}

fn err(msg: String) -> CudaError {
    CudaError::new(msg, 1)
}

/// The MX GEMM on Blackwell's block-scaled FP4 tensor cores (ptx/kernels/mx_gemm_tcgen05.cu):
/// `c[m, n] = bf16(alpha · Σ_j 2^(eA+eB) · dot_j)`, or `c = bf16(c + alpha · ...)` with
/// `accumulate`, over A [m, k] and B [n, k] (the quantized operands of `mx::quantize`) — the
/// contract of `mx::gemm_int8`, with the same checks (K a multiple of 32, 16-byte aligned code
/// arrays, lengths, disjoint output). Needs a GPU of compute capability 10.x (sm_100a code:
/// B200 / GB200) and errors on anything else, the host harness included. NOT VERIFIED ON
/// HARDWARE: use `mx::gemm_int8` for results that matter until
/// tests/tests/gpu_mx_tcgen05.rs has passed on a B200.
#[allow(clippy::too_many_arguments)]
pub fn gemm_tcgen05(
    g: &Gpu,
    c: Ptr<bf16>,
    a: MxRef,
    b: MxRef,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    const K: &str = "mx_gemm_tcgen05";
    let (mi, ni, ki) = super::mx::check_gemm_operands(K, &c, &a, &b, m, n, k)?;
    if m.div_ceil(TILE_M) > u32::MAX as usize || n.div_ceil(TILE_N) > 65_535 {
        return Err(err(format!("{K}: {m} x {n} is too large a grid")));
    }
    let props = g.props();
    let (major, minor) = props.compute_capability;
    if major != 10 {
        return Err(err(format!(
            "{K}: {} has compute capability {major}.{minor}, but this path needs a Blackwell GPU \
             of compute capability 10.x (sm_100a: tcgen05.mma kind::mxf4 with scale factors in \
             tensor memory); it has also not been verified on hardware yet. Use mx::gemm_int8 \
             instead",
            props.name
        )));
    }
    let kernel = g.kernel("mx_gemm_tcgen05", K)?;
    let cfg = LaunchConfig {
        grid: (m.div_ceil(TILE_M) as u32, n.div_ceil(TILE_N) as u32, 1),
        block: (THREADS, 1, 1),
        smem_bytes: 0,
    };
    let acc = accumulate as i32;
    // SAFETY: mx_gemm_tcgen05(bf16* C, const uint8_t* a_codes, const uint8_t* a_scales,
    // const uint8_t* b_codes, const uint8_t* b_scales, int M, int N, int K, float alpha,
    // int accumulate); lengths, alignment and disjointness checked above.
    unsafe {
        g.launch(
            &kernel,
            cfg,
            &[
                &c, &a.codes, &a.scales, &b.codes, &b.scales, &mi, &ni, &ki, &alpha, &acc,
            ],
        )
    }
}
