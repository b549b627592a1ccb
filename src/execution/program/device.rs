//! Where kernels run: the [`Device`] trait, implemented by the CUDA driver (`CudaDevice`,
//! kernels compiled with NVRTC and cached on disk), by the emulator (the same kernel source
//! compiled by the host C++ compiler) and by the CPU (Rust kernels). The executor only sees
//! this trait, so everything above it is tested without a GPU.

use super::kernels::Kernel;

/// A device address (`CUdeviceptr`, or a host address in the emulator).
pub(crate) type DevPtr = u64;

/// Why a device call failed. The executor maps the kinds to [`crate::ErrorKind`]s: memory
/// to `ResourceExhausted`, everything else to `Execution`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// The driver and compiler variants come from the CUDA devices only.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) enum DeviceError {
    /// Device memory ran out.
    #[error("out of device memory ({bytes} bytes requested{detail})")]
    OutOfMemory { bytes: usize, detail: String },
    /// Page-locked host memory (staging for copies) ran out.
    #[error("out of page-locked host memory ({bytes} bytes requested): {detail}")]
    HostOutOfMemory { bytes: usize, detail: String },
    /// A driver call failed: which, and the driver's code.
    #[error("{call}: {detail}")]
    Driver { call: String, detail: String },
    /// The kernels did not compile (NVRTC, or the emulator's host compiler).
    #[error("{0}")]
    Compile(String),
    /// A node of a GPU plan that runs on the CPU (tract) failed.
    #[error("{0}")]
    Cpu(String),
    /// The executor or a kernel broke one of its own rules (a bug, not the input's fault).
    #[error("{0}")]
    Internal(String),
    /// A fault the device's context does not survive (an illegal address, a trap, a
    /// launch failure): CUDA answers every later call with the same error.
    #[error("{call}: {detail}; the GPU context is lost, restart the process")]
    Fault { call: String, detail: String },
    /// The context was lost to an earlier fault ([`Sticky`] remembers which).
    #[error("the GPU context is lost ({0}); restart the process")]
    Lost(String),
}

/// sm_90's launch limits: a GPU refuses a launch outside them (`CUDA_ERROR_INVALID_VALUE`),
/// so the emulator checks every launch against them, and the lowering emits none with an
/// empty grid (an empty tensor needs no launch).
#[cfg(feature = "cuda")]
pub(crate) fn check_launch(grid: [u32; 3], block: [u32; 3]) -> Result<(), String> {
    const GRID: [u32; 3] = [i32::MAX as u32, 65_535, 65_535];
    const BLOCK: [u32; 3] = [1024, 1024, 64];
    for (d, axis) in ["x", "y", "z"].iter().enumerate() {
        if grid[d] == 0 || grid[d] > GRID[d] {
            return Err(format!(
                "grid {grid:?}: gridDim.{axis} must be 1..={} (CUDA_ERROR_INVALID_VALUE)",
                GRID[d]
            ));
        }
        if block[d] == 0 || block[d] > BLOCK[d] {
            return Err(format!(
                "block {block:?}: blockDim.{axis} must be 1..={} (CUDA_ERROR_INVALID_VALUE)",
                BLOCK[d]
            ));
        }
    }
    let threads = block.iter().map(|&b| b as u64).product::<u64>();
    if threads > 1024 {
        return Err(format!(
            "block {block:?}: {threads} threads, at most 1024 per block (CUDA_ERROR_INVALID_VALUE)"
        ));
    }
    Ok(())
}

/// A failed device call.
pub(crate) type DeviceResult<T> = std::result::Result<T, DeviceError>;

/// How a device runs the images of a batch side by side ([`Device::side_by_side`]): `parts`
/// groups of images at once, each group one image after another on `device`, through `run`,
/// which calls
/// `f(0) .. f(parts − 1)` concurrently and returns when all have returned. With one part
/// (one thread) a batch runs image by image only when its activations (the batch times one
/// image's arena) exceed `alone_above` bytes: the gain is then the caches' alone.
pub(crate) struct SideBySide {
    pub(crate) parts: usize,
    pub(crate) alone_above: usize,
    /// Runs the plans built for this device (its launches on one thread): it shares this
    /// device's memory (weights, arenas) and its streams, so a plan and its instances serve
    /// both.
    pub(crate) device: &'static dyn Device,
    pub(crate) run: fn(usize, &(dyn Fn(usize) + Sync)),
}

/// One device: memory, copies, launches. Calls on one stream run in order; `sync` waits.
pub(crate) trait Device: Send + Sync {
    /// Whether a batch whose graph keeps its images apart runs faster image by image, the
    /// images side by side, than as one batch, operator after operator (a CPU: each image's
    /// activations stay in one core's caches and the cores never wait for each other between
    /// operators). `None`: the batch runs as one (a GPU wants the whole batch in each launch).
    fn side_by_side(&self) -> Option<SideBySide> {
        None
    }

    /// Whether [`Device::upload`] and [`Device::download`] are synchronous copies within host
    /// memory (the CPU device): the executor then copies between the request's tensors and
    /// device memory directly, without a staging buffer (one copy of each input and output
    /// instead of two). The emulator answers `false`: it stands in for CUDA, staging included.
    fn direct_copies(&self) -> bool {
        false
    }

    /// "NVIDIA H200 (sm_90)" or "emulator (host C++)".
    fn describe(&self) -> String;
    /// Device memory, 256-byte aligned.
    fn alloc(&self, bytes: usize) -> DeviceResult<DevPtr>;
    /// Frees what [`Device::alloc`] returned.
    fn free(&self, ptr: DevPtr);
    /// Host memory the device copies from and to fastest (page-locked on CUDA).
    fn alloc_host(&self, bytes: usize) -> DeviceResult<*mut u8>;
    /// Frees what [`Device::alloc_host`] returned.
    fn free_host(&self, ptr: *mut u8, bytes: usize);
    /// A new stream (one per model instance).
    fn new_stream(&self) -> DeviceResult<u64>;
    /// Destroys a stream.
    fn free_stream(&self, stream: u64);
    /// Copies `len` bytes host → device, ordered on `stream`. `src` must stay valid until the
    /// stream is synchronised.
    fn upload(&self, stream: u64, dst: DevPtr, src: *const u8, len: usize) -> DeviceResult<()>;
    /// Copies `len` bytes device → host, ordered on `stream`.
    fn download(&self, stream: u64, src: DevPtr, dst: *mut u8, len: usize) -> DeviceResult<()>;
    /// Launches `kernel` with its parameter struct's bytes.
    fn launch(
        &self,
        stream: u64,
        kernel: Kernel,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[u8],
    ) -> DeviceResult<()>;
    /// Waits for everything queued on `stream`.
    fn sync(&self, stream: u64) -> DeviceResult<()>;
}

/// A device whose first [`DeviceError::Fault`] is final, as a CUDA context's is: every later
/// call answers [`DeviceError::Lost`] naming that fault (frees are skipped), so requests to
/// every model on the device fail clearly instead of naming whichever kernel ran next.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct Sticky<D> {
    inner: D,
    /// The first fault: set once, read lock-free on every call.
    lost: std::sync::OnceLock<String>,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl<D: Device> Sticky<D> {
    pub(crate) fn new(inner: D) -> Self {
        Sticky {
            inner,
            lost: std::sync::OnceLock::new(),
        }
    }

    fn check(&self) -> DeviceResult<()> {
        match self.lost.get() {
            Some(first) => Err(DeviceError::Lost(first.clone())),
            None => Ok(()),
        }
    }

    fn watch<T>(&self, r: DeviceResult<T>) -> DeviceResult<T> {
        if let Err(e @ DeviceError::Fault { .. }) = &r {
            let _ = self.lost.set(e.to_string());
        }
        r
    }

    fn is_lost(&self) -> bool {
        self.lost.get().is_some()
    }

    /// The wrapped device, for tests that need its own parts.
    #[cfg(test)]
    pub(crate) fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: Device> Device for Sticky<D> {
    fn direct_copies(&self) -> bool {
        self.inner.direct_copies()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn alloc(&self, bytes: usize) -> DeviceResult<DevPtr> {
        self.check()?;
        self.watch(self.inner.alloc(bytes))
    }

    fn free(&self, ptr: DevPtr) {
        if !self.is_lost() {
            self.inner.free(ptr)
        }
    }

    fn alloc_host(&self, bytes: usize) -> DeviceResult<*mut u8> {
        self.check()?;
        self.watch(self.inner.alloc_host(bytes))
    }

    fn free_host(&self, ptr: *mut u8, bytes: usize) {
        // Page-locked host memory outlives the context: freeing it stays safe and useful.
        self.inner.free_host(ptr, bytes)
    }

    fn new_stream(&self) -> DeviceResult<u64> {
        self.check()?;
        self.watch(self.inner.new_stream())
    }

    fn free_stream(&self, stream: u64) {
        if !self.is_lost() {
            self.inner.free_stream(stream)
        }
    }

    fn upload(&self, stream: u64, dst: DevPtr, src: *const u8, len: usize) -> DeviceResult<()> {
        self.check()?;
        self.watch(self.inner.upload(stream, dst, src, len))
    }

    fn download(&self, stream: u64, src: DevPtr, dst: *mut u8, len: usize) -> DeviceResult<()> {
        self.check()?;
        self.watch(self.inner.download(stream, src, dst, len))
    }

    fn launch(
        &self,
        stream: u64,
        kernel: Kernel,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[u8],
    ) -> DeviceResult<()> {
        self.check()?;
        self.watch(self.inner.launch(stream, kernel, grid, block, params))
    }

    fn sync(&self, stream: u64) -> DeviceResult<()> {
        self.check()?;
        self.watch(self.inner.sync(stream))
    }
}

/// Host memory standing in for device memory (the emulator's and the CPU device's): aligned,
/// zeroed allocations tracked by address, at most `limit` bytes in all.
pub(crate) struct HostMemory {
    align: usize,
    limit: usize,
    /// (bytes in use, the allocations by address)
    allocations: parking_lot::Mutex<(usize, std::collections::HashMap<u64, std::alloc::Layout>)>,
    /// Where the memory comes from instead of the global allocator (the emulator's guarded
    /// pages).
    raw: Option<RawAlloc>,
}

/// An allocator in place of the global one: `alloc(bytes)` returns zeroed memory aligned to
/// the [`HostMemory`]'s alignment, or null; `free(ptr, bytes)` takes it back.
#[derive(Clone, Copy)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct RawAlloc {
    pub(crate) alloc: unsafe extern "C" fn(usize) -> *mut u8,
    pub(crate) free: unsafe extern "C" fn(*mut u8, usize),
}

impl HostMemory {
    pub(crate) fn new(align: usize, limit: usize) -> HostMemory {
        HostMemory {
            align,
            limit,
            allocations: Default::default(),
            raw: None,
        }
    }

    /// Memory from `raw` instead of the global allocator.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn with_allocator(align: usize, limit: usize, raw: RawAlloc) -> HostMemory {
        HostMemory {
            raw: Some(raw),
            ..HostMemory::new(align, limit)
        }
    }

    pub(crate) fn alloc(&self, bytes: usize) -> DeviceResult<DevPtr> {
        let oom = |detail: String| DeviceError::OutOfMemory { bytes, detail };
        let layout = std::alloc::Layout::from_size_align(bytes.max(self.align), self.align)
            .map_err(|e| oom(format!(": {e}")))?;
        let mut allocations = self.allocations.lock();
        let used = allocations.0;
        if used.saturating_add(layout.size()) > self.limit {
            return Err(oom(format!(", {used} of {} in use", self.limit)));
        }
        // SAFETY: non-zero size; `raw` promises what alloc_zeroed does. Zeroed, so a value
        // never written reads as 0.0.
        let p = match self.raw {
            Some(raw) => unsafe { (raw.alloc)(layout.size()) },
            None => unsafe { std::alloc::alloc_zeroed(layout) },
        };
        if p.is_null() {
            return Err(oom(String::new()));
        }
        allocations.0 += layout.size();
        allocations.1.insert(p as u64, layout);
        Ok(p as u64)
    }

    pub(crate) fn free(&self, ptr: DevPtr) {
        let mut allocations = self.allocations.lock();
        if let Some(layout) = allocations.1.remove(&ptr) {
            allocations.0 -= layout.size();
            // SAFETY: allocated above with this layout, by the same allocator.
            match self.raw {
                Some(raw) => unsafe { (raw.free)(ptr as *mut u8, layout.size()) },
                None => unsafe { std::alloc::dealloc(ptr as *mut u8, layout) },
            }
        }
    }
}

/// The memory half of [`Device`] for a device whose memory is a [`HostMemory`] (field
/// `$mem`): streams are no-ops, copies are `memcpy`s, everything runs in order.
macro_rules! host_memory_methods {
    ($mem:ident) => {
        host_memory_methods!($mem, |_| ());
    };
    // `$on_free` runs with the address before an allocation is freed.
    ($mem:ident, $on_free:expr) => {
        fn alloc(&self, bytes: usize) -> DeviceResult<DevPtr> {
            self.$mem.alloc(bytes)
        }

        fn free(&self, ptr: DevPtr) {
            ($on_free)(ptr);
            self.$mem.free(ptr)
        }

        fn alloc_host(&self, bytes: usize) -> DeviceResult<*mut u8> {
            self.$mem.alloc(bytes).map(|p| p as *mut u8)
        }

        fn free_host(&self, ptr: *mut u8, _bytes: usize) {
            self.$mem.free(ptr as u64)
        }

        fn new_stream(&self) -> DeviceResult<u64> {
            Ok(0)
        }

        fn free_stream(&self, _stream: u64) {}

        fn upload(&self, _s: u64, dst: DevPtr, src: *const u8, len: usize) -> DeviceResult<()> {
            // SAFETY: the executor passes a live host range and an allocation of `len` bytes.
            unsafe { std::ptr::copy_nonoverlapping(src, dst as *mut u8, len) };
            Ok(())
        }

        fn download(&self, _s: u64, src: DevPtr, dst: *mut u8, len: usize) -> DeviceResult<()> {
            // SAFETY: as above.
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst, len) };
            Ok(())
        }

        fn sync(&self, _stream: u64) -> DeviceResult<()> {
            Ok(())
        }
    };
}
pub(crate) use host_memory_methods;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A device for tests: `name`, its second launch faults; counts the calls that reach it.
    pub(crate) struct Faulty {
        name: &'static str,
        launches: AtomicUsize,
        frees: AtomicUsize,
    }

    impl Faulty {
        pub(crate) fn new(name: &'static str) -> Self {
            Faulty {
                name,
                launches: AtomicUsize::new(0),
                frees: AtomicUsize::new(0),
            }
        }
    }

    impl Device for Faulty {
        fn describe(&self) -> String {
            self.name.into()
        }
        fn alloc(&self, _: usize) -> DeviceResult<DevPtr> {
            Ok(256)
        }
        fn free(&self, _: DevPtr) {
            self.frees.fetch_add(1, Ordering::SeqCst);
        }
        fn alloc_host(&self, _: usize) -> DeviceResult<*mut u8> {
            Ok(std::ptr::null_mut())
        }
        fn free_host(&self, _: *mut u8, _: usize) {}
        fn new_stream(&self) -> DeviceResult<u64> {
            Ok(1)
        }
        fn free_stream(&self, _: u64) {}
        fn upload(&self, _: u64, _: DevPtr, _: *const u8, _: usize) -> DeviceResult<()> {
            Ok(())
        }
        fn download(&self, _: u64, _: DevPtr, _: *mut u8, _: usize) -> DeviceResult<()> {
            Ok(())
        }
        fn launch(
            &self,
            _: u64,
            k: Kernel,
            _: [u32; 3],
            _: [u32; 3],
            _: &[u8],
        ) -> DeviceResult<()> {
            if self.launches.fetch_add(1, Ordering::SeqCst) == 1 {
                return Err(DeviceError::Fault {
                    call: format!("launching {}", k.name()),
                    detail: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
                });
            }
            Ok(())
        }
        fn sync(&self, _: u64) -> DeviceResult<()> {
            Ok(())
        }
    }

    #[test]
    fn the_first_fault_loses_the_device_for_every_later_call() {
        let d = Sticky::new(Faulty::new("faulty"));
        let k = Kernel::ALL[0];
        d.launch(0, k, [1; 3], [1; 3], &[]).unwrap();
        d.free(d.alloc(16).unwrap());
        assert_eq!(d.inner.frees.load(Ordering::SeqCst), 1);
        let fault = d.launch(0, k, [1; 3], [1; 3], &[]).unwrap_err();
        assert!(matches!(fault, DeviceError::Fault { .. }), "{fault}");
        // Every later call, of any kind, names the first fault and says what to do.
        let later = [
            d.alloc(16).map(|_| ()).unwrap_err(),
            d.launch(0, k, [1; 3], [1; 3], &[]).unwrap_err(),
            d.upload(0, 256, std::ptr::null(), 0).unwrap_err(),
            d.sync(0).unwrap_err(),
            d.new_stream().map(|_| ()).unwrap_err(),
        ];
        for e in later {
            let text = e.to_string();
            assert!(matches!(e, DeviceError::Lost(_)), "{text}");
            assert!(
                text.contains("CUDA_ERROR_ILLEGAL_ADDRESS") && text.contains("restart the process"),
                "{text}"
            );
        }
        assert_eq!(
            d.inner.launches.load(Ordering::SeqCst),
            2,
            "nothing reached the device"
        );
        d.free(256);
        assert_eq!(
            d.inner.frees.load(Ordering::SeqCst),
            1,
            "no free on a lost context"
        );
    }
}
