//! The GPU path against the CPU path: every kernel through a one-operator model (odd sizes,
//! channel counts that are not a multiple of the tile, batch > 1, 1x1 images), then whole
//! models (tutorial EAST and STR, PaddleOCR det and rec) with their execution reports.
//!
//! Each test runs on every target this machine has: the emulator (the same `kernels/*.cu`
//! compiled for the host CPU, needs a C++ compiler; required on Linux) and CUDA (when `gpu::probe` finds a
//! driver and a device), and, for the tests that compare with the CPU path, the native CPU
//! engine (the same lowering and executor with our Rust kernels, `engine: "native"` on a
//! `KIND_CPU` group). Without CUDA the CUDA half prints a notice and passes, unless
//! `MODELYARD_REQUIRE_GPU=1`, which makes it fail (and skips the emulator half, which CI ran:
//! GPU machine time is for the GPU). Fixtures are found through
//! `MODELYARD_FIXTURES`, then `./fixtures`, then the source tree, so the binary can be
//! shipped to a GPU machine.
//!
//! Tolerances: the kernels sum in another order than tract (tiles of 16 along K, per-thread
//! accumulators), so results differ by float rounding: |a - b| <= 1e-4 + 1e-4 |b| per
//! operator (K <= 1,200 products of values ~1: error ~ K * 2^-24 ~ 1e-4; the absolute part
//! scaled by the output's largest value when below 1), and after whole models (30+ layers,
//! the errors compound) 2e-3 |b| + 2e-3 times the largest value of the element's channel when
//! below 1, at least 1e-6 (`Scale::Channel`: a class score of 1e-5 is checked to ~10%, not to
//! 2e-3 absolute, and EAST's angle channel to its own scale); against ONNX Runtime's committed
//! outputs, 1e-3 of each channel's scale (at least 1).

use std::path::Path;

use modelyard::{Repository, Tensor};
use ndarray::ArrayD;
mod common;
#[path = "common/onnx_builder.rs"]
mod onnx_builder;

use common::{fixtures, reference};

use onnx_builder::{add_model, attr_int, attr_ints, attr_str, random, OneOp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Emulator,
    Cuda,
    /// The native CPU engine: the same lowering and executor, our Rust kernels on the host.
    Native,
}

/// Every target: the devices, then the native CPU engine (always there).
fn targets() -> Vec<Target> {
    let mut t = device_targets();
    t.push(Target::Native);
    t
}

/// The targets that are a device (`KIND_GPU`): the emulator and CUDA.
fn device_targets() -> Vec<Target> {
    let mut t = Vec::new();
    let require_gpu = std::env::var("MODELYARD_REQUIRE_GPU").as_deref() == Ok("1");
    if require_gpu {
        // On a GPU machine, the device time is for the GPU: the emulator ran in CI.
        common::skip("MODELYARD_REQUIRE_GPU=1: the emulator half is skipped");
    } else {
        match modelyard::gpu::emulator() {
            Ok(()) => t.push(Target::Emulator),
            // On Linux (CI) the emulator must work: these tests are the GPU path's only check
            // there.
            Err(why) if cfg!(target_os = "linux") => panic!("the kernel emulator failed: {why}"),
            Err(why) => common::skip(&format!("no kernel emulator here ({why}): skipped")),
        }
    }
    match modelyard::gpu::probe() {
        Ok(info) => {
            eprintln!(
                "CUDA: driver {} with {:?}",
                info.driver_version, info.devices
            );
            t.push(Target::Cuda);
        }
        Err(why) => {
            if require_gpu {
                panic!("MODELYARD_REQUIRE_GPU=1 but no usable CUDA: {why}");
            }
            common::skip(&format!(
                "no GPU ({why}): the CUDA half of this test is skipped"
            ));
        }
    }
    t
}

/// Appends `parameters { key: "<key>" value: { string_value: "<value>" } }` to model
/// `name`'s config in `repo`.
fn add_parameter(repo: &Path, name: &str, key: &str, value: &str) {
    let cfg = repo.join(name).join("config.pbtxt");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "parameters {{ key: \"{key}\" value: {{ string_value: \"{value}\" }} }}\n"
    ));
    std::fs::write(cfg, text).unwrap();
}

fn set_engine(repo: &Path, name: &str, engine: &str) {
    add_parameter(repo, name, "engine", engine);
}

/// A repository with `cpu` (KIND_CPU on tract's own plan, the reference) and `gpu` (KIND_GPU,
/// or KIND_CPU on the native engine) copies of model folder `src`.
fn cpu_and_gpu(src: &Path, target: Target) -> (tempfile::TempDir, Repository) {
    let tmp = tempfile::tempdir().unwrap();
    add_model(tmp.path(), src, "cpu", "KIND_CPU");
    set_engine(tmp.path(), "cpu", "tract");
    if target == Target::Native {
        add_model(tmp.path(), src, "gpu", "KIND_CPU");
        set_engine(tmp.path(), "gpu", "native");
    } else {
        add_model(tmp.path(), src, "gpu", "KIND_GPU");
    }
    let repo = Repository::builder(tmp.path())
        .cuda_emulator(target == Target::Emulator)
        .load()
        .unwrap();
    (tmp, repo)
}

/// Runs `cpu` and `gpu` on the same inputs and compares every output.
fn compare(
    repo: &Repository,
    inputs: &[(String, ArrayD<f32>)],
    atol: f32,
    rtol: f32,
    what: &str,
) -> Vec<(String, ArrayD<f32>)> {
    compare_with(repo, inputs, atol, rtol, Scale::Fixed, what)
}

/// What the absolute part of a tolerance is multiplied by, per element.
#[derive(Clone, Copy)]
enum Scale {
    /// 1.
    Fixed,
    /// The tensor's largest |value| when that is below 1 (a softmax over 6625 classes is ~1e-4
    /// everywhere: a fixed 1e-4 would accept anything there). For one-operator checks.
    Tensor,
    /// The largest |value| of the element's channel when below 1, and never under
    /// [`FLOOR`]: for whole models, whose outputs mix magnitudes by channel (EAST's NHWC
    /// geometry: distances up to ~200 beside a ±0.785 angle; the recognisers' class scores,
    /// most of them ~1e-5 after a softmax over 6625 classes).
    Channel,
}

/// The smallest absolute tolerance after a whole model: the CPU reference itself is
/// approximate at tiny magnitudes (tract's sigmoid gives 4.5e-7 where sigmoid(-25) is 1.4e-11).
const FLOOR: f32 = 1e-6;

/// The largest |value| of each channel of `a`: its index along the last axis, the channel or
/// class axis of every whole-model output compared here (EAST's NHWC maps, the recognisers'
/// `[.., classes]` scores, PP-OCR det's map, where it is the column).
fn channel_max(a: &ndarray::ArrayViewD<f32>) -> Vec<f32> {
    let channels = a.shape().last().copied().unwrap_or(1).max(1);
    let mut max = vec![0f32; channels];
    for (i, v) in a.iter().enumerate() {
        max[i % channels] = max[i % channels].max(v.abs());
    }
    max
}

/// [`compare`], with the absolute tolerance scaled per element as `scale` says.
fn compare_with(
    repo: &Repository,
    inputs: &[(String, ArrayD<f32>)],
    atol: f32,
    rtol: f32,
    scale: Scale,
    what: &str,
) -> Vec<(String, ArrayD<f32>)> {
    let tensors: Vec<(String, Tensor)> = inputs
        .iter()
        .map(|(n, a)| (n.clone(), Tensor::from(a.clone())))
        .collect();
    let cpu = repo.model("cpu").unwrap().infer(tensors.clone()).unwrap();
    let gpu = repo
        .model("gpu")
        .unwrap()
        .infer(tensors)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut out = Vec::new();
    for (name, c) in cpu.iter() {
        let c = c.view::<f32>().unwrap();
        let g = gpu.get(name).unwrap().view::<f32>().unwrap();
        assert_eq!(c.shape(), g.shape(), "{what}: output '{name}' shape");
        let channels = channel_max(&c);
        let tensor_max = channels.iter().fold(0f32, |m, v| m.max(*v)).min(1.0);
        let mut worst = (0f32, 0usize);
        for (i, (a, b)) in g.iter().zip(c.iter()).enumerate() {
            let factor = match scale {
                Scale::Fixed => 1.0,
                Scale::Tensor => tensor_max,
                Scale::Channel => channels[i % channels.len()].min(1.0),
            };
            let atol = match scale {
                Scale::Channel => (atol * factor).max(FLOOR),
                _ => atol * factor,
            };
            let d = (a - b).abs();
            assert!(
                d <= atol + rtol * b.abs() && !a.is_nan(),
                "{what}: output '{name}'[{i}] gpu {a} cpu {b} (tolerance {atol:.1e} + {rtol}|cpu|, scale {factor:.1e})"
            );
            if d > worst.0 {
                worst = (d, i);
            }
        }
        eprintln!(
            "{what}: '{name}' {:?} max |gpu - cpu| = {:.2e}",
            c.shape(),
            worst.0
        );
        out.push((name.to_string(), g.to_owned()));
    }
    out
}

/// Runs `op` on the CPU and on `target`, compares, and checks no node fell back to the CPU;
/// returns the launches by kernel.
fn check_op(
    target: Target,
    what: &str,
    op: &OneOp,
    then: Option<&str>,
    out: &[usize],
) -> std::collections::BTreeMap<String, usize> {
    let folder = op.folder(then, out);
    let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
    let inputs: Vec<(String, ArrayD<f32>)> = op
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (n, s))| (n.to_string(), random(s, 7 + i as u64)))
        .collect();
    let what = format!("{what} on {target:?}");
    compare_with(&repo, &inputs, 1e-4, 1e-4, Scale::Tensor, &what);
    let report = repo.model("gpu").unwrap().execution_report().unwrap();
    assert!(
        report.cpu_nodes.is_empty(),
        "{what}: nodes fell back to the CPU: {:?}",
        report.cpu_nodes
    );
    assert_eq!(report.intermediate_copies, 0, "{what}");
    if op.op == "Conv" && then.is_some() {
        assert_eq!(
            report.fused_nodes, 1,
            "{what}: activation not fused: {report:?}"
        );
    }
    report.kernels
}

fn conv(
    x: [usize; 4],
    co: usize,
    k: [usize; 2],
    group: usize,
    strides: [i64; 2],
    pads: [i64; 4],
    dil: [i64; 2],
) -> (OneOp, Vec<usize>) {
    let ci = x[1] / group;
    let oh = (x[2] as i64 + pads[0] + pads[2] - dil[0] * (k[0] as i64 - 1) - 1) / strides[0] + 1;
    let ow = (x[3] as i64 + pads[1] + pads[3] - dil[1] * (k[1] as i64 - 1) - 1) / strides[1] + 1;
    let op = OneOp::new("Conv", vec![("x", x.to_vec())])
        .weight("w", random(&[co, ci, k[0], k[1]], 11))
        .weight("b", random(&[co], 13))
        .attr(attr_ints("kernel_shape", &[k[0] as i64, k[1] as i64]))
        .attr(attr_ints("strides", &strides))
        .attr(attr_ints("pads", &pads))
        .attr(attr_ints("dilations", &dil))
        .attr(attr_int("group", group as i64));
    (op, vec![x[0], co, oh as usize, ow as usize])
}

/// (what, input NCHW, out channels, kernel, group, strides, pads t l b r, dilations)
type ConvCase = (
    &'static str,
    [usize; 4],
    usize,
    [usize; 2],
    usize,
    [i64; 2],
    [i64; 4],
    [i64; 2],
);

#[test]
fn convolutions_match_the_cpu_path() {
    for target in targets() {
        #[rustfmt::skip]
        let cases: Vec<ConvCase> = vec![
            ("3x3 same", [1, 3, 9, 11], 8, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("7x7 stride 2 (EAST stem)", [1, 3, 20, 18], 8, [7, 7], 1, [2, 2], [3, 3, 2, 2], [1, 1]),
            ("70 out channels, batch 2", [2, 5, 6, 7], 70, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("1x1 fast path, 67 in channels", [1, 67, 5, 9], 65, [1, 1], 1, [1, 1], [0, 0, 0, 0], [1, 1]),
            ("1x1 image", [1, 4, 1, 1], 6, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("asymmetric padding", [1, 2, 7, 6], 3, [3, 2], 1, [1, 2], [0, 1, 2, 0], [1, 1]),
            ("dilation 2", [1, 3, 10, 10], 4, [3, 3], 1, [1, 1], [2, 2, 2, 2], [2, 2]),
            ("groups 2", [1, 6, 8, 8], 4, [3, 3], 2, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("depthwise", [2, 16, 9, 9], 16, [3, 3], 16, [2, 2], [1, 1, 1, 1], [1, 1]),
            ("depthwise x2 multiplier", [1, 4, 5, 5], 8, [5, 5], 4, [1, 1], [2, 2, 2, 2], [1, 1]),
            // Grouped 1x1 convolutions stay convolutions (tract turns plain ones into EinSum).
            ("grouped 1x1", [1, 8, 5, 7], 12, [1, 1], 2, [1, 1], [0, 0, 0, 0], [1, 1]),
            ("grouped 1x1, 66 per group", [2, 6, 4, 5], 132, [1, 1], 2, [1, 1], [0, 0, 0, 0], [1, 1]),
            // Rows wider than the CPU's 64-pixel panels (read in place inside, packed at the
            // borders), depth over one 128-deep panel, stride 2 and dilation on wide rows.
            ("3x3 same, wide rows", [1, 20, 5, 150], 7, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("3x3 stride 2, wide rows", [1, 4, 9, 140], 12, [3, 3], 1, [2, 2], [1, 1, 1, 1], [1, 1]),
            ("3x3 dilation 2, wide rows", [1, 3, 8, 140], 8, [3, 3], 1, [1, 1], [2, 2, 2, 2], [2, 2]),
            // The CPU's zero-padded copy read in place: rows of whole panels with many
            // channels; few channels on rows with a partial last panel, asymmetric pads,
            // batch 2, groups.
            ("3x3, rows of whole panels, 40 channels", [1, 6, 4, 128], 40, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("3x3, 40 channels on 70-pixel rows", [1, 6, 4, 70], 40, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("3x3 asymmetric pads, few channels", [2, 3, 6, 61], 5, [3, 3], 1, [1, 1], [0, 2, 1, 0], [1, 1]),
            ("groups 2, wide rows", [1, 4, 5, 70], 6, [3, 3], 2, [1, 1], [1, 1, 1, 1], [1, 1]),
            // The padded copy split by column phase for strided convolutions: the EAST stem
            // on rows with a partial last panel, 24 channels on 129-pixel rows,
            // stride 3 with dilation and asymmetric pads.
            ("7x7 stride 2 (EAST stem), wide rows", [1, 3, 13, 150], 8, [7, 7], 1, [2, 2], [3, 3, 2, 2], [1, 1]),
            ("3x3 stride 2, 24 channels on rows of a partial panel", [1, 5, 6, 257], 24, [3, 3], 1, [2, 2], [1, 1, 1, 1], [1, 1]),
            ("stride 3, dilation 2, few channels", [1, 3, 9, 200], 6, [3, 3], 1, [3, 3], [2, 1, 0, 2], [2, 2]),
            ("depthwise 5x5, wide rows", [1, 3, 7, 70], 3, [5, 5], 3, [1, 1], [2, 2, 2, 2], [1, 1]),
            ("depthwise stride 2, wide rows", [1, 2, 8, 90], 2, [3, 3], 2, [2, 2], [1, 1, 1, 1], [1, 1]),
            // PP-OCR's 5x5 stride 2, odd widths (a partial last block), dilation with
            // asymmetric padding, stride 3, a kernel wider than the image.
            ("depthwise 5x5 stride 2, odd width", [1, 5, 9, 37], 5, [5, 5], 5, [2, 2], [2, 2, 2, 2], [1, 1]),
            ("depthwise dilation 2, asymmetric pads", [2, 3, 8, 21], 3, [3, 3], 3, [1, 1], [0, 2, 3, 1], [2, 2]),
            ("depthwise stride 3", [1, 4, 10, 50], 4, [3, 3], 4, [3, 3], [1, 1, 1, 1], [1, 1]),
            ("depthwise kernel wider than the image", [1, 2, 3, 2], 2, [5, 5], 2, [1, 1], [2, 2, 2, 2], [1, 1]),
            // Rows of more than 8 blocks of 16 (groups of 8, 8 and 3 on AVX-512).
            ("depthwise 3x3, 300-pixel rows", [1, 3, 5, 300], 3, [3, 3], 3, [1, 1], [1, 1, 1, 1], [1, 1]),
            // The CPU's output channels along the lanes (AVX-512; 16·k channels on rows its
            // GEMM's panels fill badly): STR's 32 channels on 26-pixel rows and its 2x2
            // tail, 16 channels on rows split in tiles wider than 16, one-pixel rows, 48
            // channels with stride 2 and asymmetric pads, 80 (two blocks) with dilation,
            // groups of 32, batch 2.
            ("lanes: 32 channels on 26-pixel rows", [1, 32, 4, 26], 32, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("lanes: 2x2, stride 2 by 1", [1, 32, 4, 26], 32, [2, 2], 1, [2, 1], [0, 1, 0, 1], [1, 1]),
            ("lanes: 16 channels on 40-pixel rows, batch 2", [2, 3, 4, 40], 16, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("lanes: one-pixel rows", [1, 4, 6, 1], 16, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("lanes: 48 channels, stride 2, asymmetric pads", [1, 5, 7, 23], 48, [3, 3], 1, [2, 2], [0, 1, 2, 1], [1, 1]),
            ("lanes: 80 channels, dilation 2", [1, 6, 6, 19], 80, [3, 3], 1, [1, 1], [2, 2, 2, 2], [2, 2]),
            ("lanes: groups of 32", [1, 8, 3, 40], 64, [3, 3], 2, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("lanes: no left pad, 3 on the right", [1, 4, 5, 21], 32, [3, 3], 1, [1, 1], [1, 0, 2, 3], [1, 1]),
            // 4, 8 and 12 channels: quads of pixels (a partial last quad, several tiles).
            ("lanes, 4 channels: 70-pixel rows", [1, 3, 5, 70], 4, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("lanes, 8 channels: 50-pixel rows, batch 2", [2, 8, 6, 50], 8, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("lanes, 12 channels: 5x5 stride 2", [1, 3, 11, 37], 12, [5, 5], 1, [2, 2], [2, 2, 2, 2], [1, 1]),
        ];
        // On the CPU only (0.3 GFLOP: minutes on the emulator): a padded copy over the
        // 8 MiB cap, so it is made band by band (two bands of 66 rows), each band's channel
        // planes 17 x 4 KiB, moved off by the slack that keeps them out of the same L1 sets.
        #[rustfmt::skip]
        let large: Vec<ConvCase> = vec![
            ("3x3, a padded copy in bands", [1, 64, 132, 254], 8, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("3x3 stride 2, a padded copy in bands", [1, 24, 400, 300], 8, [3, 3], 1, [2, 2], [1, 1, 1, 1], [1, 1]),
            // Strided with many channels: the padded copy on AVX-512, packed panels on AVX2
            // (the full-size EAST stem; a 3x3 stride 2 on rows of a partial last panel).
            ("7x7 stride 2, 64 channels", [1, 3, 21, 140], 64, [7, 7], 1, [2, 2], [3, 3, 3, 3], [1, 1]),
            ("3x3 stride 2, 64 channels", [1, 16, 12, 161], 64, [3, 3], 1, [2, 2], [1, 1, 1, 1], [1, 1]),
            // Winograd F(2x2, 3x3) (64+ channels, 128 on one side): odd sizes (partial tiles
            // at the bottom and right), batch 2, no padding on rows one output wide,
            // asymmetric and 2-pixel pads, channels not a multiple of the strips or panels,
            // an image in bands of tile rows (10 + 10 + 5).
            ("3x3 Winograd, odd sizes, batch 2", [2, 64, 7, 9], 130, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
            ("3x3 Winograd, no padding, one output column", [1, 128, 6, 3], 64, [3, 3], 1, [1, 1], [0, 0, 0, 0], [1, 1]),
            ("3x3 Winograd, asymmetric pads", [1, 131, 5, 8], 67, [3, 3], 1, [1, 1], [0, 2, 1, 0], [1, 1]),
            ("3x3 Winograd, pads of 2", [1, 70, 4, 5], 129, [3, 3], 1, [1, 1], [2, 2, 2, 2], [1, 1]),
            ("3x3 Winograd in bands of tile rows", [1, 64, 50, 200], 128, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]),
        ];
        let cases = cases
            .into_iter()
            .chain(large.into_iter().filter(|_| target == Target::Native));
        for (what, x, co, k, g, s, p, d) in cases {
            let (op, out) = conv(x, co, k, g, s, p, d);
            let kernels = check_op(target, &format!("Conv {what}"), &op, None, &out);
            // Each shape class goes to its kernel.
            let want = if x[1] == g && g > 1 {
                "conv2d_depthwise_f32"
            } else if k == [1, 1] {
                // Grouped or not: tract turns an ungrouped one into an EinSum, which is
                // recognised as a 1x1 convolution again.
                "conv2d_1x1_f32"
            } else if co / g <= 16 {
                "conv2d_narrow_f32"
            } else {
                "conv2d_f32"
            };
            assert!(
                kernels.keys().any(|n| n.starts_with(want)),
                "Conv {what}: {kernels:?}"
            );
        }
        let (op, out) = conv([1, 5, 8, 8], 9, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]);
        check_op(target, "Conv + Relu fused", &op, Some("Relu"), &out);
        for (what, k, s, p, out) in [
            ("2x2 stride 2 (DB head)", 2, 2, 0, [2, 7, 10, 12]),
            ("3x3 stride 2 pad 1", 3, 2, 1, [2, 7, 9, 11]),
            ("3x3 stride 1", 3, 1, 0, [2, 7, 7, 8]),
            ("3x3 stride 3", 3, 3, 0, [2, 7, 15, 18]),
        ] {
            let op = OneOp::new("ConvTranspose", vec![("x", vec![2, 3, 5, 6])])
                .weight("w", random(&[3, 7, k, k], 17))
                .weight("b", random(&[7], 18))
                .attr(attr_ints("kernel_shape", &[k as i64, k as i64]))
                .attr(attr_ints("strides", &[s, s]))
                .attr(attr_ints("pads", &[p, p, p, p]));
            check_op(target, &format!("ConvTranspose {what}"), &op, None, &out);
            if k as i64 == s {
                // The DB head's ConvTranspose + BatchNorm + Relu: the epilogue of the pass
                // that writes each output pixel once.
                let what = format!("ConvTranspose {what} + Relu fused");
                check_op(target, &what, &op, Some("Relu"), &out);
            }
        }
        check_op(target, "Conv + Sigmoid fused", &op, Some("Sigmoid"), &out);
        // An activation without a vector form after the CPU's lanes kernel's transpose.
        let (op, out) = conv([1, 5, 3, 20], 32, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]);
        check_op(
            target,
            "Conv (lanes) + Sigmoid fused",
            &op,
            Some("Sigmoid"),
            &out,
        );
    }
}

/// A scalar initializer holding `v`.
fn scalar(v: f32) -> ArrayD<f32> {
    ArrayD::from_elem(ndarray::IxDyn(&[1]), v)
}

/// paddle2onnx's tail after each PP-OCRv4 convolution: a learnable affine block (`Mul`, `Add`;
/// here per channel, as a folded batch norm would be), hard-swish decomposed into
/// `Add(3) → Max(0) → Min(6) → Mul(x, ·)` with `x` read twice, a `Mul` by 1/6, and another
/// affine block. The whole tail runs in the convolution's epilogue: one launch.
fn paddle_tail(op: OneOp, co: usize) -> OneOp {
    op.extra_weight("s", random(&[1, co, 1, 1], 21))
        .extra_weight("t", random(&[1, co, 1, 1], 22))
        .extra_weight("three", scalar(3.0))
        .extra_weight("zero", scalar(0.0))
        .extra_weight("six", scalar(6.0))
        .extra_weight("sixth", scalar(1.0 / 6.0))
        .extra_weight("m", scalar(0.8))
        .extra_weight("p", scalar(-0.3))
        .then_with("Mul", "s") // t1
        .then_with("Add", "t") // t2: hard-swish's x
        .then_with("Add", "three")
        .then_with("Max", "zero")
        .then_with("Min", "six")
        .then_with("Mul", "t2")
        .then_with("Mul", "sixth")
        .then_with("Mul", "m")
        .then_with("Add", "p")
}

#[test]
fn a_convolutions_affine_and_hard_swish_tail_runs_in_its_epilogue() {
    for target in targets() {
        for (what, x, co, k, g, s) in [
            ("3x3", [2, 5, 9, 11], 9, 3, 1, 1),
            ("3x3 narrow stride 2", [1, 4, 12, 70], 6, 3, 1, 2),
            ("depthwise", [1, 8, 9, 70], 8, 3, 8, 1),
            // tract makes this an EinSum; it runs as a 1x1 convolution with the epilogue.
            ("1x1", [2, 8, 5, 70], 12, 1, 1, 1),
            // The CPU's Winograd path applies all of the epilogue in its output transform.
            (
                "3x3, 128 channels (Winograd on the CPU)",
                [2, 128, 5, 7],
                64,
                3,
                1,
                1,
            ),
        ] {
            let p = (k / 2) as i64;
            let (op, out) = conv(x, co, [k, k], g, [s, s], [p, p, p, p], [1, 1]);
            let op = paddle_tail(op, co);
            let folder = op.folder(None, &out);
            let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
            let inputs = vec![("x".to_string(), random(&x, 23))];
            let what = format!("Conv {what} + paddle tail on {target:?}");
            compare_with(&repo, &inputs, 1e-4, 1e-4, Scale::Tensor, &what);
            let r = repo.model("gpu").unwrap().execution_report().unwrap();
            // One launch: every node of the tail is in it (tract's declutter merges a few of
            // the nine first, e.g. the consecutive scalar `Mul`s).
            assert_eq!(r.launches, 1, "{what}: {r:?}");
            assert!(r.fused_nodes >= 5, "{what}: {r:?}");
        }
        // A factor that varies along the width is not a channel's: it cannot be folded into
        // the weights, and stays an element-wise launch of its own (answers unchanged).
        let (op, out) = conv([1, 3, 6, 7], 4, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]);
        let op = op
            .extra_weight("s", random(&[1, 1, 1, 7], 24))
            .then_with("Mul", "s")
            .then("Relu");
        let folder = op.folder(None, &out);
        let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
        let inputs = vec![("x".to_string(), random(&[1, 3, 6, 7], 25))];
        let what = format!("Conv + Mul along the width on {target:?}");
        compare_with(&repo, &inputs, 1e-4, 1e-4, Scale::Tensor, &what);
        let r = repo.model("gpu").unwrap().execution_report().unwrap();
        assert_eq!(r.launches, 2, "{what}: {r:?}");
    }
}

/// ResNet's shortcut, `Relu(Conv(x) + r)` with `r` computed before the convolution (another
/// graph input here; the block's input or the projection convolution's output in ResNet, the
/// upsampled branch in EAST's decoder), runs in the convolution's epilogue: one launch that
/// reads `r` as it stores the output, instead of a second pass over both.
#[test]
fn a_residual_add_and_its_activation_run_in_the_convolutions_epilogue() {
    for target in targets() {
        for (what, x, co, k, g, s) in [
            ("3x3", [2, 5, 9, 11], 9, 3, 1, 1),
            // Whole 64-pixel panels (the CPU reads them in place), a partial last one.
            ("3x3 wide rows", [1, 6, 4, 130], 40, 3, 1, 1),
            ("3x3 stride 2", [1, 4, 12, 70], 6, 3, 1, 2),
            // The CPU's lanes kernel (STR's shape; 16 channels in tiles wider than 16).
            (
                "3x3, 32 channels on 26-pixel rows",
                [1, 16, 4, 26],
                32,
                3,
                1,
                1,
            ),
            (
                "3x3, 16 channels on 40-pixel rows",
                [2, 4, 3, 40],
                16,
                3,
                1,
                1,
            ),
            (
                "3x3, 8 channels on 50-pixel rows",
                [1, 4, 5, 50],
                8,
                3,
                1,
                1,
            ),
            ("groups 2, batch 2", [2, 6, 8, 8], 4, 3, 2, 1),
            ("depthwise", [1, 8, 9, 70], 8, 3, 8, 1),
            // tract makes this an EinSum; it runs as a 1x1 convolution with the epilogue.
            ("1x1", [2, 8, 5, 70], 12, 1, 1, 1),
            // The CPU's Winograd path applies all of the epilogue in its output transform.
            (
                "3x3, 128 channels (Winograd on the CPU)",
                [2, 128, 5, 7],
                64,
                3,
                1,
                1,
            ),
        ] {
            let p = (k / 2) as i64;
            let (op, out) = conv(x, co, [k, k], g, [s, s], [p, p, p, p], [1, 1]);
            for relu in [true, false] {
                let op = op
                    .clone()
                    .extra_input("r", out.clone())
                    .then_with("Add", "r");
                let op = if relu { op.then("Relu") } else { op };
                let folder = op.folder(None, &out);
                let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
                let inputs = vec![
                    ("x".to_string(), random(&x, 23)),
                    ("r".to_string(), random(&out, 24)),
                ];
                let what = format!("Conv {what} + residual (relu {relu}) on {target:?}");
                compare_with(&repo, &inputs, 1e-4, 1e-4, Scale::Tensor, &what);
                let r = repo.model("gpu").unwrap().execution_report().unwrap();
                assert_eq!(r.launches, 1, "{what}: {r:?}");
                // (tract's 1x1 EinSum keeps its bias as an Add of its own: fused as well.)
                assert!(r.fused_nodes > relu as usize, "{what}: {r:?}");
            }
        }
        // The identity shortcut: the convolution's own input.
        let x = [1, 8, 6, 70];
        let (op, out) = conv(x, 8, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]);
        let folder = op.then_with("Add", "x").then("Relu").folder(None, &out);
        let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
        let what = format!("Conv + its own input on {target:?}");
        compare_with(
            &repo,
            &[("x".into(), random(&x, 26))],
            1e-4,
            1e-4,
            Scale::Tensor,
            &what,
        );
        let r = repo.model("gpu").unwrap().execution_report().unwrap();
        assert_eq!(r.launches, 1, "{what}: {r:?}");
        // A value that broadcasts (one per channel, not a constant) is not a residual: the
        // Add stays a launch of its own, answers unchanged.
        let x = [1, 3, 6, 7];
        let (op, out) = conv(x, 4, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]);
        let op = op
            .extra_input("r", vec![1, 4, 1, 1])
            .then_with("Add", "r")
            .then("Relu");
        let folder = op.folder(None, &out);
        let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
        let inputs = vec![
            ("x".to_string(), random(&x, 27)),
            ("r".to_string(), random(&[1, 4, 1, 1], 28)),
        ];
        let what = format!("Conv + a per-channel input on {target:?}");
        compare_with(&repo, &inputs, 1e-4, 1e-4, Scale::Tensor, &what);
        let r = repo.model("gpu").unwrap().execution_report().unwrap();
        assert_eq!(r.launches, 2, "{what}: {r:?}");
    }
}

/// A linear Resize of `x` to `sizes` with coordinate mode `coord`.
fn resize(x: &[usize], sizes: &[i64], coord: &str) -> OneOp {
    OneOp::new("Resize", vec![("x", x.to_vec())])
        .empty_input()
        .empty_input()
        .ints("sizes", sizes.to_vec())
        .attr(attr_str("mode", "linear"))
        .attr(attr_str("coordinate_transformation_mode", coord))
}

/// tract 0.23's declutter turns these patterns into one operator each (`Silu`, `RmsNorm`,
/// `NearestUpsample`); each is lowered to the device as that one node.
#[test]
fn operators_tract_fuses_run_on_the_gpu() {
    for target in targets() {
        let x = vec![2usize, 3, 5, 8];
        let silu = OneOp::new("Sigmoid", vec![("x", x.clone())]).then_with("Mul", "x");
        let rms = OneOp::new("Mul", vec![("x", x.clone())])
            .reuse("x")
            .then_attrs(
                "ReduceMean",
                vec![attr_ints("axes", &[3]), attr_int("keepdims", 1)],
            )
            .extra_weight("eps", ArrayD::from_elem(vec![1], 1e-5))
            .then_with("Add", "eps")
            .then("Sqrt")
            .then("Reciprocal")
            .then_with("Mul", "x");
        let upsample = |scales: Vec<f32>| {
            OneOp::new("Resize", vec![("x", x.clone())])
                .empty_input()
                .weight("scales", ArrayD::from_shape_vec(vec![4], scales).unwrap())
                .attr(attr_str("mode", "nearest"))
                .attr(attr_str("coordinate_transformation_mode", "asymmetric"))
                .attr(attr_str("nearest_mode", "floor"))
        };
        // x3 along the rows; x2 (PP-OCR det's FPN) has its own loop on the CPU.
        let up = upsample(vec![1.0, 1.0, 2.0, 3.0]);
        let up2 = upsample(vec![1.0, 1.0, 2.0, 2.0]);
        // x4 and x8 (PP-OCR det's FPN too): fixed-width runs on the CPU.
        let up4 = upsample(vec![1.0, 1.0, 4.0, 4.0]);
        let up8 = upsample(vec![1.0, 1.0, 8.0, 8.0]);
        for (what, op, out, kernel) in [
            ("Silu", &silu, vec![2, 3, 5, 8], "unary_f32"),
            ("RmsNorm", &rms, vec![2, 3, 5, 8], "reduce_f32"),
            ("NearestUpsample", &up, vec![2, 3, 10, 24], "copy_f32"),
            ("NearestUpsample x2", &up2, vec![2, 3, 10, 16], "copy_f32"),
            ("NearestUpsample x4", &up4, vec![2, 3, 20, 32], "copy_f32"),
            ("NearestUpsample x8", &up8, vec![2, 3, 40, 64], "copy_f32"),
        ] {
            let folder = op.folder(None, &out);
            let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
            let inputs = vec![("x".to_string(), random(&x, 5))];
            let what = format!("{what} on {target:?}");
            compare(&repo, &inputs, 1e-5, 1e-5, &what);
            let report = repo.model("gpu").unwrap().execution_report().unwrap();
            assert!(report.cpu_nodes.is_empty(), "{what}: {report:?}");
            assert_eq!(
                report.gpu_nodes, 1,
                "{what}: not one fused node: {report:?}"
            );
            assert!(report.kernels.contains_key(kernel), "{what}: {report:?}");
        }
    }
}

#[test]
fn element_wise_pooling_and_layout_kernels_match_the_cpu_path() {
    for target in targets() {
        let odd = vec![1usize, 3, 7, 5];
        for op in ["Sigmoid", "Relu", "Tanh", "Exp", "Abs", "Neg"] {
            check_op(
                target,
                op,
                &OneOp::new(op, vec![("x", odd.clone())]),
                None,
                &odd,
            );
        }
        let abs = OneOp::new("Abs", vec![("x", vec![1, 1, 1, 1])]);
        check_op(
            target,
            "Abs then Sqrt, 1 element",
            &abs,
            Some("Sqrt"),
            &[1, 1, 1, 1],
        );
        for op in ["Add", "Sub", "Mul", "Max", "Min"] {
            let o =
                OneOp::new(op, vec![("a", vec![2, 3, 4, 5])]).weight("b", random(&[1, 3, 1, 5], 3));
            check_op(target, &format!("{op} broadcast"), &o, None, &[2, 3, 4, 5]);
            let o = OneOp::new(op, vec![("a", vec![2, 3, 4, 5]), ("b", vec![2, 3, 4, 5])]);
            check_op(target, &format!("{op} same shape"), &o, None, &[2, 3, 4, 5]);
        }
        let pool = |op: &'static str, k: i64, s: i64, p: i64| {
            OneOp::new(op, vec![("x", vec![2, 3, 9, 8])])
                .attr(attr_ints("kernel_shape", &[k, k]))
                .attr(attr_ints("strides", &[s, s]))
                .attr(attr_ints("pads", &[p, p, p, p]))
        };
        check_op(
            target,
            "MaxPool 3x3 s2",
            &pool("MaxPool", 3, 2, 1),
            None,
            &[2, 3, 5, 4],
        );
        check_op(
            target,
            "MaxPool 2x2 s2",
            &pool("MaxPool", 2, 2, 0),
            None,
            &[2, 3, 4, 4],
        );
        check_op(
            target,
            "AveragePool 3x3 s1",
            &pool("AveragePool", 3, 1, 1),
            None,
            &[2, 3, 9, 8],
        );
        // Wide enough for the CPU's vector stride-2 fold and its split over threads.
        for op in ["MaxPool", "AveragePool"] {
            let wide = OneOp::new(op, vec![("x", vec![2, 32, 80, 101])])
                .attr(attr_ints("kernel_shape", &[3, 3]))
                .attr(attr_ints("strides", &[2, 2]))
                .attr(attr_ints("pads", &[1, 1, 1, 1]));
            check_op(
                target,
                &format!("{op} 3x3 s2, wide"),
                &wide,
                None,
                &[2, 32, 40, 51],
            );
        }
        // The CPU's strided-pick path (1x1 kernels, ResNet v1's stride-2 shortcut) and its
        // stride-2 fold from each row's even and odd columns, at both parities of the first
        // tap (no padding; SAME_UPPER's pads after only) over odd widths.
        #[rustfmt::skip]
        let pools = [
            ("MaxPool 1x1 s2, wide", 1, 2, [0, 0, 0, 0], [2, 32, 81, 101], [2, 32, 41, 51]),
            ("MaxPool 1x1 s3", 1, 3, [0, 0, 0, 0], [2, 3, 9, 8], [2, 3, 3, 3]),
            ("AveragePool 1x1 s2", 1, 2, [0, 0, 0, 0], [1, 3, 7, 37], [1, 3, 4, 19]),
            ("MaxPool 3x3 s2 pad 0, wide", 3, 2, [0, 0, 0, 0], [2, 32, 81, 101], [2, 32, 40, 50]),
            ("MaxPool 3x3 s2 SAME_UPPER, wide", 3, 2, [0, 0, 1, 1], [1, 16, 80, 100], [1, 16, 40, 50]),
            ("MaxPool 2x2 s2, odd sizes", 2, 2, [0, 0, 0, 0], [2, 3, 9, 37], [2, 3, 4, 18]),
            ("MaxPool 2x2 s2, padded", 2, 2, [1, 1, 1, 1], [1, 3, 8, 36], [1, 3, 5, 19]),
            ("AveragePool 2x2 s2", 2, 2, [0, 0, 0, 0], [1, 4, 8, 34], [1, 4, 4, 17]),
        ];
        for (what, k, s, pads, x, out) in pools {
            let op = OneOp::new(
                if what.starts_with("Max") {
                    "MaxPool"
                } else {
                    "AveragePool"
                },
                vec![("x", x.to_vec())],
            )
            .attr(attr_ints("kernel_shape", &[k, k]))
            .attr(attr_ints("strides", &[s, s]))
            .attr(attr_ints("pads", &pads));
            check_op(target, what, &op, None, &out);
        }
        let gap = OneOp::new("GlobalAveragePool", vec![("x", vec![2, 5, 7, 3])]);
        check_op(target, "GlobalAveragePool", &gap, None, &[2, 5, 1, 1]);
        let rmean = OneOp::new("ReduceMean", vec![("x", vec![2, 5, 7, 3])])
            .attr(attr_ints("axes", &[1]))
            .attr(attr_int("keepdims", 1));
        check_op(target, "ReduceMean axis 1", &rmean, None, &[2, 1, 7, 3]);
        let rmax = OneOp::new("ReduceMax", vec![("x", vec![3, 4, 5])])
            .attr(attr_ints("axes", &[0, 2]))
            .attr(attr_int("keepdims", 1));
        check_op(target, "ReduceMax axes 0, 2", &rmax, None, &[1, 4, 1]);
        // Few long reductions run one block per output (a tree in shared memory), many
        // short or very many ones a thread per output: both paths. (Opset 13's ReduceSum
        // takes its axes as an input; these take them as an attribute.)
        for (op, x, axes, out) in [
            ("ReduceMax", vec![3, 6625], vec![1], vec![3, 1]),
            (
                "ReduceMean",
                vec![2, 5, 33, 40],
                vec![2, 3],
                vec![2, 5, 1, 1],
            ),
            ("ReduceMin", vec![7, 4, 300], vec![0, 2], vec![1, 4, 1]),
            ("ReduceMean", vec![2, 300, 3], vec![1], vec![2, 1, 3]),
            ("ReduceMax", vec![33_000, 64], vec![1], vec![33_000, 1]),
        ] {
            let r = OneOp::new(op, vec![("x", x.clone())])
                .attr(attr_ints("axes", &axes))
                .attr(attr_int("keepdims", 1));
            check_op(target, &format!("{op} {x:?} axes {axes:?}"), &r, None, &out);
        }
        // Every axis (ReduceSum without axes): one output over 2.1 M elements, against the
        // exact (f64) sum. One GPU thread summing them in order was 0.02 off, the native
        // engine's 16 lanes 5.7e-3; now the GPU's block tree is 5e-4 off, the native blocked
        // lanes 1e-4, tract 1.5e-3.
        let all =
            OneOp::new("ReduceSum", vec![("x", vec![33_000, 64])]).attr(attr_int("keepdims", 0));
        let folder = all.folder(None, &[1, 1]);
        let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
        let x = random(&[33_000, 64], 7);
        let exact: f64 = x.iter().map(|&v| f64::from(v)).sum();
        let t = vec![("x", Tensor::from(x))];
        for m in ["cpu", "gpu"] {
            let out = repo.model(m).unwrap().infer(t.clone()).unwrap();
            let got: Vec<f32> = out
                .get("y")
                .unwrap()
                .view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect();
            eprintln!("ReduceSum of all, {m} on {target:?}: {got:?}, exact {exact}");
            assert_eq!(got.len(), 1);
            assert!(
                (f64::from(got[0]) - exact).abs() < 2.5e-3,
                "{m} on {target:?}: {got:?} vs {exact}"
            );
        }
        let sm = OneOp::new("Softmax", vec![("x", vec![2, 37, 26])]).attr(attr_int("axis", 1));
        check_op(target, "Softmax axis 1", &sm, None, &[2, 37, 26]);
        let sm = OneOp::new("Softmax", vec![("x", vec![3, 6625])]).attr(attr_int("axis", -1));
        check_op(target, "Softmax last axis", &sm, None, &[3, 6625]);
        // The recogniser's rows: enough of them to be split over the CPU's threads.
        let sm = OneOp::new("Softmax", vec![("x", vec![40, 6625])]).attr(attr_int("axis", -1));
        check_op(target, "Softmax 40 rows", &sm, None, &[40, 6625]);
        let sm = OneOp::new("LogSoftmax", vec![("x", vec![40, 6625])]).attr(attr_int("axis", -1));
        check_op(target, "LogSoftmax 40 rows", &sm, None, &[40, 6625]);
        let tr = OneOp::new("Transpose", vec![("x", vec![2, 3, 4, 5])])
            .attr(attr_ints("perm", &[0, 2, 3, 1]));
        check_op(target, "Transpose NCHW->NHWC", &tr, None, &[2, 4, 5, 3]);
        let tr = OneOp::new("Transpose", vec![("x", vec![1, 6, 5, 3])])
            .attr(attr_ints("perm", &[0, 3, 1, 2]));
        check_op(target, "Transpose NHWC->NCHW", &tr, None, &[1, 3, 6, 5]);
        // (The CPU de-interleaves 2-4 channels in one pass; batch 2 walks image by image.)
        for (x, out) in [
            ([1, 7, 9, 4], [1, 4, 7, 9]),
            ([1, 5, 3, 2], [1, 2, 5, 3]),
            ([2, 4, 5, 3], [2, 3, 4, 5]),
        ] {
            let tr = OneOp::new("Transpose", vec![("x", x.to_vec())])
                .attr(attr_ints("perm", &[0, 3, 1, 2]));
            check_op(
                target,
                &format!("Transpose NHWC->NCHW {x:?}"),
                &tr,
                None,
                &out,
            );
        }
        let cat = OneOp::new(
            "Concat",
            vec![("a", vec![1, 3, 4, 5]), ("b", vec![1, 2, 4, 5])],
        )
        .attr(attr_int("axis", 1));
        check_op(target, "Concat channels", &cat, None, &[1, 5, 4, 5]);
        let cat = OneOp::new(
            "Concat",
            vec![("a", vec![1, 4, 5, 1]), ("b", vec![1, 4, 5, 4])],
        )
        .attr(attr_int("axis", 3));
        check_op(target, "Concat last axis", &cat, None, &[1, 4, 5, 5]);
        let mm =
            OneOp::new("MatMul", vec![("a", vec![3, 7, 70])]).weight("b", random(&[70, 37], 5));
        check_op(target, "MatMul with weights", &mm, None, &[3, 7, 37]);
        check_op(target, "MatMul + Relu", &mm, Some("Relu"), &[3, 7, 37]);
        let narrow =
            OneOp::new("MatMul", vec![("a", vec![2, 300, 19])]).weight("b", random(&[19, 5], 6));
        check_op(
            target,
            "MatMul with 5 columns (narrow tile)",
            &narrow,
            None,
            &[2, 300, 5],
        );
        check_op(
            target,
            "MatMul + Sigmoid",
            &mm,
            Some("Sigmoid"),
            &[3, 7, 37],
        );
        let mm = OneOp::new("MatMul", vec![("a", vec![2, 5, 9]), ("b", vec![2, 9, 66])]);
        check_op(target, "batched MatMul", &mm, None, &[2, 5, 66]);
        let gemm = OneOp::new("Gemm", vec![("a", vec![4, 33])])
            .weight("b", random(&[65, 33], 9))
            .weight("c", random(&[65], 10))
            .attr(attr_int("transB", 1));
        check_op(target, "Gemm transB + bias", &gemm, None, &[4, 65]);
        let rs = resize(&[1, 3, 4, 6], &[1, 3, 8, 12], "asymmetric");
        check_op(
            target,
            "Resize linear asymmetric x2 (EAST)",
            &rs,
            None,
            &[1, 3, 8, 12],
        );
        let rs = resize(&[1, 2, 3, 5], &[1, 2, 7, 9], "align_corners");
        check_op(
            target,
            "Resize linear align_corners",
            &rs,
            None,
            &[1, 2, 7, 9],
        );
        let pad = OneOp::new("Pad", vec![("x", vec![1, 2, 3, 4])])
            .ints("pads", vec![0, 0, 1, 2, 0, 0, 2, 1]);
        check_op(target, "Pad constant", &pad, None, &[1, 2, 6, 7]);
        let tile =
            OneOp::new("Tile", vec![("x", vec![1, 2, 3, 1])]).ints("repeats", vec![2, 1, 2, 3]);
        check_op(target, "Tile", &tile, None, &[2, 2, 6, 3]);
        let sl = OneOp::new("Slice", vec![("x", vec![2, 9, 5])])
            .ints("starts", vec![2])
            .ints("ends", vec![7])
            .ints("axes", vec![1]);
        check_op(target, "Slice", &sl, None, &[2, 5, 5]);
    }
}

// ---- whole models ------------------------------------------------------------------------

/// `folder`'s model on the CPU and on `target`: outputs compared, and compared with ONNX
/// Runtime's committed outputs when `reference` names a case of `fixtures/reference`.
fn whole_model(
    target: Target,
    folder: &str,
    inputs: Vec<(String, ArrayD<f32>)>,
    what: &str,
    reference_key: Option<&str>,
) -> modelyard::gpu::ExecutionReport {
    let (_tmp, repo) = cpu_and_gpu(&fixtures().join(folder), target);
    let got = compare_with(
        &repo,
        &inputs,
        2e-3,
        2e-3,
        Scale::Channel,
        &format!("{what} on {target:?}"),
    );
    if let Some(want) = reference_key.map(reference) {
        for (name, w) in want.outputs {
            let g = &got.iter().find(|(n, _)| *n == name).unwrap().1;
            // 1e-3 of each channel's own magnitude (at least 1): EAST's angle channel gets
            // 1e-3, not 1e-3 of the distances beside it.
            let scales: Vec<f32> = channel_max(&w.view()).iter().map(|m| m.max(1.0)).collect();
            let (mut worst, mut at) = (0f32, 0);
            for (i, (a, b)) in g.iter().zip(w.iter()).enumerate() {
                let ratio = (a - b).abs() / scales[i % scales.len()];
                if ratio > worst {
                    (worst, at) = (ratio, i);
                }
            }
            eprintln!("{what} on {target:?}: '{name}' vs ONNX Runtime: max diff {worst:.2e} of its channel's scale");
            assert!(
                worst <= 1e-3,
                "{what} '{name}'[{at}] vs ONNX Runtime: {worst:.2e} of its channel's scale {}",
                scales[at % scales.len()]
            );
        }
    }
    let report = repo.model("gpu").unwrap().execution_report().unwrap();
    eprintln!("{what} on {target:?}: {report:?}");
    report
}

#[test]
fn tutorial_east_and_str_run_entirely_on_the_gpu() {
    for target in targets() {
        for key in ["east_1x64x96", "east_2x96x128"] {
            let r = whole_model(
                target,
                "tutorial_repository/text_detection",
                reference(key).inputs,
                key,
                Some(key),
            );
            assert!(
                r.cpu_nodes.is_empty(),
                "{key}: CPU fallbacks {:?}",
                r.cpu_nodes
            );
            assert_eq!(r.intermediate_copies, 0, "{key}");
            assert_eq!(
                (r.uploads, r.downloads),
                (1, 2),
                "{key}: one input, two outputs"
            );
            assert!(r.fused_nodes > 0, "{key}: no activation fused");
        }
        {
            let key = "str_1x1x32x100";
            let r = whole_model(
                target,
                "tutorial_repository/text_recognition",
                reference(key).inputs,
                key,
                Some(key),
            );
            assert!(
                r.cpu_nodes.is_empty(),
                "{key}: CPU fallbacks {:?}",
                r.cpu_nodes
            );
            assert_eq!(r.intermediate_copies, 0, "{key}");
        }
    }
}

#[test]
fn paddleocr_models_match_the_cpu_path() {
    for target in targets() {
        // Small images on the emulator (it is slow); the recogniser at its real height.
        let det_in = vec![("x".to_string(), random(&[1, 3, 64, 96], 21))];
        let r = whole_model(
            target,
            "ocr_repository/text_detection",
            det_in,
            "PaddleOCR det 64x96",
            None,
        );
        assert!(r.cpu_nodes.is_empty(), "CPU fallbacks {:?}", r.cpu_nodes);
        assert_eq!(r.intermediate_copies, 0);
        let rec_in = vec![("x".to_string(), random(&[1, 3, 48, 160], 22))];
        let r = whole_model(
            target,
            "ocr_repository/text_recognition",
            rec_in,
            "PaddleOCR rec 48x160",
            None,
        );
        assert!(r.cpu_nodes.is_empty(), "CPU fallbacks {:?}", r.cpu_nodes);
        assert_eq!(r.intermediate_copies, 0);
    }
}

#[test]
fn out_of_device_memory_is_an_error_and_the_models_keep_working() {
    for target in device_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let east = fixtures().join("tutorial_repository/text_detection");
        add_model(tmp.path(), &east, "gpu", "KIND_GPU");
        add_model(tmp.path(), &east, "other", "KIND_GPU");
        // The reference after the failure: a CPU copy (tract's plan), which shares no state
        // with the device, so corrupt device state cannot pass as agreement.
        add_model(tmp.path(), &east, "cpu", "KIND_CPU");
        set_engine(tmp.path(), "cpu", "tract");
        let repo = Repository::builder(tmp.path())
            .cuda_emulator(target == Target::Emulator)
            .max_request_bytes(8 << 30)
            .load()
            .unwrap();
        // The emulator has 1 GiB: a 6016x6016 image's activations do not fit. On an H200
        // (139 GiB) 19968x19968 (4.8 GB in, ~15 GB of activations) may fit: then it must
        // answer, else fail the same clear way.
        let side = if target == Target::Emulator {
            6016
        } else {
            19968
        };
        let big = Tensor::from(ndarray::Array4::<f32>::zeros((1, side, side, 3)));
        match repo.model("gpu").unwrap().infer([("input_images:0", big)]) {
            Ok(out) => assert_eq!(
                target,
                Target::Cuda,
                "the emulator cannot hold it: {:?}",
                out.get("feature_fusion/concat_3:0")
                    .map(|t| t.shape().to_vec())
            ),
            Err(e) => {
                let text = e.to_string();
                assert_eq!(e.kind(), modelyard::ErrorKind::ResourceExhausted, "{text}");
                // Device memory, or the page-locked staging for the 4.8 GB input: both
                // are ResourceExhausted with what ran out.
                assert!(
                    text.contains("model 'gpu'")
                        && (text.contains("out of device memory")
                            || text.contains("out of page-locked host memory")),
                    "{text}"
                );
            }
        }
        // Both device models still answer a normal request, as the CPU copy does.
        let small = vec![("input_images:0".to_string(), random(&[1, 64, 96, 3], 3))];
        compare(
            &repo,
            &small,
            2e-3,
            2e-3,
            &format!("'gpu' after OOM on {target:?}"),
        );
        let (other, gpu) = (repo.model("other").unwrap(), repo.model("gpu").unwrap());
        let t = vec![("input_images:0", Tensor::from(small[0].1.clone()))];
        let (a, b) = (other.infer(t.clone()).unwrap(), gpu.infer(t).unwrap());
        for (name, x) in a.iter() {
            let y = b.get(name).unwrap();
            assert_eq!(
                x.view::<f32>().unwrap(),
                y.view::<f32>().unwrap(),
                "'{name}' on {target:?}"
            );
        }
    }
}

#[test]
fn concurrent_callers_get_their_own_answers() {
    for target in device_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let east = fixtures().join("tutorial_repository/text_detection");
        add_model(tmp.path(), &east, "gpu", "KIND_GPU");
        std::fs::write(
            tmp.path().join("gpu/config.pbtxt"),
            std::fs::read_to_string(tmp.path().join("gpu/config.pbtxt"))
                .unwrap()
                .replace("count: 1", "count: 3"),
        )
        .unwrap();
        let repo = Repository::builder(tmp.path())
            .cuda_emulator(target == Target::Emulator)
            .load()
            .unwrap();
        let model = repo.model("gpu").unwrap();
        let run = |seed: u64| {
            let x = Tensor::from(random(&[1, 32, 64, 3], seed));
            let out = model.infer([("input_images:0", x)]).unwrap();
            out.get("feature_fusion/concat_3:0")
                .unwrap()
                .view::<f32>()
                .unwrap()
                .to_owned()
        };
        let alone: Vec<_> = (0..6).map(run).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..6u64)
                .map(|seed| {
                    let run = &run;
                    s.spawn(move || (0..3).map(|_| run(seed)).collect::<Vec<_>>())
                })
                .collect();
            for (seed, h) in handles.into_iter().enumerate() {
                for got in h.join().unwrap() {
                    assert_eq!(got, alone[seed], "caller {seed} on {target:?}");
                }
            }
        });
    }
}

#[test]
fn kernel_timing_for_benchmarks_runs_only_on_gpu_models() {
    for target in device_targets() {
        let op = OneOp::new("Sigmoid", vec![("x", vec![4096])]);
        let folder = op.folder(None, &[4096]);
        let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
        let t = repo
            .model("gpu")
            .unwrap()
            .time_gpu_kernels(&[vec![4096]], 3)
            .unwrap();
        assert!(
            t.is_some_and(|t| t > std::time::Duration::ZERO),
            "{target:?}"
        );
        let none = repo
            .model("cpu")
            .unwrap()
            .time_gpu_kernels(&[vec![4096]], 3)
            .unwrap();
        assert!(none.is_none());
    }
}

#[test]
fn a_model_with_fixed_shapes_is_planned_at_load() {
    for target in targets() {
        let str_dir = fixtures().join("tutorial_repository/text_recognition");
        let (_tmp, repo) = cpu_and_gpu(&str_dir, target);
        let r = repo
            .model("gpu")
            .unwrap()
            .execution_report()
            .expect("STR's dims are fixed: planned at load");
        assert!(r.cpu_nodes.is_empty(), "{r:?}");
        // EAST's input dims are all -1: planned by its first request.
        let east_dir = fixtures().join("tutorial_repository/text_detection");
        let (_tmp, repo) = cpu_and_gpu(&east_dir, target);
        assert!(repo.model("gpu").unwrap().execution_report().is_none());
    }
}

#[test]
fn a_new_input_shape_reuses_the_weights_on_the_device() {
    for target in targets() {
        let east = fixtures().join("tutorial_repository/text_detection");
        let (_tmp, repo) = cpu_and_gpu(&east, target);
        let model = repo.model("gpu").unwrap();
        let mut reports = Vec::new();
        for shape in [[1, 64, 96, 3], [1, 96, 128, 3], [2, 32, 32, 3]] {
            let x = Tensor::from(random(&shape, 1));
            model.infer([("input_images:0", x)]).unwrap();
            reports.push(model.execution_report().unwrap());
        }
        let first = &reports[0];
        // Identical constants are stored once, even within one plan.
        assert!(
            first.uploaded_weight_bytes <= first.weight_bytes,
            "{first:?}"
        );
        assert!(
            first.uploaded_weight_bytes * 10 > first.weight_bytes * 9,
            "{first:?}"
        );
        for r in &reports[1..] {
            // Only shape-dependent constants (if any) are new; the convolution weights are not.
            assert!(
                r.uploaded_weight_bytes * 10 < r.weight_bytes,
                "{} of {} weight bytes uploaded again on {target:?}",
                r.uploaded_weight_bytes,
                r.weight_bytes
            );
        }
    }
}

/// The whole OCR pipeline (PaddleOCR det + rec through `OcrPipeline`) reads the same lines on
/// the GPU path as on the CPU.
#[cfg(feature = "ocr")]
#[test]
fn the_ocr_pipeline_reads_the_same_text_on_the_gpu() {
    use modelyard::ocr::{OcrOptions, OcrPipeline};
    let img = image::open(fixtures().join("images/word_640x480.png"))
        .unwrap()
        .to_rgb8();
    let read = |repo: &Repository| {
        // Detection at 352 px on the short side, not PaddleOCR's 736: the emulator runs
        // every thread of every block, and det at 992x736 took ~110 s of this test on 2
        // cores. The word reads the same.
        let mut options = OcrOptions::default();
        options.db.limit_side_len = 352;
        let ocr = OcrPipeline::from_repository(repo, options).unwrap();
        let (lines, _) = ocr.run(&img).unwrap();
        lines.into_iter().map(|l| l.text).collect::<Vec<_>>()
    };
    let dir = fixtures().join("ocr_repository");
    let cpu = read(&Repository::builder(&dir).load().unwrap());
    assert_eq!(cpu, ["HELLO"]);
    let tmp = tempfile::tempdir().unwrap();
    for m in ["text_detection", "text_recognition", "text_classification"] {
        add_model(tmp.path(), &dir.join(m), m, "KIND_GPU");
    }
    for target in device_targets() {
        let repo = Repository::builder(tmp.path())
            .cuda_emulator(target == Target::Emulator)
            .load()
            .unwrap();
        let started = std::time::Instant::now();
        assert_eq!(read(&repo), cpu, "on {target:?}");
        eprintln!("OCR on {target:?}: {:?}", started.elapsed());
        for m in ["text_detection", "text_recognition"] {
            let r = repo.model(m).unwrap().execution_report().unwrap();
            assert!(
                r.cpu_nodes.is_empty() && r.intermediate_copies == 0,
                "{m}: {r:?}"
            );
        }
    }
}

#[test]
fn nodes_without_a_kernel_run_as_one_cpu_island() {
    for target in targets() {
        // Neg (GPU) -> Sign, Acos (no kernels: CPU) -> Sigmoid (GPU).
        let op = OneOp::new("Neg", vec![("x", vec![2, 3, 5])])
            .then("Sign")
            .then("Acos")
            .then("Sigmoid");
        let folder = op.folder(None, &[2, 3, 5]);
        let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
        let x = vec![("x".to_string(), random(&[2, 3, 5], 4))];
        compare(&repo, &x, 1e-6, 1e-6, &format!("island on {target:?}"));
        let r = repo.model("gpu").unwrap().execution_report().unwrap();
        assert_eq!(r.cpu_nodes.len(), 2, "{r:?}");
        assert_eq!(r.cpu_islands, 1, "{r:?}");
        // One download into the island, one upload out of it.
        assert_eq!(r.intermediate_copies, 2, "{r:?}");
    }
}

/// Neg -> Sign (CPU) -> Sigmoid -> Acos (CPU) -> Neg over `[2, 3, 5]`: two CPU islands
/// between device kernels, so values are copied in and out three times each.
fn two_islands() -> tempfile::TempDir {
    OneOp::new("Neg", vec![("x", vec![2, 3, 5])])
        .then("Sign")
        .then("Sigmoid")
        .then("Acos")
        .then("Neg")
        .folder(None, &[2, 3, 5])
}

/// Page-locked staging is reused by liveness: the copies between two synchronisations (the
/// run waits for its copies before each CPU step) share the buffer with the next group's.
/// Neg -> Sign (CPU) -> Sigmoid -> Acos (CPU) -> Neg: three groups of two 30-float copies (120
/// bytes, slots of 128), so 256 bytes, not the 768 of one slot per copy.
#[test]
fn staging_slots_are_reused_between_synchronisations() {
    for target in device_targets() {
        let folder = two_islands();
        let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
        let x = vec![("x".to_string(), random(&[2, 3, 5], 4))];
        for _ in 0..3 {
            compare(&repo, &x, 1e-6, 1e-6, &format!("two islands on {target:?}"));
        }
        let r = repo.model("gpu").unwrap().execution_report().unwrap();
        assert_eq!(r.cpu_islands, 2, "{r:?}");
        assert_eq!((r.uploads, r.downloads), (3, 3), "{r:?}");
        assert_eq!(r.staging_bytes, 256, "{r:?}");
    }
}

/// The native CPU engine's memory is the host's: its copies go straight between the
/// request's tensors (and the islands' values) and the arena, no staging buffer at all, and
/// the answers are the same as tract's with the values copied in and out around two islands
/// (three times: instances are reused).
#[test]
fn the_native_engine_copies_without_staging() {
    let folder = two_islands();
    let (_tmp, repo) = cpu_and_gpu(folder.path(), Target::Native);
    for seed in 4..7 {
        let x = vec![("x".to_string(), random(&[2, 3, 5], seed))];
        compare(&repo, &x, 1e-6, 1e-6, "two islands on the native engine");
    }
    let r = repo.model("gpu").unwrap().execution_report().unwrap();
    assert_eq!(r.cpu_islands, 2, "{r:?}");
    assert_eq!((r.uploads, r.downloads), (3, 3), "{r:?}");
    assert_eq!(r.staging_bytes, 0, "{r:?}");
}

/// Resize, linear, half_pixel: the GPU follows ONNX (ONNX Runtime clamps the source
/// coordinate to the image); tract's CPU Resize extrapolates at the borders instead, so here
/// the reference is ONNX Runtime's known answer, not the CPU path.
#[test]
fn half_pixel_resize_follows_onnx_runtime() {
    for target in targets() {
        let rs = resize(&[1, 1, 2, 2], &[1, 1, 4, 4], "half_pixel");
        let folder = rs.folder(None, &[1, 1, 4, 4]);
        let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
        let x = ndarray::arr2(&[[1f32, 2.], [3., 4.]])
            .into_shape_with_order((1, 1, 2, 2))
            .unwrap();
        let out = repo
            .model("gpu")
            .unwrap()
            .infer([("x", Tensor::from(x))])
            .unwrap();
        let got: Vec<f32> = out
            .get("y")
            .unwrap()
            .view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        // onnxruntime.InferenceSession(...).run(None, {"x": [[[[1, 2], [3, 4]]]]}), 4x4 output.
        let want = [
            1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0,
        ];
        assert_eq!(got, want, "on {target:?}");
    }
}

#[test]
fn an_int_model_runs_on_the_cpu_side_of_a_gpu_group() {
    // add_sub on int32: no kernel takes it; the whole graph is one CPU island, same answers.
    for target in targets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("1")).unwrap();
        std::fs::copy(
            fixtures().join("generated/add_sub_int32_batch.onnx"),
            dir.path().join("1/model.onnx"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("config.pbtxt"),
            "backend: \"onnxruntime\"\n",
        )
        .unwrap();
        let (_tmp, repo) = cpu_and_gpu(dir.path(), target);
        let a = Tensor::from(ndarray::Array2::<i32>::from_shape_fn((2, 16), |(i, j)| {
            (i * 16 + j) as i32
        }));
        let b = Tensor::from(ndarray::Array2::<i32>::from_elem((2, 16), 7));
        let run = |m: &str| {
            let out = repo
                .model(m)
                .unwrap()
                .infer([("INPUT0", a.clone()), ("INPUT1", b.clone())])
                .unwrap();
            (
                out.get("OUTPUT0")
                    .unwrap()
                    .view::<i32>()
                    .unwrap()
                    .to_owned(),
                out.get("OUTPUT1")
                    .unwrap()
                    .view::<i32>()
                    .unwrap()
                    .to_owned(),
            )
        };
        assert_eq!(run("gpu"), run("cpu"), "on {target:?}");
        let r = repo.model("gpu").unwrap().execution_report().unwrap();
        assert_eq!((r.launches, r.cpu_islands), (0, 1), "{r:?}");
    }
}

#[test]
fn element_wise_chains_are_one_launch() {
    for target in targets() {
        // A folded batch norm and a hard-swish-like tail: x*s + t, then relu, then * x again
        // (x read twice), then sigmoid: one pointwise launch, x read once per element.
        let op = OneOp::new("Mul", vec![("x", vec![2, 3, 4, 5])])
            .weight("s", random(&[1, 3, 1, 1], 8))
            .extra_weight("t", random(&[1, 3, 1, 1], 9))
            .then_with("Add", "t")
            .then("Relu")
            .then_with("Mul", "x")
            .then("Sigmoid");
        let folder = op.folder(None, &[2, 3, 4, 5]);
        let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
        let x = vec![("x".to_string(), random(&[2, 3, 4, 5], 10))];
        compare(
            &repo,
            &x,
            1e-6,
            1e-6,
            &format!("pointwise chain on {target:?}"),
        );
        let r = repo.model("gpu").unwrap().execution_report().unwrap();
        assert_eq!(r.launches, 1, "{r:?}");
        assert_eq!(r.kernels.get("pointwise_f32"), Some(&1), "{r:?}");
        assert_eq!(r.fused_nodes, 4, "{r:?}");

        // Channels last, few of them (EAST's geometry head): per-channel operands repeat
        // one short row for every pixel, which the CPU walk tiles into long rows.
        let op = OneOp::new("Add", vec![("x", vec![2, 5, 40, 4])])
            .weight("b", random(&[4], 11))
            .extra_weight("s", random(&[1, 1, 1, 4], 12))
            .then("Sigmoid")
            .then_with("Mul", "s")
            .then_with("Mul", "x");
        let folder = op.folder(None, &[2, 5, 40, 4]);
        let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
        let x = vec![("x".to_string(), random(&[2, 5, 40, 4], 13))];
        compare(
            &repo,
            &x,
            1e-6,
            1e-6,
            &format!("channels-last chain on {target:?}"),
        );
        let r = repo.model("gpu").unwrap().execution_report().unwrap();
        assert_eq!(r.kernels.get("pointwise_f32"), Some(&1), "{r:?}");
    }
}

#[test]
fn an_lstm_runs_as_a_cpu_island_between_gpu_nodes() {
    // tract turns an ONNX LSTM into a Scan, which keeps state: no kernel, and it only runs
    // inside a tract plan. Sigmoid after it stays on the GPU.
    for target in targets() {
        let op = OneOp::new("LSTM", vec![("x", vec![5, 2, 3])])
            .weight("w", random(&[1, 16, 3], 1))
            .weight("r", random(&[1, 16, 4], 2))
            .weight("b", random(&[1, 32], 3))
            .attr(attr_int("hidden_size", 4))
            .then("Sigmoid");
        let folder = op.folder(None, &[5, 1, 2, 4]);
        let (_tmp, repo) = cpu_and_gpu(folder.path(), target);
        let x = vec![("x".to_string(), random(&[5, 2, 3], 4))];
        compare(&repo, &x, 1e-5, 1e-5, &format!("LSTM on {target:?}"));
        let r = repo.model("gpu").unwrap().execution_report().unwrap();
        assert!(r.cpu_islands >= 1 && !r.cpu_nodes.is_empty(), "{r:?}");
        assert!(r.launches >= 1, "{r:?}");
    }
}

#[test]
fn the_native_engine_answers_the_same_on_any_number_of_threads() {
    // Threads split GEMM panels (or rows), depthwise planes and element-wise ranges; every
    // output element is summed in the same order whatever the split, so the answers are
    // identical. A batch of 5 runs image by image, the images side by side (3 threads: one
    // image on each, then the 2 left over on all 3 threads; 2: 2 rounds, then 1 on both; 1:
    // one after another, 2.5 MB of activations an image), so each image's answer is also
    // exactly the one it gets alone, which runs the threaded kernels.
    let rec = fixtures().join("ocr_repository/text_recognition");
    let tmp = tempfile::tempdir().unwrap();
    for threads in ["1", "2", "3"] {
        let name = format!("t{threads}");
        add_model(tmp.path(), &rec, &name, "KIND_CPU");
        set_engine(tmp.path(), &name, "native");
        add_parameter(tmp.path(), &name, "intra_op_thread_count", threads);
    }
    let repo = Repository::load(tmp.path()).unwrap();
    let input = repo.model("t1").unwrap().config().input[0].name.clone();
    let batch = random(&[5, 3, 48, 320], 5);
    let run = |m: &str, x: &ArrayD<f32>| -> (Vec<f32>, usize) {
        let model = repo.model(m).unwrap();
        let out = model
            .infer([(input.as_str(), Tensor::from(x.clone()))])
            .unwrap();
        let report = model.execution_report().unwrap();
        assert!(report.device.contains("native"), "{m}: {report:?}");
        let (_, t) = out.iter().next().unwrap();
        let values = t.view::<f32>().unwrap().iter().copied().collect();
        (values, report.images_side_by_side)
    };
    let mut alone = Vec::new();
    for i in 0..5 {
        let image = batch
            .slice_axis(ndarray::Axis(0), (i..i + 1).into())
            .to_owned();
        let (t1, _) = run("t1", &image);
        let (t2, apart) = run("t2", &image);
        assert_eq!(apart, 0, "a single image runs as it is");
        assert_eq!(t1, t2, "image {i}: 1 and 2 threads");
        assert_eq!(t1, run("t3", &image).0, "image {i}: 1 and 3 threads");
        alone.extend(t1);
    }
    assert!(alone.len() > 1000);
    for (m, parts) in [("t1", 1), ("t2", 2), ("t3", 3)] {
        let (together, apart) = run(m, &batch);
        assert_eq!(apart, parts, "{m}: the batch ran image by image");
        assert!(
            together == alone,
            "{m}: the batch's images answer as they do alone"
        );
    }
}

/// A batching model whose graph keeps the images of a batch apart runs a batch image by
/// image on the native engine, the images side by side on the threads; one whose graph mixes
/// them (a softmax or a mean over the batch) runs it as one. Both answer what tract's own
/// plan answers for the whole batch, at every batch size (rounds of images, the images left
/// over).
#[test]
fn a_batch_runs_image_by_image_where_the_graph_keeps_the_images_apart() {
    let (conv8, _) = conv([0, 4, 6, 10], 8, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]);
    let (conv4, _) = conv([0, 4, 6, 10], 4, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]);
    let cases: [(&str, OneOp, Vec<i64>, bool); 3] = [
        (
            "conv, flatten, matmul, softmax over the classes",
            conv8
                .clone()
                .then("Relu")
                .then_attrs("Flatten", vec![attr_int("axis", 1)])
                .then_with("MatMul", "w2")
                .extra_weight("w2", random(&[480, 7], 17))
                .then_attrs("Softmax", vec![attr_int("axis", 1)]),
            vec![7],
            true,
        ),
        (
            "softmax over the batch",
            conv8.then_attrs("Softmax", vec![attr_int("axis", 0)]),
            vec![8, 6, 10],
            false,
        ),
        (
            "each image less the batch's mean",
            conv4
                .then_attrs(
                    "ReduceMean",
                    vec![attr_ints("axes", &[0]), attr_int("keepdims", 1)],
                )
                .then_with("Add", "x"),
            vec![4, 6, 10],
            false,
        ),
    ];
    for (what, op, out_dims, apart) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("1")).unwrap();
        std::fs::write(src.join("1/model.onnx"), op.bytes(None)).unwrap();
        std::fs::write(
            src.join("config.pbtxt"),
            format!(
                "backend: \"onnxruntime\"\nmax_batch_size: 8\n\
                 input [ {{ name: \"x\" data_type: TYPE_FP32 dims: [4, 6, 10] }} ]\n\
                 output [ {{ name: \"y\" data_type: TYPE_FP32 dims: {out_dims:?} }} ]\n"
            ),
        )
        .unwrap();
        let repo_dir = tmp.path().join("repo");
        add_model(&repo_dir, &src, "cpu", "KIND_CPU");
        set_engine(&repo_dir, "cpu", "tract");
        add_model(&repo_dir, &src, "gpu", "KIND_CPU");
        set_engine(&repo_dir, "gpu", "native");
        add_parameter(&repo_dir, "gpu", "intra_op_thread_count", "2");
        let repo = Repository::load(&repo_dir).unwrap();
        for batch in [1, 2, 5, 8] {
            let inputs = vec![("x".to_string(), random(&[batch, 4, 6, 10], 3))];
            let what = format!("{what}, batch {batch}");
            compare_with(&repo, &inputs, 1e-4, 1e-4, Scale::Tensor, &what);
            let report = repo.model("gpu").unwrap().execution_report().unwrap();
            let expected = if apart && batch > 1 { 2 } else { 0 };
            assert_eq!(report.images_side_by_side, expected, "{what}: {report:?}");
            assert!(report.cpu_nodes.is_empty(), "{what}: {report:?}");
        }
    }
}

/// Empty tensors (a batch of 0, a MatMul with m = 0) answer the empty tensor the CPU gives, on
/// every target. A GPU refuses a grid with a zero dimension (`CUDA_ERROR_INVALID_VALUE`) and
/// the emulator now checks every launch against sm_90's limits as one would; the lowering
/// emits no launch with an empty grid (today tract folds these empty outputs to constants
/// before the lowering sees them, so no kernel runs here at all).
#[test]
fn empty_tensors_launch_nothing_and_answer_empty() {
    for target in targets() {
        let (op, out) = conv([0, 4, 6, 6], 8, [3, 3], 1, [1, 1], [1, 1, 1, 1], [1, 1]);
        check_op(target, "Conv on a batch of 0", &op, None, &out);
        let mm = OneOp::new("MatMul", vec![("a", vec![2, 0, 9])]).weight("b", random(&[9, 66], 5));
        check_op(target, "MatMul with m = 0", &mm, None, &[2, 0, 66]);
        let mm = OneOp::new("MatMul", vec![("a", vec![0, 5, 9]), ("b", vec![0, 9, 66])]);
        check_op(
            target,
            "batched MatMul over 0 matrices",
            &mm,
            None,
            &[0, 5, 66],
        );
    }
}

/// A GEMM with more than 65,535 row tiles (here 4,194,305 rows: a 1x1 convolution over a
/// 2048x2048 image is this shape) stays on the device: M is on grid.x, whose limit is
/// 2^31 - 1, not on grid.y (65,535). Only planned (at load, the shapes are fixed): running
/// it on the emulator would take minutes; the kernel's indexing is checked on the smaller
/// GEMMs above.
#[test]
fn a_gemm_with_millions_of_rows_is_planned_on_the_device() {
    for target in device_targets() {
        let mm = OneOp::new("MatMul", vec![("a", vec![1, 4_194_305, 2])])
            .weight("b", random(&[2, 17], 3));
        let folder = mm.folder(None, &[1, 4_194_305, 17]);
        let tmp = tempfile::tempdir().unwrap();
        add_model(tmp.path(), folder.path(), "gpu", "KIND_GPU");
        let repo = Repository::builder(tmp.path())
            .cuda_emulator(target == Target::Emulator)
            .load()
            .unwrap();
        let r = repo
            .model("gpu")
            .unwrap()
            .execution_report()
            .expect("fixed shapes: planned at load");
        assert!(r.cpu_nodes.is_empty(), "{target:?}: {r:?}");
        assert!(r.kernels.keys().any(|k| k.starts_with("gemm")), "{r:?}");
    }
}

/// The first thing a GPU run does (`SMOKE_TEST=gpu_smoke`, seconds): the probe, the kernels
/// compiled (or read from the cache) and loaded, one upload, one launch, one download, checked
/// against the answer computed here. On the emulator too, so that it cannot rot.
#[test]
fn gpu_smoke() {
    for target in device_targets() {
        let op = OneOp::new("Relu", vec![("x", vec![3, 257])]);
        let folder = op.folder(None, &[3, 257]);
        let tmp = tempfile::tempdir().unwrap();
        add_model(tmp.path(), folder.path(), "gpu", "KIND_GPU");
        let started = std::time::Instant::now();
        let repo = Repository::builder(tmp.path())
            .cuda_emulator(target == Target::Emulator)
            .load()
            .unwrap_or_else(|e| panic!("{target:?}: {e}"));
        let model = repo.model("gpu").unwrap();
        let x = random(&[3, 257], 1);
        let out = model
            .infer([("x", Tensor::from(x.clone()))])
            .unwrap_or_else(|e| panic!("{target:?}: {e}"));
        let y = out.get("y").unwrap().view::<f32>().unwrap();
        assert_eq!(y, x.mapv(|v| v.max(0.0)), "{target:?}");
        let r = model.execution_report().unwrap();
        assert!(
            r.cpu_nodes.is_empty() && r.launches == 1,
            "{target:?}: {r:?}"
        );
        assert!((r.uploads, r.downloads) == (1, 1), "{target:?}: {r:?}");
        eprintln!(
            "smoke on {target:?} ({}): load + one inference in {:.2} s",
            r.device,
            started.elapsed().as_secs_f64()
        );
    }
}
