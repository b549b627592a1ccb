//! modelyard: run a Triton Inference Server model repository inside the calling process.
//!
//! ```no_run
//! # fn main() -> modelyard::Result<()> {
//! let repo = modelyard::Repository::load("fixtures/tutorial_repository")?;
//! let model = repo.model("text_recognition")?;
//! let crop = ndarray::Array4::<f32>::zeros((1, 1, 32, 100));
//! let out = model.infer([("input.1", modelyard::Tensor::from(crop))])?;
//! let logits = out.get("308").unwrap().view::<f32>()?;
//! assert_eq!(logits.shape(), &[1, 26, 37]);
//! # Ok(()) }
//! ```
//!
//! The folders follow a request, and each names only the ones after it: [`repository`]
//! (scan, versions, lifecycle, model control, ensemble resolution) → [`model`] (handle, input
//! checks, scheduler, statistics, ensemble execution) → backends (ONNX read by tract,
//! Triton's identity test backend, native Rust models) → execution (tract's plans, the
//! lowering to kernel launches, the CUDA device and its emulator) → [`config`] → [`tensor`],
//! errors and small shared rules. `tests/layers.rs` checks the rule.
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
pub mod ocr;
pub mod repository;
pub mod tensor;
mod util;

pub use backend::native::{NativeFactory, NativeModel};
pub use error::{Error, ErrorKind, Result};
pub use model::{
    CancelToken, InferFuture, InferOptions, Model, ModelState, ModelStatistics, Outputs,
};
pub use repository::{IndexEntry, ModelControl, Repository, RepositoryBuilder};
pub use tensor::{Element, Tensor};
