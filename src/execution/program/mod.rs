//! The lowered program's device-neutral half: the kernels' ABI ([`kernels`]: names,
//! parameter structs, codes, checked against `kernels/*.cu`), the [`device::Device`] trait a
//! device implements (CUDA in [`super::cuda`], the CPU in [`super::cpu`]), host memory for
//! the devices that use it, and the executor of lowered programs. Nothing here needs CUDA, so
//! the native CPU engine builds without the `cuda` feature.

pub(crate) mod device;
pub(crate) mod executor;
pub(crate) mod kernels;
pub(crate) mod retype;

/// Where the nodes of a GPU plan run and what crosses between host and device per inference
/// ([`crate::Model::execution_report`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionReport {
    /// The device ("NVIDIA H200 (sm_90)", or the emulator).
    pub device: String,
    /// Nodes run by our kernels (fused activations and free reshapes included).
    pub gpu_nodes: usize,
    /// Nodes that ran on the CPU, as "name (operator)".
    pub cpu_nodes: Vec<String>,
    /// Runs of consecutive CPU nodes compiled together as one optimised tract sub-model.
    pub cpu_islands: usize,
    /// Activations fused into the convolution or GEMM before them.
    pub fused_nodes: usize,
    /// Kernel launches per inference.
    pub launches: usize,
    /// Launches per inference by kernel name (`conv2d_narrow_f32`, `gemm_f32`, …).
    pub kernels: std::collections::BTreeMap<String, usize>,
    /// Host→device copies per inference, model inputs included.
    pub uploads: usize,
    /// Device→host copies per inference, model outputs included.
    pub downloads: usize,
    /// Copies between the input upload and the output download (CPU fallbacks cause them).
    pub intermediate_copies: usize,
    /// Bytes of weights the plan reads on the device.
    pub weight_bytes: usize,
    /// Bytes of weights uploaded when this plan was built (the others were already there
    /// for another input shape).
    pub uploaded_weight_bytes: usize,
    /// Bytes of the activation arena an execution uses (taken from the model's arenas, which
    /// the plans of every input shape share).
    pub arena_bytes: usize,
    /// Bytes of page-locked host memory each instance holds for its copies: the slots of the
    /// copies between two stream synchronisations (the run synchronises before each CPU
    /// step) share it, so it is the largest such group, not the sum of every copy.
    pub staging_bytes: usize,
    /// How the last batch of a batching model ran on a CPU whose graph keeps its images
    /// apart: the groups of images that ran side by side, each on its own core, one image
    /// after another (1: image by image on one thread); 0 when the batch ran as one.
    pub images_side_by_side: usize,
}
