//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use modelyard::Tensor;
use ndarray::ArrayD;

/// `MODELYARD_FIXTURES`, else `./fixtures`, else the source tree's: a test binary shipped to
/// another machine (the GPU bundle) finds the fixtures of the working tree it runs in.
pub fn fixtures() -> PathBuf {
    if let Some(d) = std::env::var_os("MODELYARD_FIXTURES") {
        return PathBuf::from(d);
    }
    let local = Path::new("fixtures");
    if local.join("tutorial_repository").is_dir() {
        return local.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A reference case from `fixtures/reference/manifest.json` (inputs and ONNX Runtime outputs).
pub struct Reference {
    pub inputs: Vec<(String, ArrayD<f32>)>,
    pub outputs: Vec<(String, ArrayD<f32>)>,
}

fn read_f32(file: &str, shape: &[usize]) -> ArrayD<f32> {
    let bytes = std::fs::read(fixtures().join("reference").join(file)).unwrap();
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    ArrayD::from_shape_vec(shape.to_vec(), data).unwrap()
}

pub fn reference(key: &str) -> Reference {
    let text = std::fs::read_to_string(fixtures().join("reference/manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = &manifest[key];
    let load = |section: &str| -> Vec<(String, ArrayD<f32>)> {
        entry[section]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, v)| {
                let shape: Vec<usize> = v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                (name.clone(), read_f32(v["file"].as_str().unwrap(), &shape))
            })
            .collect()
    };
    Reference {
        inputs: load("inputs"),
        outputs: load("outputs"),
    }
}

impl Reference {
    pub fn input_tensors(&self) -> Vec<(String, Tensor)> {
        self.inputs
            .iter()
            .map(|(n, a)| (n.clone(), Tensor::from(a.clone())))
            .collect()
    }
}

/// Largest absolute difference, asserting equal shapes.
pub fn max_abs_diff(a: &ndarray::ArrayViewD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A model folder `name` in `repo` with `config` and the generated add/sub model as version 1.
pub fn add_sub_model(repo: &Path, name: &str, config: &str) -> PathBuf {
    let dir = repo.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(dir.join("config.pbtxt"), config).unwrap();
    std::fs::copy(
        fixtures().join("generated/add_sub_fp32_batch.onnx"),
        dir.join("1/model.onnx"),
    )
    .unwrap();
    dir
}

/// The config of the generated add/sub model with a batch dim (OUTPUT0 = INPUT0 + INPUT1,
/// OUTPUT1 = INPUT0 - INPUT1, FP32 `[16]`).
pub const ADD_SUB: &str = r#"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
"#;

/// A minimal executor: polls on this thread, parks until woken.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The resident set size of this process, in KiB (Linux).
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A gate a test opens: `pass` blocks until `open`; `arrived` counts the threads that
/// reached it, so a test can wait until a request is held exactly where it wants it.
#[derive(Default)]
pub struct Gate {
    open: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
    arrived: std::sync::atomic::AtomicUsize,
}

impl Gate {
    pub fn pass(&self) {
        self.arrived
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.changed.wait(open).unwrap();
        }
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }

    /// Waits (20 s at most) until `n` threads reached the gate.
    pub fn wait_for(&self, n: usize) {
        let arrived = || self.arrived.load(std::sync::atomic::Ordering::SeqCst) >= n;
        wait_until("a thread to reach the gate", arrived);
    }
}

/// Polls `done` every millisecond until it holds; fails naming `what` after 20 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "waited 20 s for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

mod skip;
#[allow(unused_imports)]
pub use skip::skip;

/// The error of `result`, checked to be of `kind` and to carry `words` in its message: an
/// error for another reason fails the test.
#[track_caller]
pub fn expect_error<T: std::fmt::Debug>(
    result: modelyard::Result<T>,
    kind: modelyard::ErrorKind,
    words: &str,
) -> modelyard::Error {
    let e = result.expect_err("an error was expected");
    assert_eq!(e.kind(), kind, "{e}");
    assert!(e.to_string().contains(words), "'{words}' not in: {e}");
    e
}
