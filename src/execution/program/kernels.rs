//! The kernels: `kernels/*.cu` embedded in the binary, the entry points found in them, and
//! the parameter structs they take (each kernel takes one struct by value; these are the
//! `#[repr(C)]` mirrors of the structs in the `.cu` files).
//!
//! The kernel source, its entry points and the layout checks are what NVRTC and the emulator
//! compile; a build without the `cuda` feature (the CPU engine alone) uses only the codes and
//! parameter structs.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

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

/// The one kernel table: each kernel the executor launches and its `extern "C"` name in the
/// source (a test checks every name is there).
macro_rules! kernel_table {
    ($($kernel:ident => $name:literal),* $(,)?) => {
        /// The kernels the executor launches.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum Kernel {
            $($kernel),*
        }

        impl Kernel {
            pub(crate) const ALL: &[Kernel] = &[$(Kernel::$kernel),*];

            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Kernel::$kernel => $name),*
                }
            }
        }
    };
}

kernel_table! {
    Unary => "unary_f32",
    Pointwise => "pointwise_f32",
    Binary => "binary_f32",
    BinarySame => "binary_same_f32",
    Copy => "copy_f32",
    Pad => "pad_f32",
    Conv => "conv2d_f32",
    Conv1x1 => "conv2d_1x1_f32",
    ConvNarrow => "conv2d_narrow_f32",
    ConvDepthwise => "conv2d_depthwise_f32",
    Deconv => "deconv2d_f32",
    Gemm => "gemm_f32",
    GemmNarrow => "gemm_narrow_f32",
    Pool => "pool2d_f32",
    Resize => "resize2d_f32",
    Reduce => "reduce_f32",
    Softmax => "softmax_f32",
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
        let words: Vec<&str> = param
            .split_whitespace()
            .filter(|w| !matches!(*w, "const" | "__grid_constant__"))
            .collect();
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

/// A family of operation codes: Rust constants with the values of the C `#define`s named
/// `<prefix><NAME>` (a test checks both sides hold the same names and values).
macro_rules! codes {
    ($(#[$m:meta])* $module:ident, $prefix:literal { $($name:ident = $v:literal),* $(,)? }) => {
        $(#[$m])*
        #[allow(dead_code)]
        pub(crate) mod $module {
            $(pub const $name: i32 = $v;)*
            /// The C prefix of the family.
            pub const PREFIX: &str = $prefix;
            /// Every code with its name.
            pub const ALL: &[(&str, i32)] = &[$((stringify!($name), $v)),*];
        }
    };
}

/// Sizes the kernels are compiled with (`MY_MAX_RANK`, `PW_MAX_IN`, `PW_MAX_OPS`).
pub(crate) const MAX_RANK: usize = 6;
pub(crate) const PW_MAX_IN: usize = 8;
pub(crate) const PW_MAX_OPS: usize = 16;
/// `pointwise_f32` op codes: `BIN_*` as they are, activations as `PW_ACT_BASE + ACT_*`.
pub(crate) const PW_ACT_BASE: i32 = 100;
/// The sizes above with their C names, checked against the `#define`s.
const SIZES: [(&str, i32); 4] = [
    ("MY_MAX_RANK", MAX_RANK as i32),
    ("PW_MAX_IN", PW_MAX_IN as i32),
    ("PW_MAX_OPS", PW_MAX_OPS as i32),
    ("PW_ACT_BASE", PW_ACT_BASE),
];

codes! {
    /// Activation codes (`ACT_*` in common.cu).
    act, "ACT_" {
        NONE = 0, RELU = 1, SIGMOID = 2, HARD_SIGMOID = 3, CLIP = 4, TANH = 5, EXP = 6,
        SQRT = 7, RECIP = 8, ABS = 9, NEG = 10, LOG = 11, HARD_SWISH = 12, ERF = 13,
        FLOOR = 14, CEIL = 15, SQUARE = 16, RSQRT = 17, LEAKY_RELU = 18, COS = 19, SIN = 20,
        ROUND = 21, SILU = 22, RSQRT_ADD = 23,
    }
}
codes! {
    /// Binary operator codes (`BIN_*` in common.cu).
    bin, "BIN_" { ADD = 0, SUB = 1, MUL = 2, DIV = 3, MAX = 4, MIN = 5, POW = 6 }
}
codes! {
    /// Pooling modes (`POOL_*` in pool.cu).
    pool, "POOL_" { AVG = 0, MAX = 1, SUM = 2 }
}
codes! {
    /// Resize coordinate transforms (`COORD_*` in pool.cu).
    coord, "COORD_" { HALF_PIXEL = 0, ASYMMETRIC = 1, ALIGN_CORNERS = 2, PYTORCH_HALF_PIXEL = 3 }
}
codes! {
    /// Resize nearest rounding modes (`NEAREST_*` in pool.cu).
    nearest, "NEAREST_" { ROUND_PREFER_FLOOR = 0, ROUND_PREFER_CEIL = 1, FLOOR = 2, CEIL = 3 }
}
codes! {
    /// Reduction operators (`RED_*` in reduce.cu).
    red, "RED_" { SUM = 0, MAX = 1, MIN = 2, PROD = 3, SUM_SQUARES = 4 }
}

/// A parameter struct: `#[repr(C)]`, integers and floats only, no implicit padding, so all its
/// bytes are initialised and [`bytes_of`] may read them.
///
/// # Safety
/// Only for types declared with `params!`, whose layout a test and the emulator build check
/// against the C struct of the same name.
pub(crate) unsafe trait Params: Copy {
    /// The C struct's name.
    const C_NAME: &'static str;
    /// (C field name, Rust offset, Rust size) of each field; explicit `_pad` fields included.
    fn layout() -> Fields;
}

/// Declares the `#[repr(C)]` twin of a C parameter struct, field by field in C order (a field
/// whose C name is a Rust keyword says `as "name"`; `_pad` fills what C pads implicitly).
macro_rules! params {
    ($(#[$m:meta])* struct $name:ident { $($field:ident $(as $cname:literal)?: $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default)]
        pub(crate) struct $name {
            $(pub $field: $ty),*
        }

        // SAFETY: declared through `params!`: integers, floats and arrays of them, `_pad`
        // where C pads; `parameter_structs_match_their_c_twins` checks the layout.
        unsafe impl Params for $name {
            const C_NAME: &'static str = stringify!($name);
            fn layout() -> Fields {
                vec![$((
                    params!(@cname $field $($cname)?),
                    std::mem::offset_of!($name, $field),
                    std::mem::size_of::<$ty>(),
                )),*]
            }
        }
    };
    (@cname $field:ident $cname:literal) => { $cname };
    (@cname $field:ident) => { stringify!($field) };
}

/// A strided view (`MyView`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct View {
    pub offset: i32,
    pub strides: [i32; MAX_RANK],
}

params! {
    struct UnaryParams { x: u64, y: u64, n: i32, act: i32, a: f32, b: f32, vec4: i32, _pad: i32 }
}
params! {
    /// Inputs and operators of one `pointwise_f32` launch.
    struct PointwiseParams {
        inputs as "in": [u64; PW_MAX_IN],
        y: u64,
        n: i32,
        rank: i32,
        n_in: i32,
        n_ops: i32,
        dims: [i32; MAX_RANK],
        views: [View; PW_MAX_IN],
        code: [i32; PW_MAX_OPS],
        a: [i32; PW_MAX_OPS],
        b: [i32; PW_MAX_OPS],
        ca: [f32; PW_MAX_OPS],
        cb: [f32; PW_MAX_OPS],
    }
}
params! {
    struct BinaryParams {
        a: u64, b: u64, y: u64, n: i32, rank: i32, op: i32, act: i32,
        dims: [i32; MAX_RANK], va: View, vb: View,
    }
}
params! {
    struct BinarySameParams { a: u64, b: u64, y: u64, n: i32, op: i32, act: i32, vec4: i32 }
}
params! {
    struct CopyParams {
        x: u64, y: u64, n: i32, rank: i32,
        dims: [i32; MAX_RANK], x_dims: [i32; MAX_RANK], vx: View, vy: View,
    }
}
params! {
    struct PadParams {
        x: u64, y: u64, n: i32, rank: i32, value: f32,
        dims: [i32; MAX_RANK], x_dims: [i32; MAX_RANK], before: [i32; MAX_RANK], _pad: i32,
    }
}
params! {
    struct ConvParams {
        x: u64, wt: u64, bias: u64, y: u64,
        // A residual of `y`'s shape added before the activation, or null.
        res: u64,
        n: i32, c: i32, h: i32, w: i32,
        co: i32, oh: i32, ow: i32,
        kh: i32, kw: i32, sh: i32, sw: i32, dh: i32, dw: i32, pt: i32, pl: i32,
        group: i32, act: i32, a: f32, b: f32,
        // `y = post_mul · act(acc + bias + res) + post_add`: the scalar affine op a model
        // applies after the activation, fused (1 and 0 when there is none).
        post_mul: f32, post_add: f32, _pad: i32,
    }
}
params! {
    struct GemmParams {
        a: u64, b: u64, c: u64,
        batch: i32, m: i32, n: i32, k: i32,
        sab: i32, sam: i32, sak: i32, sbb: i32, sbk: i32, sbn: i32, scb: i32, scm: i32, scn: i32,
        act: i32,
    }
}
params! {
    struct PoolParams {
        x: u64, y: u64, nc: i32, h: i32, w: i32, oh: i32, ow: i32,
        kh: i32, kw: i32, sh: i32, sw: i32, dh: i32, dw: i32, pt: i32, pl: i32,
        mode: i32, count_pad: i32, _pad: i32,
    }
}
params! {
    struct ResizeParams {
        x: u64, y: u64, nc: i32, h: i32, w: i32, oh: i32, ow: i32,
        scale_h: f32, scale_w: f32, coord: i32, linear: i32, nearest: i32,
    }
}
params! {
    struct ReduceParams {
        x: u64, y: u64, n_out: i32, rank: i32,
        out_dims: [i32; MAX_RANK], vout: View,
        red_rank: i32, red_dims: [i32; MAX_RANK], red_strides: [i32; MAX_RANK],
        op: i32, scale: f32, per_block: i32, _pad: i32,
    }
}
params! {
    struct SoftmaxParams { x: u64, y: u64, outer: i32, axis: i32, inner: i32, log: i32 }
}

/// (C field name, Rust offset, Rust size) of each field of a parameter struct.
pub(crate) type Fields = Vec<(&'static str, usize, usize)>;

/// Every parameter struct's C name, size and fields.
pub(crate) fn all_layouts() -> Vec<(&'static str, usize, Fields)> {
    fn one<T: Params>() -> (&'static str, usize, Fields) {
        (T::C_NAME, std::mem::size_of::<T>(), T::layout())
    }
    macro_rules! each {
        ($($t:ty),*) => { vec![$(one::<$t>()),*] };
    }
    each!(
        UnaryParams,
        PointwiseParams,
        BinaryParams,
        BinarySameParams,
        CopyParams,
        PadParams,
        ConvParams,
        GemmParams,
        PoolParams,
        ResizeParams,
        ReduceParams,
        SoftmaxParams
    )
}

/// C++ `static_assert`s that the C structs and codes have the layout and values Rust uses:
/// the emulator compiles them with the kernels, so a mismatch fails its build.
pub(crate) fn abi_checks() -> String {
    let mut out = String::from("// ---- ABI checks generated from kernels.rs ----\n");
    for (name, size, fields) in all_layouts() {
        out.push_str(&format!(
            "static_assert(sizeof({name}) == {size}, \"sizeof({name})\");\n"
        ));
        for (field, offset, _) in fields.iter().filter(|f| !f.0.starts_with('_')) {
            out.push_str(&format!(
                "static_assert(__builtin_offsetof({name}, {field}) == {offset}, \"{name}.{field}\");\n"
            ));
        }
    }
    for (prefix, all) in code_families() {
        for (name, v) in all {
            out.push_str(&format!(
                "static_assert({prefix}{name} == {v}, \"{prefix}{name}\");\n"
            ));
        }
    }
    for (name, v) in SIZES {
        out.push_str(&format!("static_assert({name} == {v}, \"{name}\");\n"));
    }
    out
}

/// Every code family: its C prefix and its codes.
pub(crate) fn code_families() -> [(&'static str, &'static [(&'static str, i32)]); 6] {
    [
        (act::PREFIX, act::ALL),
        (bin::PREFIX, bin::ALL),
        (pool::PREFIX, pool::ALL),
        (coord::PREFIX, coord::ALL),
        (nearest::PREFIX, nearest::ALL),
        (red::PREFIX, red::ALL),
    ]
}

/// The bytes of a parameter struct, as the launch passes them.
pub(crate) fn bytes_of<T: Params>(p: &T) -> Vec<u8> {
    let size = std::mem::size_of::<T>();
    let mut v = vec![0u8; size];
    // SAFETY: `Params` (an unsafe trait) promises #[repr(C)] integers and floats without
    // padding: every byte of `p` is initialised.
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

    /// The C fields of `struct name { ... };` in `src`: (name, size, alignment) in order,
    /// from their declarations (`const float* x;`, `int n, c;`, `int dims[MY_MAX_RANK];`).
    fn c_fields(src: &str, name: &str) -> Vec<(String, usize, usize)> {
        let start = src
            .find(&format!("struct {name} {{"))
            .unwrap_or_else(|| panic!("struct {name} is not in kernels/*.cu"));
        let body = &src[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find("};").unwrap()];
        let consts = SIZES.map(|(n, v)| (n, v as usize));
        let mut out = Vec::new();
        for decl in body.split(';') {
            let decl: String = decl
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(" ");
            let decl = decl.trim();
            if decl.is_empty() {
                continue;
            }
            let decl = decl.trim_start_matches("const ").trim();
            let (base, rest) = decl.split_once([' ', '*']).unwrap();
            let pointer = decl[base.len()..].trim_start().starts_with('*');
            let (size, align) = match (pointer, base) {
                (true, _) => (8, 8),
                (false, "int") | (false, "float") => (4, 4),
                (false, "MyView") => (4 * (1 + MAX_RANK), 4),
                other => panic!("{name}: unknown C type {other:?} in '{decl}'"),
            };
            // `int n, c, h, w` declares several fields.
            let all_names: Vec<String> = rest
                .trim_start_matches(['*', ' '])
                .split(',')
                .map(|n| n.trim().to_string())
                .collect();
            for n in all_names {
                let (field, count) = match n.split_once('[') {
                    Some((f, len)) => {
                        let len = len.trim_end_matches(']');
                        let count = consts
                            .iter()
                            .find(|(c, _)| *c == len)
                            .map(|(_, v)| *v)
                            .unwrap_or_else(|| len.parse().unwrap());
                        (f.trim().to_string(), count)
                    }
                    None => (n, 1),
                };
                out.push((field, size * count, align));
            }
        }
        out
    }

    #[test]
    fn parameter_structs_match_their_c_twins() {
        let src = source();
        for (name, rust_size, rust) in all_layouts() {
            let c = c_fields(&src, name);
            let rust_fields: Vec<_> = rust.iter().filter(|f| !f.0.starts_with('_')).collect();
            let names =
                |v: &[(String, usize, usize)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
            assert_eq!(
                names(&c),
                rust_fields
                    .iter()
                    .map(|f| f.0.to_string())
                    .collect::<Vec<_>>(),
                "{name}: the fields differ in name or order"
            );
            // C's natural layout (LP64, the host and CUDA agree) against Rust's offsets.
            let mut offset = 0usize;
            let mut max_align = 1usize;
            for ((field, size, align), (_, rust_offset, rust_size)) in c.iter().zip(&rust_fields) {
                offset = offset.next_multiple_of(*align);
                max_align = max_align.max(*align);
                assert_eq!(offset, *rust_offset, "{name}.{field}: offset");
                assert_eq!(size, rust_size, "{name}.{field}: size");
                offset += size;
            }
            assert_eq!(
                offset.next_multiple_of(max_align),
                rust_size,
                "{name}: size"
            );
            // No implicit padding on the Rust side: the fields, `_pad` included, fill it.
            assert_eq!(
                rust.iter().map(|f| f.2).sum::<usize>(),
                rust_size,
                "{name}: padding"
            );
        }
    }

    #[test]
    fn every_code_has_the_value_of_its_c_define() {
        let src = source();
        let defines: Vec<(String, i32)> = src
            .lines()
            .filter_map(|l| {
                let rest = l.trim().strip_prefix("#define ")?;
                let mut words = rest.split_whitespace();
                let name = words.next()?;
                let value = words.next()?.parse().ok()?;
                Some((name.to_string(), value))
            })
            .collect();
        for (prefix, all) in code_families() {
            let c: Vec<(String, i32)> = defines
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .cloned()
                .collect();
            let rust: Vec<(String, i32)> = all
                .iter()
                .map(|(n, v)| (format!("{prefix}{n}"), *v))
                .collect();
            assert_eq!(
                c, rust,
                "the {prefix}* codes of kernels/*.cu and kernels.rs differ"
            );
        }
        for (name, v) in SIZES {
            assert!(
                defines.contains(&(name.to_string(), v)),
                "{name} is not {v} in kernels/*.cu"
            );
        }
    }

    #[test]
    fn the_source_has_no_include() {
        assert!(!source().contains("#include"));
    }
}
