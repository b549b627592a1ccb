//! The CUDA driver device (cudarc + NVRTC, compiled cubins cached on disk).

use std::path::PathBuf;

/// Where compiled kernels are kept: `MODELYARD_KERNEL_CACHE`, else `$XDG_CACHE_HOME/modelyard`
/// or `~/.cache/modelyard`, else the temporary directory.
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MODELYARD_KERNEL_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("modelyard");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("modelyard");
    }
    std::env::temp_dir().join("modelyard")
}

/// Writes `bytes` to `path` atomically (a temporary file renamed), so that two processes
/// compiling at once never read half a file.
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The file of the loaded shared library whose name starts with `prefix`, from
/// `/proc/self/maps` (Linux), for error messages: which libcuda or libnvrtc was found.
#[cfg(feature = "cuda")]
pub(crate) fn loaded_library(prefix: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| {
            std::path::Path::new(path)
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(prefix) && f.contains(".so"))
        })
        .map(str::to_string)
}

#[cfg(feature = "cuda")]
pub(crate) use cuda_impl::CudaDevice;

#[cfg(feature = "cuda")]
pub(crate) mod cuda_impl {
    use std::collections::HashMap;
    use std::ffi::c_void;

    use cudarc::driver::{result, sys};
    use cudarc::nvrtc;

    use super::{cache_dir, loaded_library, write_atomically};
    use crate::execution::program::device::{DevPtr, Device, DeviceError, DeviceResult};
    use crate::execution::program::kernels::{self, Kernel};

    /// Statistics of the kernel cache, for tests: (compiled, read from the cache).
    pub(crate) static COMPILES: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    /// NVRTC's options for `arch`: part of the cache key, so that a change here never reads
    /// a cubin built with others.
    pub(crate) fn nvrtc_options(arch: &str) -> Vec<String> {
        vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".to_string(),
        ]
    }

    /// NVRTC's version (major, minor).
    pub(crate) fn nvrtc_version() -> DeviceResult<(i32, i32)> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two out-parameters.
        let r = unsafe { nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        if r != nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(DeviceError::Compile(format!("nvrtcVersion: {r:?}")));
        }
        Ok((major, minor))
    }

    /// What the probe asks of NVRTC before a device is used: CUDA 13 (an unversioned
    /// `libnvrtc.so` of another toolkit can be found first), and an empty program that
    /// compiles, which needs `libnvrtc-builtins.so.13.*` beside it. `Err` says which.
    pub(crate) fn nvrtc_check() -> Result<(i32, i32), String> {
        let (major, minor) = nvrtc_version().map_err(|e| e.to_string())?;
        if major != 13 {
            return Err(format!(
                "the libnvrtc found is NVRTC {major}.{minor}{}, CUDA 13 is needed \
                 (put CUDA 13's lib folder first on LD_LIBRARY_PATH)",
                loaded_library("libnvrtc")
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            ));
        }
        let src = c"extern \"C\" __global__ void modelyard_probe() {}";
        let prog = nvrtc::result::create_program(src, None)
            .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
        // SAFETY: `prog` was just created and is destroyed below.
        let compiled = unsafe { nvrtc::result::compile_program::<&str>(prog, &[]) };
        // SAFETY: as above.
        let _ = unsafe { nvrtc::result::destroy_program(prog) };
        compiled.map_err(|e| {
            format!(
                "NVRTC {major}.{minor} cannot compile an empty program ({e:?}): is \
                 libnvrtc-builtins.so.{major}.{minor} beside libnvrtc.so.{major}?"
            )
        })?;
        Ok((major, minor))
    }

    /// The cache file of `src` compiled for `arch` with `options` by NVRTC `version`: every
    /// one of them is in the key.
    pub(crate) fn cache_path(
        cache: &std::path::Path,
        src: &str,
        arch: &str,
        options: &[String],
        version: (i32, i32),
    ) -> std::path::PathBuf {
        let opts = options.join("\0");
        let ver = format!("{}.{}", version.0, version.1);
        let key = kernels::fnv1a(&[
            src.as_bytes(),
            arch.as_bytes(),
            opts.as_bytes(),
            ver.as_bytes(),
        ]);
        cache.join(format!("kernels-{key:016x}-{arch}-nvrtc{ver}.cubin"))
    }

    /// Loads what the cache file at `path` holds, or what `compile` makes when there is none;
    /// a cached image that `load` rejects (a cubin the driver does not take, a truncated
    /// file) is deleted and compiled once more instead of failing for the whole process.
    pub(crate) fn load_cached<T>(
        path: &std::path::Path,
        compile: impl Fn() -> DeviceResult<Vec<u8>>,
        load: impl Fn(&[u8]) -> DeviceResult<T>,
    ) -> DeviceResult<T> {
        if let Ok(bytes) = std::fs::read(path) {
            if !bytes.is_empty() {
                match load(&bytes) {
                    Ok(t) => {
                        tracing::debug!("kernels read from {}", path.display());
                        return Ok(t);
                    }
                    Err(e) => tracing::warn!(
                        "cached kernels {} rejected ({e}); compiling them again",
                        path.display()
                    ),
                }
            }
            let _ = std::fs::remove_file(path);
        }
        let image = compile()?;
        if let Err(e) = write_atomically(path, &image) {
            tracing::warn!("kernel cache {} not written: {e}", path.display());
        }
        load(&image)
    }

    /// `src` compiled for `sm_<cc>` with NVRTC, or read from the disk cache ([`cache_path`]),
    /// and handed to `load` ([`load_cached`]): a second load compiles nothing.
    pub(crate) fn load_kernels<T>(
        src: &str,
        cc: (i32, i32),
        cache: &std::path::Path,
        load: impl Fn(&[u8]) -> DeviceResult<T>,
    ) -> DeviceResult<T> {
        let arch = format!("sm_{}{}", cc.0, cc.1);
        let options = nvrtc_options(&arch);
        let path = cache_path(cache, src, &arch, &options, nvrtc_version()?);
        load_cached(&path, || nvrtc_compile(src, &arch, &options), load)
    }

    /// One NVRTC compilation of `src` to a cubin: NVRTC's log on failure.
    pub(crate) fn nvrtc_compile(
        src: &str,
        arch: &str,
        options: &[String],
    ) -> DeviceResult<Vec<u8>> {
        let started = std::time::Instant::now();
        let csrc = std::ffi::CString::new(src)
            .map_err(|_| DeviceError::Compile("kernel source has a NUL byte".into()))?;
        let prog = nvrtc::result::create_program(&csrc, None)
            .map_err(|e| DeviceError::Compile(format!("nvrtcCreateProgram: {e:?}")))?;
        // SAFETY: `prog` was just created and is destroyed below.
        let compiled = unsafe { nvrtc::result::compile_program(prog, options) };
        let out = match compiled {
            Ok(()) => unsafe { cubin(prog) },
            Err(e) => {
                // SAFETY: as above.
                let log = unsafe { nvrtc::result::get_program_log(prog) }
                    .map(|l| {
                        let bytes: Vec<u8> = l.iter().map(|&c| c as u8).collect();
                        String::from_utf8_lossy(&bytes)
                            .trim_end_matches('\0')
                            .to_string()
                    })
                    .unwrap_or_default();
                Err(DeviceError::Compile(format!(
                    "NVRTC failed to compile the kernels for {arch} ({e:?}): {log}"
                )))
            }
        };
        // SAFETY: as above.
        let _ = unsafe { nvrtc::result::destroy_program(prog) };
        let out = out?;
        COMPILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "kernels compiled for {arch} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(out)
    }

    /// # Safety
    /// `prog` is a compiled program.
    unsafe fn cubin(prog: nvrtc::sys::nvrtcProgram) -> DeviceResult<Vec<u8>> {
        let mut size = 0usize;
        let r = nvrtc::sys::nvrtcGetCUBINSize(prog, &mut size);
        if r != nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(DeviceError::Compile(format!("nvrtcGetCUBINSize: {r:?}")));
        }
        let mut buf = vec![0u8; size];
        let r = nvrtc::sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _);
        if r != nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(DeviceError::Compile(format!("nvrtcGetCUBIN: {r:?}")));
        }
        Ok(buf)
    }

    /// A CUDA device through the driver API: its primary context, the kernel module.
    pub(crate) struct CudaDevice {
        name: String,
        cc: (i32, i32),
        ctx: sys::CUcontext,
        functions: HashMap<Kernel, sys::CUfunction>,
    }

    // SAFETY: CUDA contexts and functions may be used from any thread once made current;
    // every call below makes the context current first.
    unsafe impl Send for CudaDevice {}
    unsafe impl Sync for CudaDevice {}

    /// The errors after which a CUDA context answers every call with the same error: the
    /// device is lost to this process ([`DeviceError::Fault`]).
    pub(crate) fn is_sticky(code: sys::CUresult) -> bool {
        use sys::CUresult::*;
        matches!(
            code,
            CUDA_ERROR_ILLEGAL_ADDRESS
                | CUDA_ERROR_LAUNCH_TIMEOUT
                | CUDA_ERROR_ASSERT
                | CUDA_ERROR_HARDWARE_STACK_ERROR
                | CUDA_ERROR_ILLEGAL_INSTRUCTION
                | CUDA_ERROR_MISALIGNED_ADDRESS
                | CUDA_ERROR_INVALID_ADDRESS_SPACE
                | CUDA_ERROR_INVALID_PC
                | CUDA_ERROR_LAUNCH_FAILED
                | CUDA_ERROR_CONTEXT_IS_DESTROYED
                | CUDA_ERROR_ECC_UNCORRECTABLE
        )
    }

    fn err(what: &str, e: cudarc::driver::DriverError) -> DeviceError {
        let (call, detail) = (what.to_string(), format!("{e:?}"));
        if is_sticky(e.0) {
            DeviceError::Fault { call, detail }
        } else {
            DeviceError::Driver { call, detail }
        }
    }

    fn is_out_of_memory(e: &cudarc::driver::DriverError) -> bool {
        e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
    }

    impl CudaDevice {
        /// Opens device `ordinal`, compiles (or reads from the cache) and loads the kernels.
        /// The caller has checked [`crate::gpu::probe`] first.
        pub(crate) fn open(ordinal: usize) -> DeviceResult<CudaDevice> {
            result::init().map_err(|e| err("cuInit", e))?;
            let dev = result::device::get(ordinal as i32).map_err(|e| err("cuDeviceGet", e))?;
            let name = result::device::get_name(dev).map_err(|e| err("cuDeviceGetName", e))?;
            use sys::CUdevice_attribute::*;
            // SAFETY: `dev` came from cuDeviceGet.
            let cc = unsafe {
                (
                    result::device::get_attribute(
                        dev,
                        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    )
                    .map_err(|e| err("cuDeviceGetAttribute", e))?,
                    result::device::get_attribute(
                        dev,
                        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                    )
                    .map_err(|e| err("cuDeviceGetAttribute", e))?,
                )
            };
            // SAFETY: as above; the primary context lives as long as the process.
            let ctx = unsafe { result::primary_ctx::retain(dev) }
                .map_err(|e| err("cuDevicePrimaryCtxRetain", e))?;
            // SAFETY: `ctx` is a valid context.
            unsafe { result::ctx::set_current(ctx) }.map_err(|e| err("cuCtxSetCurrent", e))?;
            let module = load_kernels(&kernels::source(), cc, &cache_dir(), |image| {
                if !image.starts_with(b"\x7fELF") {
                    return Err(DeviceError::Compile(
                        "the cached file is not a cubin".into(),
                    ));
                }
                // SAFETY: `image` is a cubin for this device's architecture, or a file
                // the driver rejects with an error.
                unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
                    .map_err(|e| err("cuModuleLoadData", e))
            })?;
            let mut functions = HashMap::new();
            for &k in Kernel::ALL {
                let cname = std::ffi::CString::new(k.name())
                    .map_err(|e| DeviceError::Internal(e.to_string()))?;
                // SAFETY: `module` is loaded; the name is NUL-terminated.
                let f = unsafe { result::module::get_function(module, cname) }
                    .map_err(|e| err(&format!("cuModuleGetFunction({})", k.name()), e))?;
                functions.insert(k, f);
            }
            Ok(CudaDevice {
                name,
                cc,
                ctx,
                functions,
            })
        }

        fn current(&self) -> DeviceResult<()> {
            // SAFETY: `ctx` is the retained primary context.
            unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| err("cuCtxSetCurrent", e))
        }
    }

    impl Device for CudaDevice {
        fn describe(&self) -> String {
            format!("{} (sm_{}{})", self.name, self.cc.0, self.cc.1)
        }

        fn alloc(&self, bytes: usize) -> DeviceResult<DevPtr> {
            self.current()?;
            // SAFETY: plain allocation.
            unsafe { result::malloc_sync(bytes.max(256)) }.map_err(|e| {
                if is_out_of_memory(&e) {
                    DeviceError::OutOfMemory {
                        bytes,
                        detail: String::new(),
                    }
                } else {
                    err("cuMemAlloc", e)
                }
            })
        }

        fn free(&self, ptr: DevPtr) {
            if self.current().is_ok() {
                // SAFETY: `ptr` came from `alloc` and is freed once.
                let _ = unsafe { result::free_sync(ptr) };
            }
        }

        fn alloc_host(&self, bytes: usize) -> DeviceResult<*mut u8> {
            self.current()?;
            // SAFETY: plain page-locked allocation.
            unsafe { result::malloc_host(bytes.max(1), 0) }
                .map(|p| p as *mut u8)
                .map_err(|e| {
                    if is_out_of_memory(&e) {
                        DeviceError::HostOutOfMemory {
                            bytes,
                            detail: format!("cuMemHostAlloc: {e:?}"),
                        }
                    } else {
                        err("cuMemHostAlloc", e)
                    }
                })
        }

        fn free_host(&self, ptr: *mut u8, _bytes: usize) {
            if self.current().is_ok() {
                // SAFETY: `ptr` came from `alloc_host`.
                let _ = unsafe { result::free_host(ptr as *mut c_void) };
            }
        }

        fn new_stream(&self) -> DeviceResult<u64> {
            self.current()?;
            result::stream::create(result::stream::StreamKind::NonBlocking)
                .map(|s| s as u64)
                .map_err(|e| err("cuStreamCreate", e))
        }

        fn free_stream(&self, stream: u64) {
            if self.current().is_ok() {
                // SAFETY: `stream` came from `new_stream`.
                let _ = unsafe { result::stream::destroy(stream as sys::CUstream) };
            }
        }

        fn upload(&self, stream: u64, dst: DevPtr, src: *const u8, len: usize) -> DeviceResult<()> {
            self.current()?;
            // SAFETY: the caller keeps `src..src+len` alive until the stream is synchronised.
            unsafe {
                let s = std::slice::from_raw_parts(src, len);
                result::memcpy_htod_async(dst, s, stream as sys::CUstream)
            }
            .map_err(|e| err("cuMemcpyHtoDAsync", e))
        }

        fn download(&self, stream: u64, src: DevPtr, dst: *mut u8, len: usize) -> DeviceResult<()> {
            self.current()?;
            // SAFETY: as above.
            unsafe {
                let d = std::slice::from_raw_parts_mut(dst, len);
                result::memcpy_dtoh_async(d, src, stream as sys::CUstream)
            }
            .map_err(|e| err("cuMemcpyDtoHAsync", e))
        }

        fn launch(
            &self,
            stream: u64,
            kernel: Kernel,
            grid: [u32; 3],
            block: [u32; 3],
            params: &[u8],
        ) -> DeviceResult<()> {
            self.current()?;
            let f = self.functions[&kernel];
            let mut args = [params.as_ptr() as *mut c_void];
            // SAFETY: the kernel takes one struct by value, whose bytes `params` holds; the
            // buffers its pointers name are alive until the stream is synchronised.
            unsafe {
                result::launch_kernel(
                    f,
                    (grid[0], grid[1], grid[2]),
                    (block[0], block[1], block[2]),
                    0,
                    stream as sys::CUstream,
                    &mut args,
                )
            }
            .map_err(|e| err(&format!("launching {}", kernel.name()), e))
        }

        fn sync(&self, stream: u64) -> DeviceResult<()> {
            self.current()?;
            // SAFETY: `stream` came from `new_stream`.
            unsafe { result::stream::synchronize(stream as sys::CUstream) }
                .map_err(|e| err("cuStreamSynchronize (a kernel failed)", e))
        }
    }
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    use super::cuda_impl::{
        cache_path, is_sticky, load_cached, load_kernels, nvrtc_options, COMPILES,
    };
    use crate::execution::program::device::DeviceError;
    use crate::execution::program::kernels;
    use std::cell::Cell;
    use std::sync::atomic::Ordering;

    /// Whether libnvrtc (CUDA 13) loads; `MODELYARD_REQUIRE_NVRTC=1` (CI, with the NVRTC wheel
    /// on `LD_LIBRARY_PATH`) or `MODELYARD_REQUIRE_GPU=1` (a GPU machine) makes its absence a
    /// failure instead of a skip.
    fn nvrtc_present() -> bool {
        // SAFETY: only tries to open the library.
        let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
        if !present {
            assert!(
                !crate::util::nvrtc_required(),
                "MODELYARD_REQUIRE_NVRTC or MODELYARD_REQUIRE_GPU is set but libnvrtc (CUDA 13) does not load"
            );
            crate::util::skip("libnvrtc.so.13 not found: NVRTC compile test skipped");
        }
        present
    }

    /// NVRTC needs no GPU: where libnvrtc (CUDA 13) loads, the kernels must compile for the
    /// H200's sm_90, and a second compile must come from the disk cache.
    #[test]
    fn nvrtc_compiles_the_kernels_once_then_reads_the_cache() {
        if !nvrtc_present() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = kernels::source();
        let compile_cubin =
            |src: &str, cc, dir| load_kernels(src, cc, dir, |b: &[u8]| Ok(b.to_vec()));
        let before = COMPILES.load(Ordering::SeqCst);
        let cubin = compile_cubin(&src, (9, 0), dir.path()).unwrap();
        assert_eq!(&cubin[..4], b"\x7fELF", "a cubin is an ELF image");
        assert_eq!(COMPILES.load(Ordering::SeqCst), before + 1);
        let again = compile_cubin(&src, (9, 0), dir.path()).unwrap();
        assert_eq!(again, cubin);
        assert_eq!(
            COMPILES.load(Ordering::SeqCst),
            before + 1,
            "second load compiled"
        );
        // A kernel that does not compile is an error with NVRTC's log, not a panic.
        let broken =
            format!("{src}\nextern \"C\" __global__ void broken(int p) {{ undeclared = 1; }}\n");
        let e = compile_cubin(&broken, (9, 0), dir.path()).unwrap_err();
        assert!(
            matches!(&e, DeviceError::Compile(log) if log.contains("undeclared")),
            "{e}"
        );
    }

    /// The cache key holds the source, the architecture, NVRTC's options and its version: a
    /// change to any of them is a different file.
    #[test]
    fn kernel_cache_key_covers_source_arch_options_and_nvrtc_version() {
        let dir = std::path::Path::new("/cache");
        let opts = nvrtc_options("sm_90");
        let base = cache_path(dir, "src", "sm_90", &opts, (13, 0));
        assert_eq!(base, cache_path(dir, "src", "sm_90", &opts, (13, 0)));
        let mut more = opts.clone();
        more.push("--use_fast_math".into());
        for other in [
            cache_path(dir, "src2", "sm_90", &opts, (13, 0)),
            cache_path(dir, "src", "sm_89", &nvrtc_options("sm_89"), (13, 0)),
            cache_path(dir, "src", "sm_90", &more, (13, 0)),
            cache_path(dir, "src", "sm_90", &opts, (13, 1)),
        ] {
            assert_ne!(other, base);
        }
    }

    /// A cached image the loader rejects is deleted and compiled once more; a good one is
    /// loaded without compiling; a missing one is compiled and written.
    #[test]
    fn rejected_cached_kernels_are_compiled_again_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.cubin");
        let compiles = Cell::new(0);
        let compile = || {
            compiles.set(compiles.get() + 1);
            Ok(b"GOOD".to_vec())
        };
        let load = |b: &[u8]| {
            if b == b"GOOD" {
                Ok(b.len())
            } else {
                Err(DeviceError::Compile("rejected".into()))
            }
        };
        assert_eq!(load_cached(&path, compile, load).unwrap(), 4);
        assert_eq!(
            (compiles.get(), std::fs::read(&path).unwrap()),
            (1, b"GOOD".to_vec())
        );
        assert_eq!(load_cached(&path, compile, load).unwrap(), 4);
        assert_eq!(compiles.get(), 1, "a good cache file is not compiled again");
        std::fs::write(&path, b"stale cubin from another driver").unwrap();
        assert_eq!(load_cached(&path, compile, load).unwrap(), 4);
        assert_eq!(
            (compiles.get(), std::fs::read(&path).unwrap()),
            (2, b"GOOD".to_vec())
        );
        // A compile that fails is the error, and leaves no file behind.
        std::fs::write(&path, b"bad").unwrap();
        let e = load_cached(
            &path,
            || Err::<Vec<u8>, _>(DeviceError::Compile("no nvrtc".into())),
            load,
        )
        .unwrap_err();
        assert!(matches!(e, DeviceError::Compile(m) if m == "no nvrtc"));
        assert!(!path.exists());
    }

    /// The codes a context does not survive lose the device; the ones a request causes
    /// (bad value, out of memory, a launch too big) do not.
    #[test]
    fn kernel_faults_are_sticky_and_request_errors_are_not() {
        use cudarc::driver::sys::CUresult::*;
        for code in [
            CUDA_ERROR_ILLEGAL_ADDRESS,
            CUDA_ERROR_LAUNCH_FAILED,
            CUDA_ERROR_MISALIGNED_ADDRESS,
            CUDA_ERROR_ILLEGAL_INSTRUCTION,
            CUDA_ERROR_ASSERT,
        ] {
            assert!(is_sticky(code), "{code:?}");
        }
        for code in [
            CUDA_ERROR_INVALID_VALUE,
            CUDA_ERROR_OUT_OF_MEMORY,
            CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
            CUDA_ERROR_NOT_READY,
        ] {
            assert!(!is_sticky(code), "{code:?}");
        }
    }
}
