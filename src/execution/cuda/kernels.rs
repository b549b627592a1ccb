//! The kernels: `kernels/*.cu` embedded in the binary, the entry points found in them, and
//! the parameter structs they take (each kernel takes one struct by value; these are the
//! `#[repr(C)]` mirrors of the structs in the `.cu` files).

/// The kernel files, `common.cu` first (the others use its helpers).
const FILES: &[(&str, &str)] = &[
    ("common.cu", include_str!("../../../kernels/common.cu")),
    (
        "elementwise.cu",
        include_str!("../../../kernels/elementwise.cu"),
    ),
    ("conv.cu", include_str!("../../../kernels/conv.cu")),
    ("gemm.cu", include_str!("../../../kernels/gemm.cu")),
    ("pool.cu", include_str!("../../../kernels/pool.cu")),
    ("reduce.cu", include_str!("../../../kernels/reduce.cu")),
];

/// All kernel files in one translation unit.
pub(crate) fn source() -> String {
    let mut s = String::new();
    for (name, text) in FILES {
        s.push_str(&format!("// ---- {name} ----\n"));
        s.push_str(text);
        s.push('\n');
    }
    s
}

/// FNV-1a, 64 bits: stable across Rust versions (the on-disk caches are keyed by it).
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The kernels the executor launches. Their names are the `extern "C"` names in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    Unary,
    Pointwise,
    Binary,
    BinarySame,
    Copy,
    Pad,
    Conv,
    Conv1x1,
    ConvNarrow,
    ConvDepthwise,
    Deconv,
    Gemm,
    GemmNarrow,
    Pool,
    Resize,
    Reduce,
    Softmax,
}

impl Kernel {
    pub(crate) const ALL: [Kernel; 17] = [
        Kernel::Unary,
        Kernel::Pointwise,
        Kernel::Binary,
        Kernel::BinarySame,
        Kernel::Copy,
        Kernel::Pad,
        Kernel::Conv,
        Kernel::Conv1x1,
        Kernel::ConvNarrow,
        Kernel::ConvDepthwise,
        Kernel::Deconv,
        Kernel::Gemm,
        Kernel::GemmNarrow,
        Kernel::Pool,
        Kernel::Resize,
        Kernel::Reduce,
        Kernel::Softmax,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kernel::Unary => "unary_f32",
            Kernel::Pointwise => "pointwise_f32",
            Kernel::Binary => "binary_f32",
            Kernel::BinarySame => "binary_same_f32",
            Kernel::Copy => "copy_f32",
            Kernel::Pad => "pad_f32",
            Kernel::Conv => "conv2d_f32",
            Kernel::Conv1x1 => "conv2d_1x1_f32",
            Kernel::ConvNarrow => "conv2d_narrow_f32",
            Kernel::ConvDepthwise => "conv2d_depthwise_f32",
            Kernel::Deconv => "deconv2d_f32",
            Kernel::Gemm => "gemm_f32",
            Kernel::GemmNarrow => "gemm_narrow_f32",
            Kernel::Pool => "pool2d_f32",
            Kernel::Resize => "resize2d_f32",
            Kernel::Reduce => "reduce_f32",
            Kernel::Softmax => "softmax_f32",
        }
    }
}

/// One `extern "C" __global__` function of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub name: String,
    /// The type of its one parameter.
    pub param_type: String,
    /// Whether its body (or a device function it calls) synchronises the block.
    pub uses_sync: bool,
}

/// The entry points of `src`: `extern "C" __global__ void [__launch_bounds__(..)] name(const T p)`.
pub(crate) fn entries(src: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let marker = "extern \"C\" __global__ void";
    let mut rest = src;
    while let Some(at) = rest.find(marker) {
        rest = &rest[at + marker.len()..];
        let mut head = rest.trim_start();
        if let Some(lb) = head.strip_prefix("__launch_bounds__(") {
            head = lb
                .split_once(')')
                .map(|(_, r)| r.trim_start())
                .unwrap_or("");
        }
        let Some((name, after)) = head.split_once('(') else {
            continue;
        };
        let Some((param, body)) = after.split_once(')') else {
            continue;
        };
        let words: Vec<&str> = param.split_whitespace().filter(|w| *w != "const").collect();
        let param_type = words.first().copied().unwrap_or("").to_string();
        // The body up to its closing brace; a kernel that calls a template uses its syncs.
        let body_end = matching_brace(body).unwrap_or(body.len());
        let text = &body[..body_end];
        let uses_sync = text.contains("__syncthreads")
            || text.contains("my_conv_tile")
            || text.contains("my_gemm_tile");
        out.push(Entry {
            name: name.trim().to_string(),
            param_type,
            uses_sync,
        });
    }
    out
}

fn matching_brace(s: &str) -> Option<usize> {
    let start = s.find('{')?;
    let mut depth = 0usize;
    for (i, c) in s[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(start + i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// Largest rank the strided kernels take.
pub(crate) const MAX_RANK: usize = 6;

/// Activation codes (`ACT_*` in common.cu).
pub(crate) mod act {
    pub const NONE: i32 = 0;
    pub const RELU: i32 = 1;
    pub const SIGMOID: i32 = 2;
    pub const CLIP: i32 = 4;
    pub const TANH: i32 = 5;
    pub const EXP: i32 = 6;
    pub const SQRT: i32 = 7;
    pub const RECIP: i32 = 8;
    pub const ABS: i32 = 9;
    pub const NEG: i32 = 10;
    pub const LOG: i32 = 11;
    pub const ERF: i32 = 13;
    pub const FLOOR: i32 = 14;
    pub const CEIL: i32 = 15;
    pub const SQUARE: i32 = 16;
    pub const RSQRT: i32 = 17;
    pub const COS: i32 = 19;
    pub const SIN: i32 = 20;
    pub const ROUND: i32 = 21;
    pub const SILU: i32 = 22;
    pub const RSQRT_ADD: i32 = 23;
}

/// Binary operator codes (`BIN_*`).
pub(crate) mod bin {
    pub const ADD: i32 = 0;
    pub const SUB: i32 = 1;
    pub const MUL: i32 = 2;
    pub const DIV: i32 = 3;
    pub const MAX: i32 = 4;
    pub const MIN: i32 = 5;
    pub const POW: i32 = 6;
}

/// A strided view (`MyView`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct View {
    pub offset: i32,
    pub strides: [i32; MAX_RANK],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UnaryParams {
    pub x: u64,
    pub y: u64,
    pub n: i32,
    pub act: i32,
    pub a: f32,
    pub b: f32,
    pub vec4: i32,
    pub _pad: i32,
}

/// Inputs and operators of one `pointwise_f32` launch.
pub(crate) const PW_MAX_IN: usize = 8;
pub(crate) const PW_MAX_OPS: usize = 16;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PointwiseParams {
    pub inputs: [u64; PW_MAX_IN],
    pub y: u64,
    pub n: i32,
    pub rank: i32,
    pub n_in: i32,
    pub n_ops: i32,
    pub dims: [i32; MAX_RANK],
    pub views: [View; PW_MAX_IN],
    pub code: [i32; PW_MAX_OPS],
    pub a: [i32; PW_MAX_OPS],
    pub b: [i32; PW_MAX_OPS],
    pub ca: [f32; PW_MAX_OPS],
    pub cb: [f32; PW_MAX_OPS],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BinaryParams {
    pub a: u64,
    pub b: u64,
    pub y: u64,
    pub n: i32,
    pub rank: i32,
    pub op: i32,
    pub act: i32,
    pub dims: [i32; MAX_RANK],
    pub va: View,
    pub vb: View,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BinarySameParams {
    pub a: u64,
    pub b: u64,
    pub y: u64,
    pub n: i32,
    pub op: i32,
    pub act: i32,
    pub vec4: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CopyParams {
    pub x: u64,
    pub y: u64,
    pub n: i32,
    pub rank: i32,
    pub dims: [i32; MAX_RANK],
    pub x_dims: [i32; MAX_RANK],
    pub vx: View,
    pub vy: View,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PadParams {
    pub x: u64,
    pub y: u64,
    pub n: i32,
    pub rank: i32,
    pub value: f32,
    pub dims: [i32; MAX_RANK],
    pub x_dims: [i32; MAX_RANK],
    pub before: [i32; MAX_RANK],
    pub _pad: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConvParams {
    pub x: u64,
    pub wt: u64,
    pub bias: u64,
    pub y: u64,
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub co: i32,
    pub oh: i32,
    pub ow: i32,
    pub kh: i32,
    pub kw: i32,
    pub sh: i32,
    pub sw: i32,
    pub dh: i32,
    pub dw: i32,
    pub pt: i32,
    pub pl: i32,
    pub group: i32,
    pub act: i32,
    pub a: f32,
    pub b: f32,
    pub _pad: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GemmParams {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub batch: i32,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub sab: i32,
    pub sam: i32,
    pub sak: i32,
    pub sbb: i32,
    pub sbk: i32,
    pub sbn: i32,
    pub scb: i32,
    pub scm: i32,
    pub scn: i32,
    pub act: i32,
}

/// `POOL_*` modes.
pub(crate) mod pool {
    pub const AVG: i32 = 0;
    pub const MAX: i32 = 1;
    pub const SUM: i32 = 2;
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PoolParams {
    pub x: u64,
    pub y: u64,
    pub nc: i32,
    pub h: i32,
    pub w: i32,
    pub oh: i32,
    pub ow: i32,
    pub kh: i32,
    pub kw: i32,
    pub sh: i32,
    pub sw: i32,
    pub dh: i32,
    pub dw: i32,
    pub pt: i32,
    pub pl: i32,
    pub mode: i32,
    pub count_pad: i32,
    pub _pad: i32,
}

/// `COORD_*` and `NEAREST_*` modes.
pub(crate) mod resize {
    pub const HALF_PIXEL: i32 = 0;
    pub const ASYMMETRIC: i32 = 1;
    pub const ALIGN_CORNERS: i32 = 2;
    pub const ROUND_PREFER_FLOOR: i32 = 0;
    pub const ROUND_PREFER_CEIL: i32 = 1;
    pub const FLOOR: i32 = 2;
    pub const CEIL: i32 = 3;
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ResizeParams {
    pub x: u64,
    pub y: u64,
    pub nc: i32,
    pub h: i32,
    pub w: i32,
    pub oh: i32,
    pub ow: i32,
    pub scale_h: f32,
    pub scale_w: f32,
    pub coord: i32,
    pub linear: i32,
    pub nearest: i32,
}

/// `RED_*` operators.
pub(crate) mod red {
    pub const SUM: i32 = 0;
    pub const MAX: i32 = 1;
    pub const MIN: i32 = 2;
    pub const PROD: i32 = 3;
    pub const SUM_SQUARES: i32 = 4;
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReduceParams {
    pub x: u64,
    pub y: u64,
    pub n_out: i32,
    pub rank: i32,
    pub out_dims: [i32; MAX_RANK],
    pub vout: View,
    pub red_rank: i32,
    pub red_dims: [i32; MAX_RANK],
    pub red_strides: [i32; MAX_RANK],
    pub op: i32,
    pub scale: f32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SoftmaxParams {
    pub x: u64,
    pub y: u64,
    pub outer: i32,
    pub axis: i32,
    pub inner: i32,
    pub log: i32,
}

/// A parameter struct: `#[repr(C)]`, integers and floats only, no implicit padding (every
/// struct above ends with an explicit `_pad` where C would pad), so all its bytes are
/// initialised.
pub(crate) trait Params: Copy {}
impl Params for UnaryParams {}
impl Params for PointwiseParams {}
impl Params for BinaryParams {}
impl Params for BinarySameParams {}
impl Params for CopyParams {}
impl Params for PadParams {}
impl Params for ConvParams {}
impl Params for GemmParams {}
impl Params for PoolParams {}
impl Params for ResizeParams {}
impl Params for ReduceParams {}
impl Params for SoftmaxParams {}

/// The bytes of a parameter struct, as the launch passes them.
pub(crate) fn bytes_of<T: Params>(p: &T) -> Vec<u8> {
    let size = std::mem::size_of::<T>();
    let mut v = vec![0u8; size];
    // SAFETY: `Params` structs are #[repr(C)] integers and floats without padding.
    unsafe { std::ptr::copy_nonoverlapping(p as *const T as *const u8, v.as_mut_ptr(), size) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_the_executor_launches_is_in_the_source() {
        let found = entries(&source());
        for k in Kernel::ALL {
            let e = found.iter().find(|e| e.name == k.name());
            assert!(e.is_some(), "{} missing from kernels/*.cu", k.name());
        }
        let conv = found.iter().find(|e| e.name == "conv2d_f32").unwrap();
        assert_eq!(conv.param_type, "ConvParams");
        assert!(conv.uses_sync);
        let unary = found.iter().find(|e| e.name == "unary_f32").unwrap();
        assert!(!unary.uses_sync);
        assert!(
            found
                .iter()
                .find(|e| e.name == "gemm_f32")
                .unwrap()
                .uses_sync
        );
    }

    #[test]
    fn parameter_structs_have_no_implicit_padding() {
        // Sizes of the C structs on LP64 (host and CUDA agree); a Rust field added without
        // its C twin, or implicit padding, changes them.
        assert_eq!(std::mem::size_of::<View>(), 28);
        assert_eq!(std::mem::size_of::<UnaryParams>(), 40);
        assert_eq!(std::mem::size_of::<PointwiseParams>(), 656);
        assert_eq!(std::mem::size_of::<BinaryParams>(), 120);
        assert_eq!(std::mem::size_of::<BinarySameParams>(), 40);
        assert_eq!(std::mem::size_of::<CopyParams>(), 128);
        assert_eq!(std::mem::size_of::<PadParams>(), 104);
        assert_eq!(std::mem::size_of::<ConvParams>(), 112);
        assert_eq!(std::mem::size_of::<GemmParams>(), 80);
        assert_eq!(std::mem::size_of::<PoolParams>(), 80);
        assert_eq!(std::mem::size_of::<ResizeParams>(), 56);
        assert_eq!(std::mem::size_of::<ReduceParams>(), 136);
        assert_eq!(std::mem::size_of::<SoftmaxParams>(), 32);
    }

    #[test]
    fn the_source_has_no_include() {
        assert!(!source().contains("#include"));
    }
}
