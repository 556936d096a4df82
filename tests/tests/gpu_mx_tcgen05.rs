//! The Blackwell MX GEMM (ptx/kernels/mx_gemm_tcgen05.cu, launcher
//! gpt::cuda::kernels::mx_tcgen05), checked as far as a machine without a B200 can:
//!
//! (a) the descriptor encoders against the PTX ISA 9.0 bit tables, whose bit positions are
//!     written out here from the ISA text (the table rows are quoted), independently of the
//!     encoders: every field set to a distinct value and read back from its bits, fields
//!     disjoint, reserved bits clear, and whole words worked out by hand;
//! (b) the operand-tile layout is a bijection onto the tile and is the ISA's canonical K-major
//!     no-swizzle layout with the strides the descriptor states; the scale tile is a bijection
//!     and lands, through tcgen05.cp.32x128b.warpx4, where the MMA reads scale factors;
//!     the constants written into the kernel are what the encoders produce;
//! (c) on the host harness (an H100 model) the launcher refuses with an error naming the
//!     compute capability, and the harness lists the kernel as not emulated, with
//!     mx_gemm_int8's parameter list;
//! (d) on a real GPU of compute capability 10.x (MXGPT_TEST_DEVICE=cuda): bit for bit against
//!     mx_gemm_int8 on random quantized operands. Skipped everywhere else (it says so).
//!
//! Nothing here has run on hardware: (a) and (b) prove the encoders implement the tables as we
//! read them, not that the tensor core reads them the same way; only (d) on a B200 does that.

use gpt::cuda::kernels::mx::{self, MxRef};
use gpt::cuda::kernels::mx_tcgen05::{
    self as tc, desc_encode, gemm_tcgen05, instr_desc_mxf4, operand_desc, operand_offset, sf_desc,
    sf_offset, sf_tmem_after_copy, sf_tmem_for_mma, Mxf4InstrDesc, SmemDesc, Swizzle,
};
use gpt::cuda::kernels::Ptr;
use gpt::mx::gemm::SR_FACTOR;
use gpt::mx::Rounding;
use runtime::cuda::half::bf16;
use runtime::cuda::Gpu;
use tests::gpu::{gpu, mx_operand, poisoned, DevMxOperand, Rng};

/// The kernel source, whose descriptor literals must be what the encoders produce.
const KERNEL_SRC: &str = include_str!("../../ptx/kernels/mx_gemm_tcgen05.cu");

/// Bits [lo, lo + width) of `word`.
fn bits(word: u64, lo: u32, width: u32) -> u64 {
    (word >> lo) & ((1u64 << width) - 1)
}

// ---- (a) the instruction descriptor ------------------------------------------------------

/// PTX ISA 9.0, 9.7.16.4.2, Table 44 "Instruction descriptor format for .kind::mxf4 and
/// .kind::mxf4nvf4" (bits, size, description):
///   "0-1   | 2 | Reserved"
///   "2     | 1 | Sparsity | Dense = 0 Sparse = 1"
///   "3     | 1 | Reserved"
///   "4-5   | 2 | Matrix B Scale Factor Data ID | 0 or 2"
///   "6     | 1 | Reserved"
///   "7-9   | 3 | atype (Matrix A type) | E2M1 = 1"
///   "10-11 | 2 | btype (Matrix B type)"
///   "12    | 1 | Reserved"
///   "13    | 1 | Negate A Matrix",  "14 | 1 | Negate B Matrix"
///   "15    | 1 | Transpose A Matrix", "16 | 1 | Transpose B Matrix"
///   "17-22 | 6 | N, Dimension of Matrix B (3 LSBs not included) | N >> 3"
///   "23    | 1 | Scale Matrix Type, for both scale_A / scale_B | UE8M0 = 1"
///   "24-26 | 3 | Reserved"
///   "27-28 | 2 | M, Dimension of Matrix A (7 LSBs not included) | M >> 7"
///   "29-30 | 2 | Matrix A Scale Factor Data ID | 0 or 2"
///   "31    | 1 | K Dimension | (Dense K=64 / Sparse K=128) = 0 (Dense K=96) = 1"
/// As (name, first bit, width).
const IDESC_FIELDS: &[(&str, u32, u32)] = &[
    ("sparse", 2, 1),
    ("b_sf_id", 4, 2),
    ("a_type", 7, 3),
    ("b_type", 10, 2),
    ("negate_a", 13, 1),
    ("negate_b", 14, 1),
    ("transpose_a", 15, 1),
    ("transpose_b", 16, 1),
    ("n_dim", 17, 6),
    ("scale_ue8m0", 23, 1),
    ("m_dim", 27, 2),
    ("a_sf_id", 29, 2),
    ("k96", 31, 1),
];
/// Table 44's reserved bits: 0-1, 3, 6, 12, 24-26.
const IDESC_RESERVED: u32 = 0b11 | 1 << 3 | 1 << 6 | 1 << 12 | 0b111 << 24;

/// A descriptor whose field `name` is `v` and every other field 0.
fn idesc_with(name: &str, v: u32) -> Mxf4InstrDesc {
    let mut d = Mxf4InstrDesc::default();
    match name {
        "sparse" => d.sparse = v != 0,
        "b_sf_id" => d.b_sf_id = v,
        "a_type" => d.a_type = v,
        "b_type" => d.b_type = v,
        "negate_a" => d.negate_a = v != 0,
        "negate_b" => d.negate_b = v != 0,
        "transpose_a" => d.transpose_a = v != 0,
        "transpose_b" => d.transpose_b = v != 0,
        "n_dim" => d.n_dim = v,
        "scale_ue8m0" => d.scale_ue8m0 = v != 0,
        "m_dim" => d.m_dim = v,
        "a_sf_id" => d.a_sf_id = v,
        "k96" => d.k96 = v != 0,
        _ => unreachable!("{name}"),
    }
    d
}

#[test]
fn instruction_descriptor_fields_sit_where_table_44_puts_them() {
    // Each field alone at its all-ones value: exactly its own bits, nothing else.
    let mut covered = 0u32;
    for &(name, lo, width) in IDESC_FIELDS {
        let ones = (1u32 << width) - 1;
        let w = idesc_with(name, ones).encode();
        assert_eq!(w, ones << lo, "{name} alone: {w:#010x}");
        assert_eq!(covered & w, 0, "{name} overlaps another field");
        covered |= w;
    }
    assert_eq!(
        covered | IDESC_RESERVED,
        u32::MAX,
        "every bit is a field or reserved"
    );
    assert_eq!(covered & IDESC_RESERVED, 0);

    // All fields at once, each a distinct in-range value, read back field by field.
    let d = Mxf4InstrDesc {
        sparse: true,
        b_sf_id: 2,
        a_type: 5,
        b_type: 3,
        negate_a: false,
        negate_b: true,
        transpose_a: true,
        transpose_b: false,
        n_dim: 0b10_1101,
        scale_ue8m0: true,
        m_dim: 1,
        a_sf_id: 3,
        k96: true,
    };
    let w = d.encode() as u64;
    let want: &[(&str, u64)] = &[
        ("sparse", 1),
        ("b_sf_id", 2),
        ("a_type", 5),
        ("b_type", 3),
        ("negate_a", 0),
        ("negate_b", 1),
        ("transpose_a", 1),
        ("transpose_b", 0),
        ("n_dim", 0b10_1101),
        ("scale_ue8m0", 1),
        ("m_dim", 1),
        ("a_sf_id", 3),
        ("k96", 1),
    ];
    for (&(name, lo, width), &(wname, v)) in IDESC_FIELDS.iter().zip(want) {
        assert_eq!(name, wname);
        assert_eq!(bits(w, lo, width), v, "field {name} of {w:#010x}");
    }
    assert_eq!(w as u32 & IDESC_RESERVED, 0, "reserved bits set: {w:#010x}");
}

#[test]
#[should_panic(expected = "does not fit 2 bits")]
fn instruction_descriptor_rejects_a_field_wider_than_its_bits() {
    // btype is only 2 bits wide for kind::mxf4 (bit 12 is reserved).
    idesc_with("b_type", 4).encode();
}

#[test]
fn instruction_descriptor_whole_words_by_hand() {
    // M = 128, N = 128, ids 0 (the kernel's): atype E2M1 = 1 at bit 7 (0x80), btype 1 at bit 10
    // (0x400), N >> 3 = 16 at bit 17 (0x20_0000), UE8M0 at bit 23 (0x80_0000), M >> 7 = 1 at
    // bit 27 (0x0800_0000).
    assert_eq!(
        instr_desc_mxf4(128, 128, 0, 0),
        0x0800_0000 | 0x80_0000 | 0x20_0000 | 0x480
    );
    assert_eq!(instr_desc_mxf4(128, 128, 0, 0), 0x08A0_0480);
    // M = 128, N = 256, both ids 2: N >> 3 = 32 at 17 (0x40_0000), B id 2 at 4 (0x20), A id 2
    // at 29 (0x4000_0000).
    assert_eq!(instr_desc_mxf4(128, 256, 2, 2), 0x48C0_04A0);
    // M = 256, N = 8, B id 2: M >> 7 = 2 at 27 (0x1000_0000), N >> 3 = 1 at 17 (0x2_0000).
    assert_eq!(instr_desc_mxf4(256, 8, 0, 2), 0x1082_04A0);
    // CUTLASS's InstrDescriptorBlockScaled puts M >> 4 in bits 24-28: the same words for the
    // two M that kind::mxf4 has.
    for m in [128u32, 256] {
        let w = instr_desc_mxf4(m, 64, 0, 0);
        assert_eq!(bits(w as u64, 24, 5), (m >> 4) as u64, "M = {m}");
    }
    // Shapes and ids Table 44 / Table 39 do not allow.
    assert!(Mxf4InstrDesc::dense(64, 128, 0, 0).is_err());
    assert!(Mxf4InstrDesc::dense(128, 12, 0, 0).is_err());
    assert!(Mxf4InstrDesc::dense(128, 264, 0, 0).is_err());
    assert!(Mxf4InstrDesc::dense(128, 128, 1, 0).is_err());
    assert!(Mxf4InstrDesc::dense(128, 128, 0, 3).is_err());
}

// ---- (a) the shared-memory descriptor ----------------------------------------------------

/// PTX ISA 9.0, 9.7.16.4.1, Table 40 "Shared memory descriptor layout" (bit-field, size,
/// description):
///   "0-13  | 14 | matrix-descriptor-encode (Matrix start address)"
///   "16-29 | 14 | matrix-descriptor-encode (Leading dimension byte offset relative) OR
///                 matrix-descriptor-encode (Leading dimension byte address absolute)"
///   "32-45 | 14 | matrix-descriptor-encode (Stride dimension byte offset)"
///   "46-48 | 3  | Fixed constant value of 0b001"
///   "49-51 | 3  | Matrix base offset"
///   "52    | 1  | Leading dimension stride mode: 0: byte offset relative 1: byte address absolute"
///   "53-60 | 8  | Fixed constant value of 0"
///   "61-63 | 3  | Specifies the swizzling mode to be used: 0. No swizzling 1. 128-Byte with 32B
///                 atomic swizzling 2. 128-Byte swizzling 4. 64-Byte swizzling 6. 32-Byte
///                 swizzling"
/// "where matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4". Bits 14-15 and 30-31 are in no
/// row: zero.
const SDESC_FIELDS: &[(&str, u32, u32)] = &[
    ("start", 0, 14),
    ("lbo", 16, 14),
    ("sbo", 32, 14),
    ("fixed_001", 46, 3),
    ("base_offset", 49, 3),
    ("lbo_mode", 52, 1),
    ("fixed_0", 53, 8),
    ("swizzle", 61, 3),
];

fn matrix_descriptor_encode(x: u64) -> u64 {
    (x & 0x3FFFF) >> 4
}

#[test]
fn shared_memory_descriptor_fields_sit_where_table_40_puts_them() {
    let d = SmemDesc {
        start: 0x1_2340,
        lbo: 0x450,
        sbo: 0x3_FFF0,
        base_offset: 5,
        lbo_absolute: true,
        swizzle: Swizzle::B64,
    };
    let w = d.encode();
    let want = [
        ("start", matrix_descriptor_encode(0x1_2340)),
        ("lbo", matrix_descriptor_encode(0x450)),
        ("sbo", matrix_descriptor_encode(0x3_FFF0)),
        ("fixed_001", 0b001),
        ("base_offset", 5),
        ("lbo_mode", 1),
        ("fixed_0", 0),
        ("swizzle", 4),
    ];
    let mut covered = 0u64;
    for (&(name, lo, width), &(wname, v)) in SDESC_FIELDS.iter().zip(&want) {
        assert_eq!(name, wname);
        assert_eq!(bits(w, lo, width), v, "field {name} of {w:#018x}");
        covered |= ((1u64 << width) - 1) << lo;
    }
    assert_eq!(w & !covered, 0, "bits outside every field: {w:#018x}");
    assert_eq!(bits(w, 14, 2) | bits(w, 30, 2), 0);

    // Each swizzle mode's code (Table 40's numbering).
    for (s, code) in [
        (Swizzle::None, 0),
        (Swizzle::B128Atom32, 1),
        (Swizzle::B128, 2),
        (Swizzle::B64, 4),
        (Swizzle::B32, 6),
    ] {
        let w = SmemDesc {
            swizzle: s,
            ..Default::default()
        }
        .encode();
        assert_eq!(bits(w, 61, 3), code, "{s:?}");
    }
    // The encoding keeps address bits 4..17 only.
    assert_eq!(desc_encode(0x4_0010), 1);
    assert_eq!(desc_encode(0x3_FFFF), 0x3FFF);
}

#[test]
fn shared_memory_descriptor_whole_words_by_hand() {
    // Nothing but the fixed 0b001 at bits 46-48: bit 46.
    assert_eq!(SmemDesc::default().encode(), 1u64 << 46);
    // The kernel's operand tiles: LBO 128 -> 8 at bit 16 (0x8_0000), SBO 256 -> 16 at bit 32
    // (0x10_0000_0000), bit 46 (0x4000_0000_0000), no swizzle, base offset 0.
    assert_eq!(operand_desc(0), 0x0000_4010_0008_0000);
    // At shared address 0x400: start field 0x40.
    assert_eq!(operand_desc(0x400), 0x0000_4010_0008_0040);
    // The scale tiles: SBO 128 -> 8 at bit 32, LBO 0.
    assert_eq!(sf_desc(0), 0x0000_4008_0000_0000);
    assert_eq!(sf_desc(0x2230), 0x0000_4008_0000_0223);
    // The ISA's own example (9.7.16.3.3, "K-Major, no-swizzling and tf32 type": "LBO (relative
    // offset) 64*sizeof(tf32)", "SBO 32*sizeof(tf32)", "Encoding of LBO in descriptor (LBO) >> 4
    // = 16", "Encoding of SBO in descriptor (SBO) >> 4 = 8").
    let w = SmemDesc {
        lbo: 64 * 4,
        sbo: 32 * 4,
        ..Default::default()
    }
    .encode();
    assert_eq!((bits(w, 16, 14), bits(w, 32, 14)), (16, 8));
}

#[test]
#[should_panic(expected = "multiple of 16")]
fn shared_memory_descriptor_rejects_unaligned_offsets() {
    SmemDesc {
        sbo: 200,
        ..Default::default()
    }
    .encode();
}

// ---- (b) the tile layouts ----------------------------------------------------------------

/// PTX ISA 9.0, 9.7.16.3.3 "Canonical Layouts", K-major, "No-swizzling or Interleaved":
/// "((8,m),(T,2k)):((1T,SBO),(1,LBO))" where "T = 128 / sizeof-elements-in-bits" (elements per
/// 16 bytes). In element units, element (row, k) with row = r0 + 8 r1, k = k0 + T k1 is at
/// r0 T + r1 SBO + k0 + k1 LBO. For E2M1, T = 32 and an element is half a byte ("pack two
/// 4-bit elements in a 8-bit container, with no padding", 9.7.16.10.4.6; element 2i in the low
/// nibble, as mxgpt packs codes). Returns (byte, nibble shift).
fn isa_k_major_no_swizzle(
    row: usize,
    k: usize,
    lbo_bytes: usize,
    sbo_bytes: usize,
) -> (usize, u32) {
    const T: usize = 128 / 4;
    let (r0, r1, k0, k1) = (row % 8, row / 8, k % T, k / T);
    let (sbo, lbo) = (2 * sbo_bytes, 2 * lbo_bytes); // bytes -> 4-bit elements
    let e = r0 * T + r1 * sbo + k0 + k1 * lbo;
    (e / 2, 4 * (e % 2) as u32)
}

#[test]
fn operand_tile_is_a_bijection_and_the_isa_canonical_layout() {
    let desc = operand_desc(0);
    let (lbo, sbo) = (
        (bits(desc, 16, 14) << 4) as usize,
        (bits(desc, 32, 14) << 4) as usize,
    );
    assert_eq!(
        (lbo, sbo),
        (128, 256),
        "the strides the kernel's descriptor states"
    );
    let mut seen = vec![false; 2 * tc::OPERAND_TILE_BYTES];
    for row in 0..tc::TILE_M {
        for k in 0..tc::K_STEP {
            let (byte, shift) = operand_offset(row, k);
            assert_eq!(
                (byte, shift),
                isa_k_major_no_swizzle(row, k, lbo, sbo),
                "element ({row}, {k})"
            );
            let slot = 2 * byte + (shift / 4) as usize;
            assert!(
                !seen[slot],
                "element ({row}, {k}) shares byte {byte} nibble {shift}"
            );
            seen[slot] = true;
        }
    }
    assert!(
        seen.iter().all(|&s| s),
        "every nibble of the tile holds an element"
    );
    // A core matrix is 8 rows x 16 bytes, contiguous: rows 16 bytes apart, and one MX block of a
    // row (32 codes = 16 packed bytes) is one core-matrix row, copied as it is.
    for row in 0..tc::TILE_M {
        for blk in 0..2 {
            let (first, _) = operand_offset(row, 32 * blk);
            assert_eq!(first % 16, 0);
            for k in 0..32 {
                let (b, shift) = operand_offset(row, 32 * blk + k);
                assert_eq!((b, shift), (first + k / 2, 4 * (k % 2) as u32));
            }
        }
        let g = row / 8 * 8;
        assert_eq!(
            operand_offset(row, 0).0,
            operand_offset(g, 0).0 + 16 * (row % 8)
        );
    }
}

#[test]
fn scale_tile_is_a_bijection_and_lands_where_the_mma_reads_it() {
    let mut seen = [false; tc::SF_TILE_BYTES];
    for row in 0..tc::TILE_M {
        for block in 0..4 {
            let o = sf_offset(row, block);
            assert!(!seen[o], "scale ({row}, {block}) shares byte {o}");
            seen[o] = true;
        }
        // A row's word (blocks 0..3) is 4 contiguous, 4-aligned bytes.
        assert_eq!(sf_offset(row, 0) % 4, 0);
        for block in 0..4 {
            assert_eq!(sf_offset(row, block), sf_offset(row, 0) + block);
        }
    }
    assert!(seen.iter().all(|&s| s));
    // The copy's source is 32 rows of 16 bytes, row r at r * 16: 8-row core matrices 128 bytes
    // apart, which is the SBO of the scale descriptor (LBO unused: one 16-byte column).
    let desc = sf_desc(0);
    assert_eq!((bits(desc, 32, 14) << 4, bits(desc, 16, 14)), (128, 0));
    // Through the copy, row r's scales of this K step reach the cells the MMA reads with
    // scale-factor id 0 (bytes 0 and 1 of column r / 32, lane r % 32 of each quarter).
    for row in 0..tc::TILE_M {
        for block in 0..2 {
            assert_eq!(
                sf_tmem_after_copy(sf_offset(row, block)),
                sf_tmem_for_mma(row, block, 0),
                "scale ({row}, {block})"
            );
        }
    }
    // Tensor memory budget: D (N columns), then 4 columns of scale_A and of scale_B, inside an
    // allocation of a power-of-two number of columns in 32..=512.
    const {
        assert!(tc::TMEM_COLS.is_power_of_two() && tc::TMEM_COLS >= 32 && tc::TMEM_COLS <= 512);
        assert!(tc::TMEM_D_COL + tc::TILE_N as u32 <= tc::TMEM_SFA_COL);
        assert!(tc::TMEM_SFA_COL + 4 <= tc::TMEM_SFB_COL);
        assert!(tc::TMEM_SFB_COL + 4 <= tc::TMEM_COLS);
    }
}

/// `#define NAME VALUE` from the kernel source (decimal or 0x hex, with any u/ull suffix).
fn kernel_define(name: &str) -> u64 {
    let line = KERNEL_SRC
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("#define ")?
                .strip_prefix(name)?
                .strip_prefix(' ')
        })
        .unwrap_or_else(|| panic!("mx_gemm_tcgen05.cu has no #define {name}"));
    let v = line.split_whitespace().next().unwrap();
    let v = v.trim_end_matches(['u', 'U', 'l', 'L']);
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    }
    .unwrap_or_else(|e| panic!("#define {name} {line}: {e}"))
}

#[test]
fn the_kernel_uses_the_constants_the_encoders_produce() {
    assert_eq!(
        kernel_define("MXT_IDESC"),
        instr_desc_mxf4(128, 128, 0, 0) as u64
    );
    assert_eq!(kernel_define("MXT_AB_DESC"), operand_desc(0));
    assert_eq!(kernel_define("MXT_SF_DESC"), sf_desc(0));
    assert_eq!(kernel_define("MXT_LBO"), tc::CORE_LBO as u64);
    assert_eq!(kernel_define("MXT_SBO"), tc::CORE_SBO as u64);
    assert_eq!(kernel_define("MXT_BM"), tc::TILE_M as u64);
    assert_eq!(kernel_define("MXT_BN"), tc::TILE_N as u64);
    assert_eq!(kernel_define("MXT_BK"), tc::K_STEP as u64);
    assert_eq!(kernel_define("MXT_THREADS"), tc::THREADS as u64);
    assert_eq!(kernel_define("MXT_TMEM_COLS"), tc::TMEM_COLS as u64);
    assert_eq!(kernel_define("MXT_D_COL"), tc::TMEM_D_COL as u64);
    assert_eq!(kernel_define("MXT_SFA_COL"), tc::TMEM_SFA_COL as u64);
    assert_eq!(kernel_define("MXT_SFB_COL"), tc::TMEM_SFB_COL as u64);
    assert_eq!(kernel_define("MXT_PAD_SCALE"), tc::PAD_SCALE as u64);
    // The kernel's layout and descriptor-address code, which operand_offset / sf_offset /
    // SmemDesc mirror: a change here must change them too.
    for line in [
        "return (row / 8) * MXT_SBO + (kbyte / 16) * MXT_LBO + (row % 8) * 16 + kbyte % 16;",
        "__device__ __forceinline__ int mxt_sf_word(int row) { return (row % 32) * 4 + row / 32; }",
        "return base | (uint64_t)((addr & 0x3FFFFu) >> 4);",
    ] {
        assert!(
            KERNEL_SRC.contains(line),
            "the kernel no longer has: {line}"
        );
    }
    // mxt_sf_word is in 32-bit words: byte sf_offset(row, 0).
    for row in 0..tc::TILE_M {
        assert_eq!(4 * ((row % 32) * 4 + row / 32), sf_offset(row, 0));
    }
    // The build's header lines: sm_100a only, and not emulated by the harness.
    assert_eq!(KERNEL_SRC.lines().next(), Some("// targets: sm_100a"));
    assert!(KERNEL_SRC
        .lines()
        .any(|l| l.starts_with("// harness: not emulated (tcgen05")));
}

// ---- (c) the launcher and the harness ----------------------------------------------------

fn is_blackwell(g: &Gpu) -> bool {
    g.props().compute_capability.0 == 10
}

#[test]
fn launcher_refuses_devices_other_than_compute_capability_10() {
    let g = gpu();
    if is_blackwell(&g) {
        println!("skipped: {} is compute capability 10.x", g.props().name);
        return;
    }
    let (m, n, k) = (64, 64, 64);
    let codes = poisoned::<u8>(&g, m * k / 2);
    let scales = poisoned::<u8>(&g, m * k / 32);
    let c = poisoned::<bf16>(&g, m * n);
    let op = MxRef {
        codes: Ptr::of(&codes),
        scales: Ptr::of(&scales),
    };
    let e = gemm_tcgen05(&g, Ptr::of(&c), op, op, m, n, k, 1.0, false)
        .unwrap_err()
        .to_string();
    let (major, minor) = g.props().compute_capability;
    for w in [
        "mx_gemm_tcgen05",
        g.props().name.as_str(),
        &format!("compute capability {major}.{minor}"),
        "10.x",
        "sm_100a",
        "not been verified on hardware",
    ] {
        assert!(e.contains(w), "error lacks '{w}': {e}");
    }
    // The output was not touched.
    assert!(g.download(&c).unwrap().iter().all(|x| x.is_nan()));

    // The operand checks are mx::gemm_int8's.
    let e = gemm_tcgen05(&g, Ptr::of(&c), op, op, 8, 8, 48, 1.0, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("K = 48"), "{e}");
    let e = gemm_tcgen05(&g, Ptr::of(&c), op, op, 64, 64, 128, 1.0, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a.codes") && e.contains("4096"), "{e}");
    let unaligned = MxRef {
        codes: Ptr::of(&codes).slice(4, 512),
        scales: Ptr::of(&scales),
    };
    let e = gemm_tcgen05(&g, Ptr::of(&c), unaligned, op, 2, 2, 32, 1.0, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("16-byte aligned"), "{e}");
}

#[test]
fn harness_lists_the_kernel_as_not_emulated_with_the_int8_parameter_list() {
    let table = runtime::cuda::ptx::harness::kernels();
    let find = |module: &str, name: &str| {
        table
            .iter()
            .find(|k| k.module == module && k.name == name)
            .unwrap_or_else(|| panic!("the harness has no {module}::{name}"))
    };
    let tc = find("mx_gemm_tcgen05", "mx_gemm_tcgen05");
    let why = tc
        .not_emulated
        .expect("mx_gemm_tcgen05 must be marked not emulated");
    assert!(why.contains("tcgen05"), "{why}");
    let int8 = find("mx_gemm", "mx_gemm_int8");
    assert_eq!(int8.not_emulated, None);
    assert_eq!(
        tc.signature, int8.signature,
        "the parameter list of mx_gemm_int8"
    );
    assert_eq!(tc.param_sizes, int8.param_sizes);
    assert_eq!(
        table
            .iter()
            .filter(|k| k.module == "mx_gemm_tcgen05")
            .count(),
        1,
        "one kernel in the module"
    );

    // Launched directly, the harness refuses it by name.
    let g = Gpu::harness(runtime::cuda::Schedule::InOrder);
    let k = g.kernel("mx_gemm_tcgen05", "mx_gemm_tcgen05").unwrap();
    let codes = poisoned::<u8>(&g, 64);
    let c = poisoned::<bf16>(&g, 4);
    let (p, one, f, zero) = (Ptr::of(&codes), 1i32, 1.0f32, 0i32);
    let cfg = runtime::cuda::LaunchConfig {
        grid: (1, 1, 1),
        block: (128, 1, 1),
        smem_bytes: 0,
    };
    // SAFETY: the harness refuses the launch before reading any argument.
    let e = unsafe { g.launch(&k, cfg, &[&c, &p, &p, &p, &p, &one, &one, &one, &f, &zero]) }
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not emulate") && e.contains("tcgen05"),
        "{e}"
    );
}

// ---- (d) on a B200 -----------------------------------------------------------------------

/// Ragged M and N (tile edges), K with a 32-element tail (K % 64 == 32), several tiles.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 32),
    (17, 45, 96),
    (130, 72, 64),
    (128, 128, 256),
    (200, 136, 320),
    (257, 300, 1056),
];

#[test]
fn tcgen05_path_is_bit_identical_to_the_int8_path_on_blackwell() {
    if std::env::var("MXGPT_TEST_DEVICE").as_deref() != Ok("cuda") {
        println!(
            "skipped: the tcgen05 MX GEMM needs a compute-capability-10.x GPU \
             (MXGPT_TEST_DEVICE=cuda on a B200); this run uses the host harness, which does not \
             emulate tcgen05"
        );
        return;
    }
    let g = gpu();
    if !is_blackwell(&g) {
        let (major, minor) = g.props().compute_capability;
        println!(
            "skipped: {} is compute capability {major}.{minor}; the tcgen05 MX GEMM needs 10.x",
            g.props().name
        );
        return;
    }
    let mut rng = Rng(53);
    for &(m, n, k) in SHAPES {
        for rounding in [Rounding::Rtn, Rounding::Sr] {
            for accumulate in [false, true] {
                let nan = (m > 100).then_some(3 * k + 40);
                let a = mx_operand(&mut rng, m, k, rounding, nan);
                let b = mx_operand(&mut rng, n, k, rounding, None);
                let (da, db) = (DevMxOperand::upload(&g, &a), DevMxOperand::upload(&g, &b));
                let old = rng.vec_bf16(m * n, 2.0);
                let alpha = if rounding == Rounding::Sr {
                    SR_FACTOR
                } else {
                    1.0
                };
                let run = |tcgen05: bool| {
                    let c = if accumulate {
                        g.upload(&old).unwrap()
                    } else {
                        poisoned::<bf16>(&g, m * n)
                    };
                    if tcgen05 {
                        gemm_tcgen05(&g, Ptr::of(&c), da.r(), db.r(), m, n, k, alpha, accumulate)
                    } else {
                        mx::gemm_int8(&g, Ptr::of(&c), da.r(), db.r(), m, n, k, alpha, accumulate)
                    }
                    .unwrap();
                    g.download(&c).unwrap()
                };
                let (want, got) = (run(false), run(true));
                for (i, (x, w)) in got.iter().zip(&want).enumerate() {
                    let same = if w.is_nan() {
                        x.is_nan()
                    } else {
                        x.to_bits() == w.to_bits()
                    };
                    assert!(
                        same,
                        "{m}x{n}x{k} {rounding:?} acc={accumulate}: C[{}, {}] = {x}, int8 path {w}",
                        i / n,
                        i % n
                    );
                }
                if nan.is_some() {
                    assert!(got[3 * n].is_nan(), "a NaN block must poison its row");
                }
            }
        }
    }
}
