//! modelyard: run a Triton Inference Server model repository inside the calling process.
//!
//! The folder `tritonserver --model-repository` would serve (`<repo>/<model>/config.pbtxt`,
//! `<repo>/<model>/<version>/model.onnx`) is loaded as it is: Triton's config schema,
//! normalisation, validation and error texts, versions, instance groups, dynamic batching,
//! ensembles, model control and statistics. ONNX graphs are read by tract and run by
//! modelyard's own CPU kernels (or its CUDA kernels for `KIND_GPU`). [`Repository`] and
//! [`Model`] are `Send + Sync`; [`Model::infer`] takes `&self`.
//!
//! # Load, pick a model, infer
//!
//! ```no_run
//! # fn main() -> modelyard::Result<()> {
//! use modelyard::{ndarray::Array4, Repository, Tensor};
//!
//! let repo = Repository::load("model_repository")?; // the folder Triton would serve
//! let model = repo.model("text_recognition")?; // its latest ready version
//! let crop = Array4::<f32>::zeros((1, 1, 32, 100));
//! let out = model.infer([("input.1", Tensor::from(crop))])?;
//! let logits = out.get("308").expect("declared in config.pbtxt").view::<f32>()?;
//! assert_eq!(logits.shape(), &[1, 26, 37]);
//! # Ok(()) }
//! ```
//!
//! The same, run: a repository written on the spot, with one model whose backend is Rust code
//! ([`NativeModel`], registered with [`RepositoryBuilder::native_backend`]), beside which
//! ONNX models load the same way.
//!
//! ```
//! # fn main() -> modelyard::Result<()> {
//! use modelyard::{ndarray::arr1, NativeModel, Repository, Tensor};
//!
//! struct Double;
//! impl NativeModel for Double {
//!     fn execute(
//!         &self,
//!         inputs: &[(String, Tensor)],
//!         _outputs: &[String],
//!     ) -> modelyard::Result<Vec<(String, Tensor)>> {
//!         let x = inputs[0].1.view::<f32>()?;
//!         Ok(vec![("Y".into(), Tensor::from(x.mapv(|v| 2.0 * v)))])
//!     }
//! }
//!
//! let root = std::env::temp_dir().join(format!("modelyard-doc-{}", std::process::id()));
//! std::fs::create_dir_all(root.join("double/1"))?;
//! std::fs::write(
//!     root.join("double/config.pbtxt"),
//!     r#"backend: "double" max_batch_size: 0
//!        input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
//!        output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]"#,
//! )?;
//! let repo = Repository::builder(&root)
//!     .native_backend("double", |_config| Ok(Box::new(Double) as Box<dyn NativeModel>))
//!     .load()?;
//! let out = repo.model("double")?.infer([("X", Tensor::from(arr1(&[1.5f32, -2.0])))])?;
//! assert_eq!(out.get("Y").unwrap().view::<f32>()?.as_slice(), Some(&[3.0f32, -4.0][..]));
//! # std::fs::remove_dir_all(&root)?;
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! Every fallible call returns [`Error`]: Triton's message text where Triton has one, the
//! model, version and tensor it concerns ([`Error::model`], [`Error::version`],
//! [`Error::tensor`]), and an [`ErrorKind`] to branch on ([`ErrorKind::triton_code`] gives
//! Triton's status code for it). Bad input is an error, never a panic.
//!
//! ```
//! # fn main() -> modelyard::Result<()> {
//! use modelyard::{ErrorKind, Repository};
//!
//! let empty = std::env::temp_dir().join(format!("modelyard-doc-err-{}", std::process::id()));
//! std::fs::create_dir_all(&empty)?;
//! let repo = Repository::load(&empty)?;
//! let e = repo.model("text_detection").unwrap_err();
//! assert_eq!(e.kind(), ErrorKind::NotFound);
//! assert_eq!(e.model(), Some("text_detection"));
//! # std::fs::remove_dir_all(&empty)?;
//! # Ok(()) }
//! ```
//!
//! | kind | when |
//! |---|---|
//! | [`Parse`](ErrorKind::Parse) | `config.pbtxt` is not protobuf text format |
//! | [`InvalidConfig`](ErrorKind::InvalidConfig) | the config breaks one of Triton's rules |
//! | [`InvalidInput`](ErrorKind::InvalidInput) | a request's tensors do not match the model |
//! | [`NotFound`](ErrorKind::NotFound) / [`Unavailable`](ErrorKind::Unavailable) | no such model or version / not ready |
//! | [`Unsupported`](ErrorKind::Unsupported) | a config or graph feature modelyard does not implement |
//! | [`ModelFile`](ErrorKind::ModelFile) / [`Io`](ErrorKind::Io) | a missing, malformed or hostile model file / a file-system error |
//! | [`DataType`](ErrorKind::DataType) | a tensor viewed as the wrong element type |
//! | [`Execution`](ErrorKind::Execution) | the engine failed while running |
//! | [`ResourceExhausted`](ErrorKind::ResourceExhausted) | a size or memory limit |
//! | [`Cancelled`](ErrorKind::Cancelled) / [`TimedOut`](ErrorKind::TimedOut) | the caller dropped the request / it waited past its queue timeout |
//!
//! # Features
//!
//! | feature | default | what it adds | what it pulls in |
//! |---|---|---|---|
//! | `ocr` | yes | the [`ocr`] module: EAST and DB detectors, crops, CTC decoding, the photo-to-text pipeline of the `east_ocr` example | `image`, `imageproc` |
//! | `cuda` | yes | `KIND_GPU` models on modelyard's CUDA kernels; [`gpu::probe`] | `cudarc`, `libloading`; libcuda and libnvrtc (CUDA 13) are loaded at run time, so it builds and runs without CUDA (a `KIND_GPU` model then fails to load with a clear error) |
//! | `server` | no | the [`server`] module and the `modelyard serve` binary: Triton's HTTP/REST, gRPC and metrics endpoints | `tokio`, `hyper`, `tonic`, `serde_json`, `flate2` |
//! | `bench-ort` | no | ONNX Runtime beside modelyard in `benches/cpu.rs` | `ort` (loads `ORT_DYLIB_PATH` at run time) |
//! | `bench-tract-cuda` | no | tract's own CUDA runtime in `benches/gpu.rs` | `tract-cuda` |
//! | `bench-cudnn` | no | cuDNN's convolution in `benches/gpu.rs` | cudarc's `cudnn` |
//!
//! `default-features = false` gives the repository, the models and the native CPU engine with
//! neither OCR nor CUDA compiled in. [`gpu::probe`] still answers there (no GPU).
//!
//! # Layout
//!
//! The folders follow a request, and each names only the ones after it: [`repository`]
//! (scan, versions, lifecycle, model control, ensemble resolution) → [`model`] (handle, input
//! checks, scheduler, statistics, ensemble execution) → backends (ONNX read by tract,
//! Triton's identity test backend, native Rust models) → execution (tract's plans, the
//! lowering to kernel launches, the native CPU device, the CUDA device and its emulator) →
//! [`config`] → [`tensor`], errors and small shared rules. `tests/layers.rs` checks the rule.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(missing_docs)]

mod backend;
pub mod config;
mod error;
mod execution;
/// What CUDA devices this machine has ([`gpu::probe`]; never panics without CUDA).
pub mod gpu {
    pub use crate::execution::cuda::{emulator, probe, GpuDevice, GpuInfo};
    pub use crate::execution::ExecutionReport;
}
pub mod model;
#[cfg(feature = "ocr")]
#[cfg_attr(docsrs, doc(cfg(feature = "ocr")))]
pub mod ocr;
pub mod repository;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
pub mod tensor;
mod util;

pub use backend::native::{NativeFactory, NativeModel};
pub use error::{Error, ErrorKind, Result};
pub use model::{
    CancelToken, InferFuture, InferOptions, Model, ModelState, ModelStatistics, Outputs,
};
pub use repository::{IndexEntry, ModelControl, Repository, RepositoryBuilder};
pub use tensor::{Element, Tensor};

/// The `half` crate (2) whose `f16` is the element type of `TYPE_FP16` tensors.
pub use half;
/// The `ndarray` crate (0.17) that [`Tensor`] converts from and [`Tensor::view`] returns,
/// re-exported so a user names the same version without a dependency of their own.
pub use ndarray;
