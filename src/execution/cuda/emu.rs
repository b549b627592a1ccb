//! The emulator device: the CUDA kernels compiled by the host C++ compiler (`$CXX`, else
//! `c++`) with `kernels/emu/prelude.h`, which defines the CUDA built-ins, and loaded as a
//! shared library. Every block runs its threads as fibers switched at `__syncthreads`, so the
//! kernels' indexing, tiling and barriers are exercised exactly as written. It is slow
//! (thousands of times slower than a GPU) and exists so that the executor and the kernels are
//! tested on machines without a GPU; select it with
//! [`crate::RepositoryBuilder::cuda_emulator`].

use std::collections::HashMap;
use std::sync::OnceLock;

use parking_lot::Mutex;

use super::device::{cache_dir, write_atomically};
use crate::execution::program::device::{
    check_launch, host_memory_methods, DevPtr, Device, DeviceError, DeviceResult, HostMemory,
    RawAlloc, Sticky,
};
use crate::execution::program::kernels::{self, Kernel};

const PRELUDE: &str = include_str!("../../../kernels/emu/prelude.h");

/// The emulated device's memory: like a GPU's, fixed, so that running out of it is an
/// error that can be tested.
pub(crate) const MEMORY: usize = 1 << 30;

type LaunchFn = unsafe extern "C" fn(*const u8, u32, u32, u32, u32, u32, u32);
type SizeFn = unsafe extern "C" fn() -> u32;
type FaultFn = unsafe extern "C" fn() -> *const std::ffi::c_char;

pub(crate) struct EmuDevice {
    _lib: libloading::Library,
    launches: HashMap<Kernel, (LaunchFn, usize)>,
    /// The emulated context's first fault, "" while there is none (`emu::fault`).
    fault: FaultFn,
    memory: HostMemory,
    /// The emulated device runs one launch at a time (its built-ins are globals).
    running: Mutex<()>,
}

/// The process's emulator, built on first use. Like a CUDA context, it does not survive a
/// fault: the first one makes every later call fail (`Sticky`).
pub(crate) fn shared() -> Result<&'static Sticky<EmuDevice>, String> {
    static EMU: OnceLock<Result<Sticky<EmuDevice>, String>> = OnceLock::new();
    EMU.get_or_init(|| EmuDevice::build().map(Sticky::new))
        .as_ref()
        .map_err(Clone::clone)
}

/// The C++ translation unit: prelude, kernels, one `emu_launch_<name>` per entry point.
fn translation_unit() -> String {
    let src = kernels::source();
    let mut unit = String::from(PRELUDE);
    unit.push_str("extern \"C\" const char* emu_fault() { return emu::fault; }\n");
    unit.push_str(
        "extern \"C\" void* emu_alloc(size_t n) { return emu::alloc(n); }\n\
         extern \"C\" void emu_free(void* p, size_t n) { emu::release(p, n); }\n",
    );
    unit.push_str(&poison_shared(&src));
    // The layouts and codes Rust uses, checked by the host compiler: a struct or code that
    // drifted from kernels.rs fails this build.
    unit.push_str(&kernels::abi_checks());
    for e in kernels::entries(&src) {
        let (n, t, sync) = (&e.name, &e.param_type, e.uses_sync);
        unit.push_str(&format!(
            "extern \"C\" void emu_launch_{n}(const void* p, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz) {{\n\
             \x20   {t} q; std::memcpy(&q, p, sizeof({t}));\n\
             \x20   emu::run([&] {{ {n}(q); }}, dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, {sync});\n}}\n\
             extern \"C\" unsigned emu_sizeof_{n}() {{ return sizeof({t}); }}\n"
        ));
    }
    unit
}

/// `src` with `emu::poison(name, sizeof(name));` after every `__shared__` declaration, so
/// that each block starts with shared memory full of NaN, as a GPU gives no initial value.
fn poison_shared(src: &str) -> String {
    let mut out = String::with_capacity(src.len() + 1024);
    for line in src.lines() {
        out.push_str(line);
        let decl = line.trim();
        if let Some(rest) = decl.strip_prefix("__shared__ ") {
            let name = rest
                .split('[')
                .next()
                .and_then(|head| head.split_whitespace().last())
                .filter(|_| decl.ends_with(';'));
            if let Some(name) = name {
                out.push_str(&format!(" emu::poison({name}, sizeof({name}));"));
            }
        }
        out.push('\n');
    }
    out
}

impl EmuDevice {
    fn build() -> Result<EmuDevice, String> {
        let unit = translation_unit();
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let key = kernels::fnv1a(&[unit.as_bytes(), cxx.as_bytes()]);
        // The cache directory, or the temporary one where it cannot be created.
        let dir = Some(cache_dir())
            .filter(|d| std::fs::create_dir_all(d).is_ok())
            .unwrap_or_else(|| std::env::temp_dir().join("modelyard"));
        let lib_path = dir.join(format!("emu-{key:016x}.so"));
        if !lib_path.exists() {
            let cpp = dir.join(format!("emu-{key:016x}.{}.cpp", std::process::id()));
            write_atomically(&cpp, unit.as_bytes())
                .map_err(|e| format!("writing {}: {e}", cpp.display()))?;
            let tmp = lib_path.with_extension(format!("so.tmp{}", std::process::id()));
            let out = std::process::Command::new(&cxx)
                .args(["-O2", "-std=c++17", "-shared", "-fPIC", "-w", "-o"])
                .arg(&tmp)
                .arg(&cpp)
                .output()
                .map_err(|e| format!("the emulator needs a C++ compiler ('{cxx}'): {e}"))?;
            let _ = std::fs::remove_file(&cpp);
            if !out.status.success() {
                return Err(format!(
                    "the kernels did not compile on the host: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            std::fs::rename(&tmp, &lib_path).map_err(|e| e.to_string())?;
        }
        // SAFETY: the library is ours, built just now or earlier from the same source; its
        // initialisers only set up statics.
        let lib = unsafe { libloading::Library::new(&lib_path) }
            .map_err(|e| format!("loading {}: {e}", lib_path.display()))?;
        // SAFETY: generated above with exactly this signature.
        let fault = unsafe {
            *lib.get::<FaultFn>(b"emu_fault")
                .map_err(|e| e.to_string())?
        };
        // SAFETY: generated above (translation_unit) with exactly these signatures.
        let raw = unsafe {
            RawAlloc {
                alloc: *lib
                    .get::<unsafe extern "C" fn(usize) -> *mut u8>(b"emu_alloc")
                    .map_err(|e| e.to_string())?,
                free: *lib
                    .get::<unsafe extern "C" fn(*mut u8, usize)>(b"emu_free")
                    .map_err(|e| e.to_string())?,
            }
        };
        let mut launches = HashMap::new();
        for &k in Kernel::ALL {
            // SAFETY: the symbols were generated with exactly these signatures.
            unsafe {
                let f: libloading::Symbol<LaunchFn> = lib
                    .get(format!("emu_launch_{}", k.name()).as_bytes())
                    .map_err(|e| e.to_string())?;
                let size: libloading::Symbol<SizeFn> = lib
                    .get(format!("emu_sizeof_{}", k.name()).as_bytes())
                    .map_err(|e| e.to_string())?;
                launches.insert(k, (*f, size() as usize));
            }
        }
        Ok(EmuDevice {
            _lib: lib,
            launches,
            fault,
            // Guarded pages: an access past an allocation faults (kernels/emu/prelude.h).
            memory: HostMemory::with_allocator(256, MEMORY, raw),
            running: Mutex::new(()),
        })
    }
}

impl Device for EmuDevice {
    fn describe(&self) -> String {
        "emulator (kernels compiled for the host CPU, 1 GiB)".into()
    }

    host_memory_methods!(memory);

    fn launch(
        &self,
        _stream: u64,
        kernel: Kernel,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[u8],
    ) -> DeviceResult<()> {
        let (f, size) = self.launches[&kernel];
        if params.len() != size {
            return Err(DeviceError::Internal(format!(
                "{}: parameter struct is {} bytes in Rust, {size} in C++",
                kernel.name(),
                params.len()
            )));
        }
        check_launch(grid, block).map_err(|e| DeviceError::Driver {
            call: format!("launching {}", kernel.name()),
            detail: e,
        })?;
        let _one = self.running.lock();
        // SAFETY: `params` holds the kernel's parameter struct; its pointers name live
        // allocations of this device.
        unsafe {
            f(
                params.as_ptr(),
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
            )
        };
        // SAFETY: a NUL-terminated static buffer of the library.
        let fault = unsafe { std::ffi::CStr::from_ptr((self.fault)()) };
        if !fault.is_empty() {
            return Err(DeviceError::Fault {
                call: format!("launching {}", kernel.name()),
                detail: fault.to_string_lossy().into_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's emulator; `None` (a skip) only off Linux without a C++ compiler.
    fn emulator_or_skip() -> Option<&'static Sticky<EmuDevice>> {
        match shared() {
            Ok(e) => Some(e),
            Err(why) if !cfg!(target_os = "linux") => {
                crate::util::skip(&format!("no emulator ({why})"));
                None
            }
            Err(why) => panic!("the emulator failed: {why}"),
        }
    }

    /// Compiles `kernels` (CUDA source) with the emulator's prelude and a `main`, runs it with
    /// `MODELYARD_EMU_SEED=seed`, and returns what it printed; `None` without a C++ compiler
    /// off Linux.
    fn run_on_prelude(kernels: &str, main: &str, seed: u64) -> Option<String> {
        let (status, out) = run_on_prelude_status(kernels, main, seed)?;
        assert!(status.success(), "{status}: {out}");
        Some(out)
    }

    /// [`run_on_prelude`] that lets the program fail: its exit status and output.
    fn run_on_prelude_status(
        kernels: &str,
        main: &str,
        seed: u64,
    ) -> Option<(std::process::ExitStatus, String)> {
        let dir = tempfile::tempdir().unwrap();
        let cpp = dir.path().join("t.cpp");
        let exe = dir.path().join("t");
        let unit = format!(
            "{PRELUDE}\n#include <cstdio>\n{}\nint main() {{ {main} }}\n",
            poison_shared(kernels)
        );
        std::fs::write(&cpp, unit).unwrap();
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        match std::process::Command::new(&cxx)
            .args(["-O2", "-std=c++17", "-w", "-o"])
            .arg(&exe)
            .arg(&cpp)
            .status()
        {
            Ok(s) => assert!(s.success(), "the test kernels did not compile"),
            Err(e) if !cfg!(target_os = "linux") => {
                crate::util::skip(&format!("no C++ compiler ({e})"));
                return None;
            }
            Err(e) => panic!("{cxx}: {e}"),
        }
        let out = std::process::Command::new(&exe)
            .env("MODELYARD_EMU_SEED", seed.to_string())
            .output()
            .unwrap();
        Some((out.status, String::from_utf8(out.stdout).unwrap()))
    }

    /// A planted race: every thread writes one shared slot before the barrier, thread 0 reads
    /// it after. Threads run in order, the last thread would always win and the race would
    /// pass unseen; shuffled between barriers, the winner changes from block to block, and
    /// the same seed gives the same answer.
    #[test]
    fn threads_run_in_a_shuffled_order_between_barriers_so_races_show() {
        let kernels = "__global__ void race(int* out) {\n\
            __shared__ int slot[1];\n\
            slot[0] = threadIdx.x;\n\
            __syncthreads();\n\
            if (threadIdx.x == 0) out[blockIdx.x] = slot[0];\n}\n";
        let main =
            "int out[16]; emu::run([&] { race(out); }, dim3{16, 1, 1}, dim3{64, 1, 1}, true);\n\
            for (int i = 0; i < 16; ++i) std::printf(\"%d \", out[i]); return 0;";
        let Some(a) = run_on_prelude(kernels, main, 1) else {
            return;
        };
        let winners: Vec<i32> = a.split_whitespace().map(|w| w.parse().unwrap()).collect();
        assert_eq!(winners.len(), 16);
        assert!(winners.iter().all(|w| (0..64).contains(w)), "{a}");
        assert!(winners.iter().any(|&w| w != 63), "in-order execution: {a}");
        assert!(
            winners.windows(2).any(|w| w[0] != w[1]),
            "the same order every block: {a}"
        );
        assert_eq!(
            run_on_prelude(kernels, main, 1).unwrap(),
            a,
            "seeded: reproducible"
        );
        assert_ne!(
            run_on_prelude(kernels, main, 2).unwrap(),
            a,
            "another seed, another order"
        );
    }

    /// Shared memory starts every block as NaN: a block that reads what no thread of its own
    /// wrote sees NaN, not the previous block's values.
    #[test]
    fn shared_memory_is_nan_at_the_start_of_every_block() {
        let kernels = "__global__ void stale(float* out) {\n\
            __shared__ float s[4];\n\
            if (blockIdx.x == 0) s[threadIdx.x] = 1.0f;\n\
            __syncthreads();\n\
            out[blockIdx.x * 4 + threadIdx.x] = s[threadIdx.x];\n}\n";
        let main =
            "float out[8]; emu::run([&] { stale(out); }, dim3{2, 1, 1}, dim3{4, 1, 1}, true);\n\
            for (int i = 0; i < 8; ++i) std::printf(\"%f \", out[i]); return 0;";
        let Some(a) = run_on_prelude(kernels, main, 1) else {
            return;
        };
        let v: Vec<f32> = a.split_whitespace().map(|w| w.parse().unwrap()).collect();
        assert_eq!(&v[..4], &[1.0; 4], "{a}");
        assert!(
            v[4..].iter().all(|x| x.is_nan()),
            "block 1 read block 0's values: {a}"
        );
    }

    /// A float4 moves only at 16-byte aligned addresses, as on a GPU: a view 4 bytes off
    /// records CUDA_ERROR_MISALIGNED_ADDRESS (naming block and thread) and an aligned one
    /// nothing, reads and writes alike.
    #[test]
    fn a_misaligned_float4_is_the_contexts_fault() {
        let kernels = "__global__ void copy4(const float* x, float* y) {\n\
            const float4* x4 = (const float4*)x;\n\
            float4* y4 = (float4*)y;\n\
            y4[threadIdx.x] = x4[threadIdx.x];\n}\n";
        let main = "alignas(16) static float a[16], b[16];\n\
            emu::run([&] { copy4(a, b); }, dim3{1, 1, 1}, dim3{2, 1, 1}, false);\n\
            std::printf(\"aligned:%s|\", emu::fault);\n\
            emu::run([&] { copy4(a + 1, b); }, dim3{1, 1, 1}, dim3{2, 1, 1}, false);\n\
            std::printf(\"read:%s|\", emu::fault); emu::fault[0] = 0;\n\
            emu::run([&] { copy4(a, b + 2); }, dim3{1, 1, 1}, dim3{2, 1, 1}, false);\n\
            std::printf(\"write:%s|\", emu::fault); return 0;";
        let Some(out) = run_on_prelude(kernels, main, 1) else {
            return;
        };
        let parts: Vec<&str> = out.split('|').collect();
        assert_eq!(parts[0], "aligned:", "{out}");
        for part in &parts[1..3] {
            assert!(
                part.contains("CUDA_ERROR_MISALIGNED_ADDRESS: a float4 access not 16-byte aligned")
                    && part.contains("(block 0,0,0, thread "),
                "{out}"
            );
        }
    }

    /// Whether this is the child process [`in_child`] started for `test`; in the parent,
    /// runs `test` alone in a child (the emulator is the process's, and a fault loses it for
    /// good) and checks that it passed and printed "child: done".
    fn in_child(test: &str) -> bool {
        if std::env::var_os("MODELYARD_EMU_FAULT_CHILD").is_some() {
            return true;
        }
        let test = format!(
            "{}::{test}",
            module_path!().trim_start_matches("modelyard::")
        );
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env("MODELYARD_EMU_FAULT_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("child: done"), "{text}");
        false
    }

    /// Launches unary_f32 (y = x, one block of 2 threads) on the emulator; the error, if any.
    fn unary(emu: &Sticky<EmuDevice>, x: DevPtr, y: DevPtr, n: i32, vec4: i32) -> DeviceResult<()> {
        let params = kernels::UnaryParams {
            x,
            y,
            n,
            vec4,
            ..Default::default()
        };
        emu.launch(
            0,
            Kernel::Unary,
            [1, 1, 1],
            [2, 1, 1],
            &kernels::bytes_of(&params),
        )
    }

    /// On the prelude alone: an out-of-bounds write past the end (from a fiber, between
    /// barriers) and a read before the first page both fault and end their launch; the
    /// process goes on, and an in-bounds launch after that runs.
    #[test]
    fn out_of_bounds_accesses_fault_and_end_the_launch() {
        let kernels = "__global__ void fill(float* y, int n, int off) {\n\
            __syncthreads();\n\
            for (int i = threadIdx.x; i < n; i += blockDim.x) y[i + off] = 1.0f;\n\
            __syncthreads();\n}\n";
        let main = "float* y = (float*)emu::alloc(4096 * 4);\n\
            emu::run([&] { fill(y, 4096, 0); }, dim3{2, 1, 1}, dim3{64, 1, 1}, true);\n\
            std::printf(\"inside:%s|\", emu::fault);\n\
            emu::run([&] { fill(y, 4096, 1); }, dim3{2, 1, 1}, dim3{64, 1, 1}, true);\n\
            std::printf(\"past:%s|\", emu::fault); emu::fault[0] = 0;\n\
            emu::run([&] { fill(y, 1, -1); }, dim3{1, 1, 1}, dim3{1, 1, 1}, false);\n\
            std::printf(\"before:%s|\", emu::fault); emu::fault[0] = 0;\n\
            emu::run([&] { fill(y, 4096, 0); }, dim3{1, 1, 1}, dim3{32, 1, 1}, true);\n\
            std::printf(\"again:%s|%g\", emu::fault, y[4095]);\n\
            emu::release(y, 4096 * 4); return 0;";
        let Some(out) = run_on_prelude(kernels, main, 1) else {
            return;
        };
        let parts: Vec<&str> = out.split('|').collect();
        assert_eq!(parts[0], "inside:", "{out}");
        for part in &parts[1..3] {
            assert!(
                part.contains("CUDA_ERROR_ILLEGAL_ADDRESS: an access outside every allocation"),
                "{out}"
            );
        }
        assert_eq!(&parts[3..], ["again:", "1"], "{out}");

        // Outside a launch a bad access is none of the emulator's business: the handler that
        // was there before gets it, and the process dies of it as it would have.
        let main = "float* y = (float*)emu::alloc(64);\n\
            emu::run([&] { fill(y, 16, 0); }, dim3{1, 1, 1}, dim3{4, 1, 1}, true);\n\
            std::printf(\"ran|\"); std::fflush(stdout);\n\
            *(volatile float*)(y + 64) = 1.0f; std::printf(\"survived\"); return 0;";
        let (status, out) = run_on_prelude_status(kernels, main, 1).unwrap();
        assert_eq!(out, "ran|");
        assert!(!status.success(), "{status}");
    }

    /// Through the device: a launch whose float4 view is misaligned answers the fault, and the
    /// emulated context is lost for good, as a CUDA one (every later call: `Lost`).
    #[test]
    fn a_fault_on_the_emulator_is_sticky_like_a_cuda_context() {
        if !in_child("a_fault_on_the_emulator_is_sticky_like_a_cuda_context") {
            return;
        }
        let Some(emu) = emulator_or_skip() else {
            return;
        };
        let buf = emu.alloc(1024).unwrap();
        let e = unary(emu, buf + 4, buf + 512, 8, 1).unwrap_err();
        assert!(
            matches!(&e, DeviceError::Fault { detail, .. } if detail.contains("CUDA_ERROR_MISALIGNED_ADDRESS")),
            "{e}"
        );
        let later = emu.alloc(16).unwrap_err();
        assert!(
            matches!(&later, DeviceError::Lost(first) if first.contains("launching unary_f32")),
            "{later}"
        );
        println!("child: done");
    }

    /// Device memory ends at a guard page: a kernel that reads past its allocation's end
    /// faults with CUDA_ERROR_ILLEGAL_ADDRESS, as on a GPU, instead of reading the host heap;
    /// the same kernel within the allocation does not; the context is lost after the fault.
    #[test]
    fn a_read_past_an_allocation_is_an_illegal_address() {
        if !in_child("a_read_past_an_allocation_is_an_illegal_address") {
            return;
        }
        let Some(emu) = emulator_or_skip() else {
            return;
        };
        // 1000 bytes: 250 floats, rounded up to 1024 bytes (256 floats) as cudaMalloc would.
        let x = emu.alloc(1000).unwrap();
        let y = emu.alloc(64 << 10).unwrap();
        unary(emu, x, y, 256, 0).unwrap();
        unary(emu, x, y, 256, 1).unwrap();
        let e = unary(emu, x, y, 257, 0).unwrap_err();
        assert!(
            matches!(&e, DeviceError::Fault { detail, .. }
                if detail.contains("CUDA_ERROR_ILLEGAL_ADDRESS: an access outside every allocation")
                    && detail.contains(&format!("{:#x}", x + 1024))),
            "{e}"
        );
        assert!(matches!(emu.alloc(16).unwrap_err(), DeviceError::Lost(_)));
        println!("child: done");
    }

    /// The emulator refuses what a GPU refuses (`CUDA_ERROR_INVALID_VALUE`): empty grids,
    /// grids past sm_90's limits, blocks of more than 1024 threads, before the kernel runs.
    #[test]
    fn launches_outside_sm_90_limits_are_refused() {
        let Some(emu) = emulator_or_skip() else {
            return;
        };
        let k = Kernel::ALL[0];
        let params = vec![0u8; emu.inner().launches[&k].1];
        for (grid, block, says) in [
            ([0, 1, 1], [256, 1, 1], "gridDim.x must be 1..="),
            ([4, 0, 1], [256, 1, 1], "gridDim.y must be 1..="),
            ([4, 1, 0], [256, 1, 1], "gridDim.z must be 1..="),
            ([4, 65_536, 1], [256, 1, 1], "gridDim.y must be 1..=65535"),
            (
                [1 << 31, 1, 1],
                [256, 1, 1],
                "gridDim.x must be 1..=2147483647",
            ),
            ([1, 1, 1], [1025, 1, 1], "blockDim.x must be 1..=1024"),
            ([1, 1, 1], [1, 1, 65], "blockDim.z must be 1..=64"),
            ([1, 1, 1], [32, 32, 2], "2048 threads, at most 1024"),
            ([1, 1, 1], [0, 1, 1], "blockDim.x must be 1..="),
        ] {
            let e = emu.launch(0, k, grid, block, &params).unwrap_err();
            assert!(
                matches!(&e, DeviceError::Driver { detail, .. } if detail.contains(says)),
                "{grid:?} {block:?}: {e}"
            );
        }
    }
}
