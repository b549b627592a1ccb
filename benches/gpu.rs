//! The CUDA backend, side by side in one run (issue 4): our kernels on EAST's convolution
//! shapes (GFLOP/s, device time only: `Model::time_gpu_kernels` syncs the stream before the
//! clock stops), sigmoid against a plain copy (GB/s), and whole models end to end (input
//! upload to output download) for the tutorial EAST at 1x480x640x3, STR at 1x1x32x100 and
//! PaddleOCR det (1x3x480x640) / rec (1x3x48x320): modelyard on the GPU, tract on the CPU
//! (modelyard KIND_CPU) and, with `--features bench-tract-cuda`, tract-cuda 0.23 (its CUDA
//! runtime on the same decluttered model; cuDNN convolutions) as the anchor, and with
//! `--features bench-cudnn` cuDNN's own fp32 convolution on each conv shape (kernel only, the
//! anchor of the "conv >= 50 % of cuDNN" target).
//!
//! Without a GPU it prints a notice and measures nothing: absolute GPU times only mean
//! something on a GPU. On a GPU machine: `../shared/gpu/make-bundle.sh --bench gpu`, then
//! `bash .gpu-bundle/run.sh` there (FEATURES="cuda,bench-tract-cuda" for the tract-cuda rows).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/onnx_builder.rs"]
mod onnx_builder;

use std::path::Path;
use std::time::Duration;

use common::fixtures;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use modelyard::{Repository, Tensor};
use ndarray::ArrayD;
use onnx_builder::{add_model, attr_int, attr_ints, random, OneOp};

fn gpu_present() -> bool {
    match modelyard::gpu::probe() {
        Ok(info) => {
            eprintln!("GPU: {:?}, driver {}", info.devices, info.driver_version);
            true
        }
        Err(why) => {
            eprintln!("NOTICE: no GPU ({why}): the GPU benchmarks measure nothing here");
            false
        }
    }
}

/// A repository holding `src` twice: `gpu` (KIND_GPU) and `cpu` (KIND_CPU).
fn repo_of(src: &Path) -> (tempfile::TempDir, Repository) {
    let tmp = tempfile::tempdir().unwrap();
    add_model(tmp.path(), src, "gpu", "KIND_GPU");
    add_model(tmp.path(), src, "cpu", "KIND_CPU");
    let repo = Repository::builder(tmp.path()).load().unwrap();
    (tmp, repo)
}

#[cfg(feature = "bench-tract-cuda")]
mod tract_cuda_rows {
    use tract_onnx::prelude::*;

    /// tract-cuda's runtime on the model at `path`, decluttered at `shape`.
    pub fn runnable(path: &std::path::Path, shape: &[usize]) -> Option<Box<dyn Runnable>> {
        // Links tract-cuda in, so that its runtime registers itself.
        let _ = std::any::type_name::<tract_cuda::CudaTransform>();
        let go = || -> TractResult<Box<dyn Runnable>> {
            let mut m = tract_onnx::onnx().model_for_path(path)?;
            m.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))?;
            let typed = m.into_typed()?.into_decluttered()?;
            let rt = runtime_for_name("cuda")?.ok_or_else(|| TractError::msg("no cuda runtime"))?;
            rt.prepare(typed)
        };
        match go() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("tract-cuda could not prepare {}: {e:#}", path.display());
                None
            }
        }
    }

    /// `input` as tract's value, built once outside the timed loop (a clone shares the data,
    /// as `modelyard::Tensor`'s does in the rows beside it).
    pub fn input(input: &ndarray::ArrayD<f32>) -> TValue {
        let t: Tensor =
            tract_ndarray::ArrayD::from_shape_vec(input.shape(), input.iter().copied().collect())
                .unwrap()
                .into();
        t.into_tvalue()
    }

    pub fn run(r: &dyn Runnable, input: &TValue) {
        r.run(tvec!(input.clone())).unwrap();
    }
}

#[cfg(feature = "bench-cudnn")]
mod cudnn_rows {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use cudarc::cudnn::{
        sys, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor, TensorDescriptor,
    };
    use cudarc::driver::{CudaContext, CudaSlice, CudaStream};

    /// One cuDNN convolution (fp32, FMA math: no TF32 tensor cores, like our kernels), its
    /// buffers and the algorithm cuDNN's heuristics pick.
    pub struct Conv {
        stream: Arc<CudaStream>,
        _cudnn: Arc<Cudnn>,
        xd: TensorDescriptor<f32>,
        wd: FilterDescriptor<f32>,
        yd: TensorDescriptor<f32>,
        conv: ConvDescriptor<f32>,
        x: CudaSlice<f32>,
        w: CudaSlice<f32>,
        y: CudaSlice<f32>,
        ws: Option<CudaSlice<u8>>,
        algo: sys::cudnnConvolutionFwdAlgo_t,
    }

    fn e(what: &str, err: impl std::fmt::Debug) -> String {
        format!("{what}: {err:?}")
    }

    impl Conv {
        pub fn new(x: [usize; 4], co: usize, k: usize, s: i64, p: i64) -> Result<Conv, String> {
            // SAFETY: only tries to open the library.
            if !unsafe { cudarc::cudnn::sys::is_culib_present() } {
                return Err("libcudnn not found (add its folder to LD_LIBRARY_PATH)".into());
            }
            let i = |v: usize| v as i32;
            let oh = (x[2] as i64 + 2 * p - k as i64) / s + 1;
            let ow = (x[3] as i64 + 2 * p - k as i64) / s + 1;
            let ctx = CudaContext::new(0).map_err(|err| e("context", err))?;
            let stream = ctx.default_stream();
            let cudnn = Cudnn::new(stream.clone()).map_err(|err| e("cudnn", err))?;
            let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
            let xd = cudnn
                .create_4d_tensor::<f32>(nchw, [i(x[0]), i(x[1]), i(x[2]), i(x[3])])
                .map_err(|err| e("x", err))?;
            let wd = cudnn
                .create_4d_filter::<f32>(nchw, [i(co), i(x[1]), i(k), i(k)])
                .map_err(|err| e("w", err))?;
            let yd = cudnn
                .create_4d_tensor::<f32>(nchw, [i(x[0]), i(co), oh as i32, ow as i32])
                .map_err(|err| e("y", err))?;
            let mut conv = cudnn
                .create_conv2d::<f32>(
                    [p as i32, p as i32],
                    [s as i32, s as i32],
                    [1, 1],
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                )
                .map_err(|err| e("conv", err))?;
            conv.set_math_type(sys::cudnnMathType_t::CUDNN_FMA_MATH)
                .map_err(|err| e("math", err))?;
            let alloc = |n: usize| stream.alloc_zeros::<f32>(n).map_err(|err| e("alloc", err));
            let xs = alloc(x.iter().product())?;
            let ws_ = alloc(co * x[1] * k * k)?;
            let ys = alloc(x[0] * co * (oh * ow) as usize)?;
            let op = ConvForward {
                conv: &conv,
                x: &xd,
                w: &wd,
                y: &yd,
            };
            let algo = op.pick_algorithm().map_err(|err| e("algorithm", err))?;
            let bytes = op
                .get_workspace_size(algo)
                .map_err(|err| e("workspace", err))?;
            let ws = if bytes > 0 {
                Some(
                    stream
                        .alloc_zeros::<u8>(bytes)
                        .map_err(|err| e("workspace", err))?,
                )
            } else {
                None
            };
            Ok(Conv {
                stream,
                _cudnn: cudnn,
                xd,
                wd,
                yd,
                conv,
                x: xs,
                w: ws_,
                y: ys,
                ws,
                algo,
            })
        }

        /// `iters` convolutions, the stream synchronised before the clock stops.
        pub fn time(&mut self, iters: u64) -> Result<Duration, String> {
            let Conv {
                stream,
                xd,
                wd,
                yd,
                conv,
                x,
                w,
                y,
                ws,
                algo,
                ..
            } = self;
            let op = ConvForward {
                conv,
                x: xd,
                w: wd,
                y: yd,
            };
            stream.synchronize().map_err(|err| e("sync", err))?;
            let started = Instant::now();
            for _ in 0..iters {
                // SAFETY: the buffers match the descriptors they were sized from.
                unsafe { op.launch(*algo, ws.as_mut(), (1.0, 0.0), x, w, y) }
                    .map_err(|err| e("launch", err))?;
            }
            stream.synchronize().map_err(|err| e("sync", err))?;
            Ok(started.elapsed())
        }
    }
}

/// (name, input NCHW, output channels, kernel, stride, padding)
type Layer = (&'static str, [usize; 4], usize, usize, i64, i64);

/// Our kernels vs the CPU on the convolution shapes of EAST (tutorial architecture) at
/// 480x640, plus two wider layers of the PaddleOCR detector's size.
fn conv_kernels(c: &mut Criterion) {
    if !gpu_present() {
        return;
    }
    let layers: [Layer; 9] = [
        ("east conv1 7x7/2 3-8", [1, 3, 480, 640], 8, 7, 2, 3),
        ("east conv2 3x3 8-16", [1, 8, 120, 160], 16, 3, 1, 1),
        ("east conv3 3x3/2 16-24", [1, 16, 120, 160], 24, 3, 2, 1),
        ("east conv4 3x3/2 24-32", [1, 24, 60, 80], 32, 3, 2, 1),
        ("east merge 3x3 32-32", [1, 32, 30, 40], 32, 3, 1, 1),
        ("east merge 3x3 24-24", [1, 24, 60, 80], 24, 3, 1, 1),
        ("east merge 3x3 16-16", [1, 16, 120, 160], 16, 3, 1, 1),
        ("wide 3x3 64-64", [1, 64, 120, 160], 64, 3, 1, 1),
        ("wide 3x3 96-96", [1, 96, 60, 80], 96, 3, 1, 1),
    ];
    let mut g = c.benchmark_group("gpu/conv");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for (name, x, co, k, s, p) in layers {
        let op = OneOp::new("Conv", vec![("x", x.to_vec())])
            .weight("w", random(&[co, x[1], k, k], 1))
            .weight("b", random(&[co], 2))
            .attr(attr_ints("kernel_shape", &[k as i64, k as i64]))
            .attr(attr_ints("strides", &[s, s]))
            .attr(attr_ints("pads", &[p, p, p, p]))
            .attr(attr_int("group", 1));
        let oh = (x[2] as i64 + 2 * p - k as i64) / s + 1;
        let ow = (x[3] as i64 + 2 * p - k as i64) / s + 1;
        let out = [x[0], co, oh as usize, ow as usize];
        let flops = 2 * co * x[1] * k * k * out[2] * out[3];
        let folder = op.folder(None, &out);
        let (_tmp, repo) = repo_of(folder.path());
        g.throughput(Throughput::Elements(flops as u64));
        let gpu = repo.model("gpu").unwrap();
        g.bench_function(BenchmarkId::new("modelyard kernel", name), |b| {
            b.iter_custom(|iters| {
                gpu.time_gpu_kernels(&[x.to_vec()], iters as u32)
                    .unwrap()
                    .unwrap()
            })
        });
        #[cfg(feature = "bench-cudnn")]
        match std::panic::catch_unwind(|| cudnn_rows::Conv::new(x, co, k, s, p)) {
            Ok(Ok(mut conv)) => {
                g.bench_function(BenchmarkId::new("cudnn fp32", name), |b| {
                    b.iter_custom(|iters| conv.time(iters).unwrap())
                });
            }
            Ok(Err(why)) => eprintln!("cuDNN row skipped for {name}: {why}"),
            Err(_) => eprintln!("cuDNN row skipped for {name}: cudarc panicked"),
        }
        let input = Tensor::from(random(&x, 3));
        let cpu = repo.model("cpu").unwrap();
        g.bench_function(BenchmarkId::new("tract cpu", name), |b| {
            b.iter(|| cpu.infer([("x", input.clone())]).unwrap())
        });
        #[cfg(feature = "bench-tract-cuda")]
        if let Some(r) = tract_cuda_rows::runnable(&folder.path().join("1/model.onnx"), &x) {
            let a = tract_cuda_rows::input(&random(&x, 3));
            g.bench_function(BenchmarkId::new("tract-cuda incl. copies", name), |b| {
                b.iter(|| tract_cuda_rows::run(r.as_ref(), &a))
            });
        }
    }
    g.finish();
}

/// Sigmoid and ReLU (read + write) against a plain copy (a Concat of two inputs), in GB/s.
fn memory_bound(c: &mut Criterion) {
    if !gpu_present() {
        return;
    }
    let n = 1usize << 24;
    let mut g = c.benchmark_group("gpu/elementwise");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes((n * 8) as u64));
    for op in ["Sigmoid", "Relu"] {
        let one = OneOp::new(op, vec![("x", vec![n])]);
        let folder = one.folder(None, &[n]);
        let (_tmp, repo) = repo_of(folder.path());
        let gpu = repo.model("gpu").unwrap();
        g.bench_function(BenchmarkId::new("modelyard kernel", op), |b| {
            b.iter_custom(|iters| {
                gpu.time_gpu_kernels(&[vec![n]], iters as u32)
                    .unwrap()
                    .unwrap()
            })
        });
    }
    let concat = OneOp::new("Concat", vec![("a", vec![n / 2]), ("b", vec![n / 2])])
        .attr(attr_int("axis", 0));
    let folder = concat.folder(None, &[n]);
    let (_tmp, repo) = repo_of(folder.path());
    let gpu = repo.model("gpu").unwrap();
    g.bench_function(BenchmarkId::new("modelyard kernel", "copy (Concat)"), |b| {
        b.iter_custom(|iters| {
            gpu.time_gpu_kernels(&[vec![n / 2], vec![n / 2]], iters as u32)
                .unwrap()
                .unwrap()
        })
    });
    g.finish();
}

/// Whole models, end to end, one request at a time.
fn models(c: &mut Criterion) {
    if !gpu_present() {
        return;
    }
    let cases: [(&str, &str, &str, Vec<usize>); 4] = [
        (
            "EAST 480x640",
            "tutorial_repository/text_detection",
            "input_images:0",
            vec![1, 480, 640, 3],
        ),
        (
            "STR 32x100",
            "tutorial_repository/text_recognition",
            "input.1",
            vec![1, 1, 32, 100],
        ),
        (
            "PaddleOCR det 480x640",
            "ocr_repository/text_detection",
            "x",
            vec![1, 3, 480, 640],
        ),
        (
            "PaddleOCR rec 48x320",
            "ocr_repository/text_recognition",
            "x",
            vec![1, 3, 48, 320],
        ),
    ];
    let mut g = c.benchmark_group("gpu/model");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for (name, folder, input, shape) in cases {
        let src = fixtures().join(folder);
        let (_tmp, repo) = repo_of(&src);
        let x: ArrayD<f32> = random(&shape, 5);
        let t = Tensor::from(x.clone());
        let gpu = repo.model("gpu").unwrap();
        gpu.infer([(input, t.clone())]).unwrap();
        if let Some(r) = gpu.execution_report() {
            eprintln!("{name}: {r:?}");
        }
        g.bench_function(BenchmarkId::new("modelyard gpu", name), |b| {
            b.iter(|| gpu.infer([(input, t.clone())]).unwrap())
        });
        g.bench_function(BenchmarkId::new("modelyard gpu kernels only", name), |b| {
            b.iter_custom(|iters| {
                gpu.time_gpu_kernels(std::slice::from_ref(&shape), iters as u32)
                    .unwrap()
                    .unwrap()
            })
        });
        let cpu = repo.model("cpu").unwrap();
        g.bench_function(BenchmarkId::new("tract cpu", name), |b| {
            b.iter(|| cpu.infer([(input, t.clone())]).unwrap())
        });
        #[cfg(feature = "bench-tract-cuda")]
        if let Some(r) = tract_cuda_rows::runnable(&src.join("1/model.onnx"), &shape) {
            let x = tract_cuda_rows::input(&x);
            g.bench_function(BenchmarkId::new("tract-cuda", name), |b| {
                b.iter(|| tract_cuda_rows::run(r.as_ref(), &x))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, conv_kernels, memory_bound, models);
criterion_main!(benches);
