//! `execution/`: what runs a graph once a backend has read it. [`tract`] runs tract's own
//! optimised plans (`engine: "tract"`); [`lower`] turns tract's decluttered graph, at concrete
//! shapes, into a flat program of kernel launches with an arena laid out by liveness and CPU
//! islands for nodes without a kernel; [`program`] holds the kernels' ABI, the `Device` trait
//! and the executor of lowered programs; the devices sit side by side under it: [`cpu`] (Rust
//! kernels over host memory, the default for `KIND_CPU`) and [`cuda`] (the CUDA driver or the
//! host emulator, behind the `cuda` feature).
//!
//! Below the backends, above config/tensor/error/util: nothing here names a backend, a model
//! or the repository.

pub(crate) mod cpu;
pub(crate) mod cuda;
pub(crate) mod lower;
pub(crate) mod program;
pub(crate) mod tract;

use crate::error::Result;
use crate::tensor::Tensor;

pub use program::ExecutionReport;

/// Tensors by name: what a model takes and gives.
pub(crate) type Named = Vec<(String, Tensor)>;

/// One loaded model version, ready to execute.
pub(crate) trait Executable: Send + Sync {
    /// Key/value metadata stored in the model file (ONNX `metadata_props`).
    fn metadata(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        None
    }

    /// Where the nodes ran and the host-device copies, for a model on a GPU.
    fn execution_report(&self) -> Option<ExecutionReport> {
        None
    }

    /// For a model on a GPU: the time of `iters` rounds of its kernels at these input shapes,
    /// without host copies (benchmarks).
    fn time_kernels(
        &self,
        _shapes: &[Vec<usize>],
        _iters: u32,
    ) -> Option<Result<std::time::Duration>> {
        None
    }

    /// Runs the model. `inputs` are checked and shaped as the backend expects (reshape
    /// applied); `outputs` names the outputs wanted (non-empty).
    fn execute(&self, inputs: Named, outputs: &[String]) -> Result<Named>;
}
