//! Arbitrary bytes as `model.onnx` → auto-complete and load; if it loads, one request of
//! zeros shaped by its completed config.
#![no_main]
use libfuzzer_sys::fuzz_target;
use modelyard::{Repository, Tensor};

fuzz_target!(|data: &[u8]| {
    let root = std::env::temp_dir().join(format!("modelyard-fuzz-onnx-{}", std::process::id()));
    let dir = root.join("m/1");
    let _ = std::fs::create_dir_all(&dir);
    if std::fs::write(dir.join("model.onnx"), data).is_err() {
        return;
    }
    let Ok(repo) = Repository::builder(&root)
        .exit_on_error(false)
        .max_model_bytes(64 << 20)
        .load()
    else {
        return;
    };
    let Ok(model) = repo.model("m") else {
        return;
    };
    let config = model.config().clone();
    let inputs: Vec<(String, Tensor)> = config
        .input
        .iter()
        .filter_map(|i| {
            let mut shape: Vec<usize> = Vec::new();
            if config.max_batch_size > 0 {
                shape.push(1);
            }
            shape.extend(i.dims.iter().map(|&d| d.clamp(1, 64) as usize));
            Tensor::zeros(i.data_type(), &shape).ok().map(|t| (i.name.clone(), t))
        })
        .collect();
    let _ = model.infer(inputs);
});
