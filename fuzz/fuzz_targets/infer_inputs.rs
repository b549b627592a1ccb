//! Request inputs (names, types, shapes, byte sizes, BYTES contents) → `infer` on a fixture
//! add/sub model (FP32, batching) and an identity model (BYTES, variable dims).
#![no_main]
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use modelyard::config::DataType;
use modelyard::{Repository, Tensor};

const NAMES: &[&str] = &["INPUT0", "INPUT1", "IN", "OUTPUT0", "", "ü"];

#[derive(Arbitrary, Debug)]
struct Input {
    name: u8,
    data_type: u8,
    shape: Vec<u16>,
    bytes: Vec<u8>,
    strings: Vec<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
struct Request {
    model: bool,
    inputs: Vec<Input>,
    outputs: Option<Vec<u8>>,
}

fn repo() -> &'static Repository {
    static REPO: OnceLock<Repository> = OnceLock::new();
    REPO.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("modelyard-fuzz-infer-{}", std::process::id()));
        let add = root.join("add_sub/1");
        std::fs::create_dir_all(&add).unwrap();
        std::fs::write(
            add.join("model.onnx"),
            include_bytes!("../../fixtures/generated/add_sub_fp32_batch.onnx"),
        )
        .unwrap();
        std::fs::write(root.join("add_sub/config.pbtxt"), "max_batch_size: 8\ndynamic_batching { }").unwrap();
        std::fs::create_dir_all(root.join("id/1")).unwrap();
        std::fs::write(
            root.join("id/config.pbtxt"),
            r#"backend: "identity" max_batch_size: 0 input [ { name: "IN" data_type: TYPE_STRING dims: [ -1, -1 ] } ] output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1, -1 ] } ]"#,
        )
        .unwrap();
        Repository::builder(&root).max_request_bytes(1 << 20).load().unwrap()
    })
}

fuzz_target!(|req: Request| {
    let model = repo().model(if req.model { "add_sub" } else { "id" }).unwrap();
    let mut inputs = Vec::new();
    for i in req.inputs.iter().take(4) {
        let dt = DataType::try_from(i32::from(i.data_type % 16)).unwrap_or(DataType::TypeInvalid);
        let shape: Vec<usize> = i.shape.iter().take(5).map(|&d| usize::from(d % 64)).collect();
        let tensor = if dt == DataType::TypeString {
            Tensor::from_bytes(&shape, i.strings.iter())
        } else {
            Tensor::from_le_bytes(dt, &shape, &i.bytes)
        };
        if let Ok(t) = tensor {
            inputs.push((NAMES[i.name as usize % NAMES.len()].to_string(), t));
        }
    }
    let result = match &req.outputs {
        Some(o) => {
            let names: Vec<&str> = o.iter().take(3).map(|&n| NAMES[n as usize % NAMES.len()]).collect();
            model.infer_outputs(inputs, &names)
        }
        None => model.infer(inputs),
    };
    if let Ok(out) = result {
        for (_, t) in out.iter() {
            let _ = t.byte_size();
        }
    }
});
