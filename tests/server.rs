//! `modelyard serve` over the wire: every HTTP endpoint from a plain HTTP/1.1 client written
//! here (so that malformed requests can be sent too), every gRPC method from the generated
//! tonic client, the `modelyard` binary itself, and the real `tritonclient` Python package
//! running the tutorial's two client flows (skipped with a notice where the venv that
//! `.ci/run` makes is missing). Numbers are checked against ONNX Runtime's outputs committed
//! in `fixtures/reference` and against the same request run in-process.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fixtures, max_abs_diff, reference, Gate};
use modelyard::server::proto::{self, grpc_inference_service_client::GrpcInferenceServiceClient};
use modelyard::server::{ApiGroup, Restriction, Server, ServerOptions};
use modelyard::{ModelControl, NativeModel, Repository, Tensor};
use serde_json::{json, Value};

// ---------------------------------------------------------------- an HTTP/1.1 client

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        let len = self
            .header("inference-header-content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(self.body.len());
        serde_json::from_slice(&self.body[..len])
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_string()
    }
}

/// Reads one response from a keep-alive connection (by Content-Length).
fn read_reply(stream: &mut TcpStream) -> std::io::Result<Reply> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the response",
            ));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    stream.read_exact(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn write_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Reply {
    let mut s = connect(addr);
    write_request(&mut s, method, path, headers, body).unwrap();
    read_reply(&mut s).unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    call(addr, "GET", path, &[], b"")
}

fn post_json(addr: SocketAddr, path: &str, v: &Value) -> Reply {
    call(addr, "POST", path, &[], v.to_string().as_bytes())
}

/// An inference request with binary inputs: the JSON header, then the tensors' bytes.
fn binary_request(head: &Value, tensors: &[&[u8]]) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let head = head.to_string();
    let mut body = head.clone().into_bytes();
    for t in tensors {
        body.extend_from_slice(t);
    }
    (
        vec![("Inference-Header-Content-Length", head.len().to_string())],
        body,
    )
}

fn f32_bytes(a: &ndarray::ArrayD<f32>) -> Vec<u8> {
    a.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The binary output tensors of a reply, by name, in the order the JSON lists them.
fn binary_outputs(r: &Reply) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let head = r.json();
    let mut at: usize = r
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    head["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let n = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
            let bytes = r.body[at..at + n].to_vec();
            at += n;
            let shape = o["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (o["name"].as_str().unwrap().to_string(), shape, bytes)
        })
        .collect()
}

/// The generated tonic client on a plain HTTP/2 channel.
async fn grpc_client(url: String) -> GrpcInferenceServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    GrpcInferenceServiceClient::new(channel)
}

// ---------------------------------------------------------------- repositories

/// A native model that waits at a gate, then doubles its FP32 input.
struct Held(Arc<Gate>);

impl NativeModel for Held {
    fn execute(
        &self,
        inputs: &[(String, Tensor)],
        _outputs: &[String],
    ) -> modelyard::Result<Vec<(String, Tensor)>> {
        self.0.pass();
        let x = inputs[0].1.view::<f32>()?;
        Ok(vec![("Y".into(), Tensor::from(x.mapv(|v| 2.0 * v)))])
    }
}

const IDENTITY: &[(&str, &str)] = &[
    (
        "id_fp32",
        r#"backend: "identity" max_batch_size: 8 input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ] output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]"#,
    ),
    (
        "id_bytes",
        r#"backend: "identity" max_batch_size: 0 input [ { name: "IN" data_type: TYPE_STRING dims: [ -1 ] } ] output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1 ] } ]"#,
    ),
    (
        "id_bool",
        r#"backend: "identity" max_batch_size: 0 input [ { name: "IN" data_type: TYPE_BOOL dims: [ -1 ] } ] output [ { name: "OUT" data_type: TYPE_BOOL dims: [ -1 ] } ]"#,
    ),
    (
        "id_int8",
        r#"backend: "identity" max_batch_size: 0 input [ { name: "IN" data_type: TYPE_INT8 dims: [ -1 ] } ] output [ { name: "OUT" data_type: TYPE_INT8 dims: [ -1 ] } ]"#,
    ),
    (
        "id_uint64",
        r#"backend: "identity" max_batch_size: 0 input [ { name: "IN" data_type: TYPE_UINT64 dims: [ -1 ] } ] output [ { name: "OUT" data_type: TYPE_UINT64 dims: [ -1 ] } ]"#,
    ),
    (
        "id_fp16",
        r#"backend: "identity" max_batch_size: 0 input [ { name: "IN" data_type: TYPE_FP16 dims: [ -1 ] } ] output [ { name: "OUT" data_type: TYPE_FP16 dims: [ -1 ] } ]"#,
    ),
    (
        "id_fp64",
        r#"backend: "identity" max_batch_size: 0 input [ { name: "IN" data_type: TYPE_FP64 dims: [ -1 ] } ] output [ { name: "OUT" data_type: TYPE_FP64 dims: [ -1 ] } ]"#,
    ),
    (
        "scores",
        r#"backend: "identity" max_batch_size: 0 input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ] output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] label_filename: "labels.txt" } ]"#,
    ),
    (
        "held",
        r#"backend: "held" max_batch_size: 0 input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ] output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]"#,
    ),
];

/// The identity models, the held native model and the tutorial's two ONNX models.
fn test_repo(dir: &Path) {
    for (name, config) in IDENTITY {
        std::fs::create_dir_all(dir.join(name).join("1")).unwrap();
        std::fs::write(dir.join(name).join("config.pbtxt"), config).unwrap();
    }
    std::fs::write(dir.join("scores/labels.txt"), "cat\ndog\nbird\nfish\n").unwrap();
    for m in ["text_detection", "text_recognition"] {
        common::copy_dir(
            &fixtures().join("tutorial_repository").join(m),
            &dir.join(m),
        );
    }
}

fn load(dir: &Path, control: ModelControl, gate: &Arc<Gate>) -> Repository {
    let gate = gate.clone();
    Repository::builder(dir)
        .model_control(control)
        .startup_models(["*"])
        .native_backend("held", move |_| {
            Ok(Box::new(Held(gate.clone())) as Box<dyn NativeModel>)
        })
        .load()
        .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    repo: Repository,
    server: Server,
}

impl Fixture {
    fn new(control: ModelControl, opts: ServerOptions) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        test_repo(dir.path());
        let gate = Arc::new(Gate::default());
        gate.open();
        let repo = load(dir.path(), control, &gate);
        let server = Server::start(repo.clone(), opts).unwrap();
        Fixture {
            _dir: dir,
            repo,
            server,
        }
    }

    fn http(&self) -> SocketAddr {
        self.server.http_addr().unwrap()
    }

    fn grpc_url(&self) -> String {
        format!("http://{}", self.server.grpc_addr().unwrap())
    }
}

fn default_fixture() -> Fixture {
    Fixture::new(ModelControl::None, ServerOptions::loopback())
}

// ---------------------------------------------------------------- HTTP

#[test]
fn health_metadata_config_and_index_over_http() {
    let f = default_fixture();
    let a = f.http();
    assert_eq!(get(a, "/v2/health/live").status, 200);
    assert_eq!(get(a, "/v2/health/ready").status, 200);
    let meta = get(a, "/v2").json();
    assert_eq!(meta["name"], "modelyard");
    let ext: Vec<&str> = meta["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for e in [
        "binary_tensor_data",
        "classification",
        "model_repository",
        "statistics",
    ] {
        assert!(ext.contains(&e), "{ext:?}");
    }
    assert!(!ext.contains(&"system_shared_memory"), "{ext:?}");

    let m = get(a, "/v2/models/text_recognition").json();
    assert_eq!(m["name"], "text_recognition");
    assert_eq!(m["versions"], json!(["1"]));
    assert_eq!(m["platform"], "onnxruntime_onnx");
    assert_eq!(
        m["inputs"],
        json!([{"name": "input.1", "datatype": "FP32", "shape": [1, 1, 32, 100]}])
    );
    assert_eq!(
        m["outputs"],
        json!([{"name": "308", "datatype": "FP32", "shape": [1, 26, 37]}])
    );
    // A batching model's shapes start with -1; a version in the path is reported alone.
    let m = get(a, "/v2/models/id_fp32/versions/1").json();
    assert_eq!(m["inputs"][0]["shape"], json!([-1, -1]));
    assert_eq!(m["versions"], json!(["1"]));

    assert_eq!(get(a, "/v2/models/text_recognition/ready").status, 200);
    assert_eq!(
        get(a, "/v2/models/text_recognition/versions/1/ready").status,
        200
    );
    assert_eq!(
        get(a, "/v2/models/text_recognition/versions/7/ready").status,
        400
    );
    assert_eq!(get(a, "/v2/models/nope/ready").status, 400);

    // The config as Triton writes it: proto field names, enum names, numbers, defaults.
    let c = get(a, "/v2/models/id_fp32/config").json();
    assert_eq!(c["name"], "id_fp32");
    assert_eq!(c["max_batch_size"], 8);
    assert_eq!(c["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(c["input"][0]["dims"], json!([-1]));
    assert_eq!(c["instance_group"][0]["kind"], "KIND_CPU");
    let c = get(a, "/v2/models/text_detection/config").json();
    assert_eq!(c["output"].as_array().unwrap().len(), 2, "{c}");

    let index = post_json(a, "/v2/repository/index", &json!({}));
    assert_eq!(index.status, 200);
    let rows = index.json();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"text_detection") && names.contains(&"held"),
        "{names:?}"
    );
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["state"] == "READY" && r["version"] == "1"));
    // An empty body is allowed, as Triton's client sends none.
    assert_eq!(
        call(a, "POST", "/v2/repository/index", &[], b"").status,
        200
    );

    let nope = get(a, "/v2/models/nope");
    assert_eq!(nope.status, 404);
    assert!(
        nope.error()
            .contains("Request for unknown model: 'nope' is not found"),
        "{}",
        nope.error()
    );
    assert_eq!(get(a, "/v2/nothing/here").status, 404);
    let shm = post_json(a, "/v2/systemsharedmemory/region/r/register", &json!({}));
    assert_eq!(shm.status, 501);
    assert!(shm.error().contains("not supported"), "{}", shm.error());
}

/// The tutorial's recogniser over HTTP with binary tensors and with JSON tensors: the same
/// numbers as ONNX Runtime's (committed reference), within float tolerance.
#[test]
fn infer_binary_and_json_match_onnx_runtime() {
    let f = default_fixture();
    let a = f.http();
    let r = reference("str_1x1x32x100");
    let (name, input) = &r.inputs[0];
    let (out_name, expected) = &r.outputs[0];
    let head = json!({
        "id": "req-7",
        "inputs": [{"name": name, "shape": input.shape(), "datatype": "FP32", "parameters": {"binary_data_size": input.len() * 4}}],
        "outputs": [{"name": out_name, "parameters": {"binary_data": true}}],
    });
    let (headers, body) = binary_request(&head, &[&f32_bytes(input)]);
    let reply = call(
        a,
        "POST",
        "/v2/models/text_recognition/infer",
        &headers,
        &body,
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    let j = reply.json();
    assert_eq!(
        (
            j["id"].as_str(),
            j["model_name"].as_str(),
            j["model_version"].as_str()
        ),
        (Some("req-7"), Some("text_recognition"), Some("1"))
    );
    let outs = binary_outputs(&reply);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].1, expected.shape());
    let got = ndarray::ArrayD::from_shape_vec(outs[0].1.clone(), f32s(&outs[0].2)).unwrap();
    let d = max_abs_diff(&got.view(), expected);
    assert!(d < 1e-3, "binary: max |diff| vs ONNX Runtime {d}");

    // JSON in (nested, as numpy's tolist() writes it), JSON out.
    let nested: Value = serde_json::to_value(
        input
            .outer_iter()
            .map(|a| {
                a.outer_iter()
                    .map(|b| {
                        b.outer_iter()
                            .map(|c| c.iter().copied().collect::<Vec<f32>>())
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let reply = post_json(
        a,
        "/v2/models/text_recognition/infer",
        &json!({
            "inputs": [{"name": name, "shape": input.shape(), "datatype": "FP32", "data": nested}],
        }),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let j = reply.json();
    assert_eq!(j["outputs"][0]["name"], *out_name);
    let data: Vec<f32> = j["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let got = ndarray::ArrayD::from_shape_vec(expected.shape().to_vec(), data).unwrap();
    let d = max_abs_diff(&got.view(), expected);
    assert!(d < 1e-3, "json: max |diff| vs ONNX Runtime {d}");

    // The detector: two outputs, all binary by the request-level parameter.
    let r = reference("east_1x64x96");
    let (name, input) = &r.inputs[0];
    let head = json!({
        "inputs": [{"name": name, "shape": input.shape(), "datatype": "FP32", "parameters": {"binary_data_size": input.len() * 4}}],
        "parameters": {"binary_data_output": true},
    });
    let (headers, body) = binary_request(&head, &[&f32_bytes(input)]);
    let reply = call(
        a,
        "POST",
        "/v2/models/text_detection/infer",
        &headers,
        &body,
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let outs = binary_outputs(&reply);
    assert_eq!(outs.len(), 2);
    for (oname, expected) in &r.outputs {
        let (_, shape, bytes) = outs.iter().find(|(n, _, _)| n == oname).unwrap();
        let got = ndarray::ArrayD::from_shape_vec(shape.clone(), f32s(bytes)).unwrap();
        let scale = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
        let d = max_abs_diff(&got.view(), expected);
        assert!(
            d < 1e-3 * scale,
            "{oname}: max |diff| vs ONNX Runtime {d} (scale {scale})"
        );
    }
}

/// Every data type round-trips through JSON and through binary, as the identity backend
/// returns its input.
#[test]
fn every_datatype_round_trips_json_and_binary() {
    let f = default_fixture();
    let a = f.http();
    let cases: &[(&str, &str, Value, Vec<u8>)] = &[
        ("id_bool", "BOOL", json!([true, false, true]), vec![1, 0, 1]),
        (
            "id_int8",
            "INT8",
            json!([-128, 0, 127]),
            vec![0x80, 0, 0x7f],
        ),
        (
            "id_uint64",
            "UINT64",
            json!([0u64, 1, u64::MAX]),
            [0u64, 1, u64::MAX]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        (
            "id_fp16",
            "FP16",
            json!([1.5, -2.0, 0.25]),
            [1.5f32, -2.0, 0.25]
                .iter()
                .flat_map(|v| modelyard::half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        (
            "id_fp64",
            "FP64",
            json!([1e300, -0.5, 3.25]),
            [1e300f64, -0.5, 3.25]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        (
            "id_bytes",
            "BYTES",
            json!(["a", "", "héllo"]),
            [&b"a"[..], b"", "héllo".as_bytes()]
                .iter()
                .flat_map(|s| {
                    (s.len() as u32)
                        .to_le_bytes()
                        .into_iter()
                        .chain(s.iter().copied())
                })
                .collect(),
        ),
    ];
    for (model, dt, data, bytes) in cases {
        let path = format!("/v2/models/{model}/infer");
        let j = post_json(
            a,
            &path,
            &json!({"inputs": [{"name": "IN", "shape": [3], "datatype": dt, "data": data}]}),
        );
        assert_eq!(
            j.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&j.body)
        );
        let out = &j.json()["outputs"][0];
        assert_eq!(
            (out["datatype"].as_str(), &out["shape"], &out["data"]),
            (Some(*dt), &json!([3]), data),
            "{model}"
        );

        let head = json!({
            "inputs": [{"name": "IN", "shape": [3], "datatype": dt, "parameters": {"binary_data_size": bytes.len()}}],
            "outputs": [{"name": "OUT", "parameters": {"binary_data": true}}],
        });
        let (headers, body) = binary_request(&head, &[bytes]);
        let r = call(a, "POST", &path, &headers, &body);
        assert_eq!(
            r.status,
            200,
            "{model}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(binary_outputs(&r)[0].2, *bytes, "{model} binary");
    }
    // Raw binary (Inference-Header-Content-Length: 0): one input, shape from the size, batch 1.
    let raw: Vec<u8> = [1f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let r = call(
        a,
        "POST",
        "/v2/models/id_fp32/infer",
        &[("Inference-Header-Content-Length", "0".into())],
        &raw,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let outs = binary_outputs(&r);
    assert_eq!((outs[0].1.clone(), outs[0].2.clone()), (vec![1, 4], raw));
}

#[test]
fn classification_and_requested_outputs() {
    let f = default_fixture();
    let a = f.http();
    let r = post_json(
        a,
        "/v2/models/scores/infer",
        &json!({
            "inputs": [{"name": "IN", "shape": [4], "datatype": "FP32", "data": [0.1, 0.7, 0.05, 0.15]}],
            "outputs": [{"name": "OUT", "parameters": {"classification": 2}}],
        }),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let out = &r.json()["outputs"][0];
    assert_eq!(out["datatype"], "BYTES");
    assert_eq!(out["data"], json!(["0.700000:1:dog", "0.150000:3:fish"]));
    let r = post_json(
        a,
        "/v2/models/scores/infer",
        &json!({
            "inputs": [{"name": "IN", "shape": [1], "datatype": "FP32", "data": [1.0]}],
            "outputs": [{"name": "NOPE"}],
        }),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("NOPE"), "{}", r.error());
}

#[test]
fn compressed_request_and_response_bodies() {
    let f = default_fixture();
    let a = f.http();
    let body = json!({"inputs": [{"name": "IN", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}).to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zl.write_all(body.as_bytes()).unwrap();
    let zl = zl.finish().unwrap();
    for (enc, bytes) in [("gzip", &gz), ("deflate", &zl)] {
        let r = call(
            a,
            "POST",
            "/v2/models/id_fp32/infer",
            &[
                ("Content-Encoding", enc.into()),
                ("Accept-Encoding", enc.into()),
            ],
            bytes,
        );
        assert_eq!(r.status, 200, "{enc}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-encoding"), Some(enc));
        let mut plain = Vec::new();
        match enc {
            "gzip" => flate2::read::GzDecoder::new(&r.body[..])
                .read_to_end(&mut plain)
                .unwrap(),
            _ => flate2::read::ZlibDecoder::new(&r.body[..])
                .read_to_end(&mut plain)
                .unwrap(),
        };
        let j: Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(j["outputs"][0]["data"], json!([1.0, 2.0, 3.0]), "{enc}");
    }
    let r = call(
        a,
        "POST",
        "/v2/models/id_fp32/infer",
        &[("Content-Encoding", "gzip".into())],
        b"not gzip",
    );
    assert_eq!(r.status, 400);
    let r = call(
        a,
        "POST",
        "/v2/models/id_fp32/infer",
        &[("Content-Encoding", "br".into())],
        body.as_bytes(),
    );
    assert_eq!(r.status, 501);
}

/// Bad requests get a 4xx with a message, and the server keeps answering right after each.
#[test]
fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let opts = ServerOptions {
        max_input_bytes: 1 << 20,
        read_timeout: Duration::from_millis(500),
        ..ServerOptions::loopback()
    };
    let f = Fixture::new(ModelControl::None, opts);
    let a = f.http();
    let good = json!({"inputs": [{"name": "IN", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]});
    let still_serving = |what: &str| {
        let r = post_json(a, "/v2/models/id_fp32/infer", &good);
        assert_eq!(r.status, 200, "after {what}");
        assert_eq!(
            r.json()["outputs"][0]["data"],
            json!([1.0, 2.0]),
            "after {what}"
        );
    };
    let infer = "/v2/models/id_fp32/infer";
    let input = |shape: Value, dt: &str, data: Value| json!({"inputs": [{"name": "IN", "shape": shape, "datatype": dt, "data": data}]});
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", infer, b"{\"inputs\": [".to_vec(), 400, "failed to parse the request JSON"),
        ("not an object", infer, b"[1, 2]".to_vec(), 400, "must be a JSON object"),
        ("no inputs", infer, b"{}".to_vec(), 400, "no 'inputs'"),
        ("data shorter than the shape", infer, input(json!([1, 3]), "FP32", json!([1.0])).to_string().into_bytes(), 400, "holds 3 elements, the data has 1"),
        ("data longer than the shape", infer, input(json!([1, 1]), "FP32", json!([1.0, 2.0])).to_string().into_bytes(), 400, "holds 1 elements, the data has 2"),
        ("negative shape", infer, input(json!([1, -2]), "FP32", json!([])).to_string().into_bytes(), 400, "negative dimension"),
        ("huge shape", infer, input(json!([1i64 << 40, 1i64 << 40]), "FP32", json!([])).to_string().into_bytes(), 400, "too many elements"),
        ("wrong datatype", infer, input(json!([1, 2]), "INT32", json!([1, 2])).to_string().into_bytes(), 400, "INT32"),
        ("unknown datatype", infer, input(json!([1, 2]), "FLOAT", json!([1, 2])).to_string().into_bytes(), 400, "invalid datatype 'FLOAT'"),
        ("data of the wrong type", infer, input(json!([1, 2]), "FP32", json!(["a", "b"])).to_string().into_bytes(), 400, "is not a FP32 value"),
        ("unknown tensor", infer, json!({"inputs": [{"name": "NOPE", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}).to_string().into_bytes(), 400, "NOPE"),
        ("unknown model", "/v2/models/nope/infer", good.to_string().into_bytes(), 404, "'nope' is not found"),
        ("unknown version", "/v2/models/id_fp32/versions/9/infer", good.to_string().into_bytes(), 404, "version 9 is not found"),
        ("bad version", "/v2/models/id_fp32/versions/x/infer", good.to_string().into_bytes(), 400, "version should be an integral value"),
        ("sequence parameters", infer, json!({"inputs": good["inputs"], "parameters": {"sequence_id": 3}}).to_string().into_bytes(), 501, "sequence batcher"),
    ];
    for (what, path, body, status, words) in cases {
        let r = call(a, "POST", path, &[], &body);
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            r.error().contains(words),
            "{what}: '{words}' not in '{}'",
            r.error()
        );
        still_serving(what);
    }

    // Binary sizes that disagree with the body.
    let head = json!({"inputs": [{"name": "IN", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]});
    let (mut headers, body) = binary_request(&head, &[&[0u8; 8]]);
    headers[0].1 = (body.len() + 10).to_string();
    let r = call(a, "POST", infer, &headers, &body);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("past the end"), "{}", r.error());
    let (headers, body) = binary_request(&head, &[&[0u8; 4]]);
    let r = call(a, "POST", infer, &headers, &body);
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("binary_data_size 8 is past the end"),
        "{}",
        r.error()
    );
    let (headers, body) = binary_request(&head, &[&[0u8; 12]]);
    assert_eq!(call(a, "POST", infer, &headers, &body).status, 400);
    still_serving("binary sizes");

    // An oversized body is refused from its Content-Length, before it is sent.
    let mut s = connect(a);
    s.write_all(
        format!(
            "POST {infer} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            64 << 20
        )
        .as_bytes(),
    )
    .unwrap();
    let r = read_reply(&mut s).unwrap();
    assert_eq!(r.status, 413);
    assert!(
        r.error().contains("larger than the server's limit"),
        "{}",
        r.error()
    );
    // ... and a chunked one as soon as it passes the limit.
    let mut s = connect(a);
    s.write_all(
        format!("POST {infer} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let chunk = vec![b' '; 256 << 10];
    for _ in 0..5 {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|_| s.write_all(&chunk))
            .and_then(|_| s.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
    }
    let r = read_reply(&mut s).unwrap();
    assert_eq!(r.status, 413);
    // A gzip bomb is cut at the limit too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 4 << 20]).unwrap();
    let r = call(
        a,
        "POST",
        infer,
        &[("Content-Encoding", "gzip".into())],
        &gz.finish().unwrap(),
    );
    assert_eq!(r.status, 413);
    still_serving("oversized bodies");

    // A client that stops half-way through its headers, or its body, is cut off.
    let started = Instant::now();
    let mut s = connect(a);
    s.write_all(b"POST /v2/models/id_fp32/infer HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut s = connect(a);
    s.write_all(
        format!("POST {infer} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{").as_bytes(),
    )
    .unwrap();
    let r = read_reply(&mut s).unwrap();
    assert_eq!(r.status, 408);
    assert!(
        r.error().contains("timed out reading the request body"),
        "{}",
        r.error()
    );
    // A connection closed mid-request.
    let mut s = connect(a);
    s.write_all(
        format!("POST {infer} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{").as_bytes(),
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    drop(s);
    // Garbage that is not HTTP.
    let mut s = connect(a);
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        .unwrap();
    let _ = s.read(&mut buf);
    still_serving("slow, half-closed and garbage connections");
}

#[test]
fn restricted_apis_need_their_header() {
    let restricted = Restriction {
        groups: vec![ApiGroup::ModelRepository, ApiGroup::Statistics],
        key: "admin-key".into(),
        value: "secret".into(),
    };
    let opts = ServerOptions {
        http_restricted: vec![restricted.clone()],
        grpc_restricted: vec![restricted],
        ..ServerOptions::loopback()
    };
    let f = Fixture::new(ModelControl::Explicit, opts);
    let a = f.http();
    for (method, path) in [
        ("POST", "/v2/repository/index"),
        ("GET", "/v2/models/stats"),
        ("GET", "/v2/models/id_fp32/stats"),
        ("POST", "/v2/repository/models/id_fp32/unload"),
    ] {
        let r = call(a, method, path, &[], b"");
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(
            r.error(),
            "This API is restricted, expecting header 'admin-key'",
            "{path}"
        );
        let r = call(a, method, path, &[("admin-key", "wrong".into())], b"");
        assert_eq!(r.status, 403, "{path}");
    }
    assert_eq!(
        call(
            a,
            "POST",
            "/v2/repository/index",
            &[("Admin-Key", "secret".into())],
            b""
        )
        .status,
        200
    );
    // Groups left open stay open.
    assert_eq!(get(a, "/v2/health/ready").status, 200);
    assert_eq!(get(a, "/v2/models/id_fp32").status, 200);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = grpc_client(f.grpc_url()).await;
        let e = c
            .repository_index(proto::RepositoryIndexRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "This protocol is restricted, expecting header 'admin-key'"
        );
        let mut req = tonic::Request::new(proto::RepositoryIndexRequest::default());
        req.metadata_mut()
            .insert("admin-key", "secret".parse().unwrap());
        assert!(!c
            .repository_index(req)
            .await
            .unwrap()
            .into_inner()
            .models
            .is_empty());
        assert!(
            c.server_live(proto::ServerLiveRequest {})
                .await
                .unwrap()
                .into_inner()
                .live
        );
    });
}

#[test]
fn load_and_unload_follow_the_model_control_mode() {
    // Mode none: refused, as Triton refuses it.
    let f = default_fixture();
    let r = post_json(f.http(), "/v2/repository/models/id_fp32/unload", &json!({}));
    assert_eq!(r.status, 503);
    assert!(
        r.error()
            .contains("explicit model load / unload is not allowed"),
        "{}",
        r.error()
    );
    drop(f);

    let f = Fixture::new(ModelControl::Explicit, ServerOptions::loopback());
    let a = f.http();
    let r = post_json(
        a,
        "/v2/repository/models/id_fp32/unload",
        &json!({"parameters": {"unload_dependents": false}}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(a, "/v2/models/id_fp32/ready").status, 400);
    let r = post_json(
        a,
        "/v2/models/id_fp32/infer",
        &json!({"inputs": [{"name": "IN", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}),
    );
    assert_eq!(r.status, 503);
    assert!(
        r.error().contains("has no available versions"),
        "{}",
        r.error()
    );
    let index = post_json(a, "/v2/repository/index", &json!({"ready": true})).json();
    assert!(
        index
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["name"] != "id_fp32"),
        "{index}"
    );
    assert_eq!(
        call(a, "POST", "/v2/repository/models/id_fp32/load", &[], b"").status,
        200
    );
    assert_eq!(get(a, "/v2/models/id_fp32/ready").status, 200);

    // Loading what is not in the repository, or with Triton's config and file overrides,
    // is refused: a request cannot make the server read files of its choosing.
    let r = post_json(a, "/v2/repository/models/..%2F..%2Fetc/load", &json!({}));
    assert_eq!(r.status, 404);
    assert!(
        r.error().contains("failed to poll from model repository"),
        "{}",
        r.error()
    );
    for params in [
        json!({"config": "{\"backend\": \"identity\"}"}),
        json!({"file:1/model.onnx": "AAAA"}),
    ] {
        let r = post_json(
            a,
            "/v2/repository/models/id_fp32/load",
            &json!({"parameters": params}),
        );
        assert_eq!(r.status, 501, "{params}");
        assert!(r.error().contains("not supported"), "{}", r.error());
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = grpc_client(f.grpc_url()).await;
        c.repository_model_unload(proto::RepositoryModelUnloadRequest {
            model_name: "id_bytes".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let ready = c
            .model_ready(proto::ModelReadyRequest {
                name: "id_bytes".into(),
                version: String::new(),
            })
            .await
            .unwrap();
        assert!(!ready.into_inner().ready);
        c.repository_model_load(proto::RepositoryModelLoadRequest {
            model_name: "id_bytes".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let ready = c
            .model_ready(proto::ModelReadyRequest {
                name: "id_bytes".into(),
                version: String::new(),
            })
            .await
            .unwrap();
        assert!(ready.into_inner().ready);
        let e = c
            .repository_model_load(proto::RepositoryModelLoadRequest {
                model_name: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    });
}

/// Statistics and metrics count what was served, with Triton's names.
#[test]
fn statistics_and_metrics_count_the_requests() {
    let f = default_fixture();
    let a = f.http();
    for i in 0..5 {
        let r = post_json(
            a,
            "/v2/models/id_fp32/infer",
            &json!({"inputs": [{"name": "IN", "shape": [2, 1], "datatype": "FP32", "data": [i as f32, 1.0]}]}),
        );
        assert_eq!(r.status, 200);
    }
    let bad = post_json(
        a,
        "/v2/models/id_fp32/infer",
        &json!({"inputs": [{"name": "IN", "shape": [9, 1], "datatype": "FP32", "data": vec![0.0; 9]}]}),
    );
    assert_eq!(bad.status, 400, "batch 9 > max_batch_size 8");
    let s = get(a, "/v2/models/id_fp32/stats").json();
    let m = &s["model_stats"][0];
    assert_eq!(
        (m["name"].as_str(), m["version"].as_str()),
        (Some("id_fp32"), Some("1"))
    );
    assert_eq!(m["inference_count"], 10);
    assert_eq!(m["execution_count"], 5);
    assert_eq!(m["inference_stats"]["success"]["count"], 5);
    assert_eq!(m["inference_stats"]["fail"]["count"], 1);
    assert_eq!(m["batch_stats"][0]["batch_size"], 2);
    let own = f.repo.model("id_fp32").unwrap().statistics();
    assert_eq!(
        m["inference_stats"]["compute_infer"]["ns"],
        own.compute_infer.ns
    );
    let all = get(a, "/v2/models/stats").json();
    assert_eq!(
        all["model_stats"].as_array().unwrap().len(),
        f.repo.statistics().len()
    );
    assert_eq!(get(a, "/v2/models/nope/stats").status, 404);

    let metrics = get(f.server.metrics_addr().unwrap(), "/metrics");
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    for line in [
        "# TYPE nv_inference_request_success counter",
        "nv_inference_request_success{model=\"id_fp32\",version=\"1\"} 5",
        "nv_inference_request_failure{model=\"id_fp32\",version=\"1\"} 1",
        "nv_inference_count{model=\"id_fp32\",version=\"1\"} 10",
        "nv_inference_exec_count{model=\"id_fp32\",version=\"1\"} 5",
        "nv_inference_request_success{model=\"text_detection\",version=\"1\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "'{line}' not in:\n{text}");
    }
    for name in [
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
    ] {
        assert!(
            text.contains(&format!("{name}{{model=\"id_fp32\",version=\"1\"}} ")),
            "{name}"
        );
    }
    assert_eq!(
        get(f.server.metrics_addr().unwrap(), "/v2/health/live").status,
        404
    );
}

// ---------------------------------------------------------------- gRPC

#[test]
fn every_grpc_method_answers_like_triton() {
    let f = default_fixture();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = grpc_client(f.grpc_url()).await;
        assert!(
            c.server_live(proto::ServerLiveRequest {})
                .await
                .unwrap()
                .into_inner()
                .live
        );
        assert!(
            c.server_ready(proto::ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready
        );
        let meta = c
            .server_metadata(proto::ServerMetadataRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(meta.name, "modelyard");
        assert!(meta.extensions.iter().any(|e| e == "binary_tensor_data"));
        let m = c
            .model_metadata(proto::ModelMetadataRequest {
                name: "text_recognition".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (m.platform.as_str(), m.versions.clone()),
            ("onnxruntime_onnx", vec!["1".to_string()])
        );
        assert_eq!(m.inputs[0].shape, [1, 1, 32, 100]);
        let cfg = c
            .model_config(proto::ModelConfigRequest {
                name: "id_fp32".into(),
                version: "1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cfg.config.unwrap().max_batch_size, 8);
        let e = c
            .model_config(proto::ModelConfigRequest {
                name: "nope".into(),
                version: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("'nope' is not found"));

        // ModelInfer with raw contents, as tritonclient sends them: ONNX Runtime's numbers.
        let r = reference("str_1x1x32x100");
        let (name, input) = &r.inputs[0];
        let (out_name, expected) = &r.outputs[0];
        let req = proto::ModelInferRequest {
            model_name: "text_recognition".into(),
            id: "g1".into(),
            inputs: vec![proto::model_infer_request::InferInputTensor {
                name: name.clone(),
                datatype: "FP32".into(),
                shape: input.shape().iter().map(|&d| d as i64).collect(),
                ..Default::default()
            }],
            raw_input_contents: vec![f32_bytes(input)],
            ..Default::default()
        };
        let resp = c.model_infer(req).await.unwrap().into_inner();
        assert_eq!(
            (
                resp.model_name.as_str(),
                resp.model_version.as_str(),
                resp.id.as_str()
            ),
            ("text_recognition", "1", "g1")
        );
        assert_eq!(resp.outputs[0].name, *out_name);
        let got = ndarray::ArrayD::from_shape_vec(
            expected.shape().to_vec(),
            f32s(&resp.raw_output_contents[0]),
        )
        .unwrap();
        let d = max_abs_diff(&got.view(), expected);
        assert!(d < 1e-3, "gRPC: max |diff| vs ONNX Runtime {d}");

        // Typed contents, classification, and the errors' codes.
        let typed = |model: &str, dt: &str, contents: proto::InferTensorContents, n: i64| {
            proto::ModelInferRequest {
                model_name: model.into(),
                inputs: vec![proto::model_infer_request::InferInputTensor {
                    name: "IN".into(),
                    datatype: dt.into(),
                    shape: vec![n],
                    contents: Some(contents),
                    ..Default::default()
                }],
                ..Default::default()
            }
        };
        let resp = c
            .model_infer(typed(
                "id_bytes",
                "BYTES",
                proto::InferTensorContents {
                    bytes_contents: vec![b"ab".to_vec(), b"c".to_vec()],
                    ..Default::default()
                },
                2,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.raw_output_contents[0],
            [2, 0, 0, 0, b'a', b'b', 1, 0, 0, 0, b'c']
        );
        let mut req = typed(
            "scores",
            "FP32",
            proto::InferTensorContents {
                fp32_contents: vec![0.1, 0.7, 0.05, 0.15],
                ..Default::default()
            },
            4,
        );
        let mut params = std::collections::HashMap::new();
        params.insert(
            "classification".to_string(),
            proto::InferParameter {
                parameter_choice: Some(proto::infer_parameter::ParameterChoice::Int64Param(1)),
            },
        );
        req.outputs = vec![proto::model_infer_request::InferRequestedOutputTensor {
            name: "OUT".into(),
            parameters: params,
        }];
        let resp = c.model_infer(req).await.unwrap().into_inner();
        assert_eq!(resp.outputs[0].datatype, "BYTES");
        assert_eq!(&resp.raw_output_contents[0][4..], b"0.700000:1:dog");
        let e = c
            .model_infer(typed(
                "id_int8",
                "INT8",
                proto::InferTensorContents {
                    int_contents: vec![1, 300],
                    ..Default::default()
                },
                2,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("does not fit INT8"), "{}", e.message());
        let e = c
            .model_infer(typed(
                "id_fp32",
                "FP32",
                proto::InferTensorContents {
                    fp32_contents: vec![1.0],
                    ..Default::default()
                },
                3,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = c
            .model_infer(typed("nope", "FP32", Default::default(), 1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);

        let stats = c
            .model_statistics(proto::ModelStatisticsRequest {
                name: "text_recognition".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let s = &stats.model_stats[0];
        assert_eq!(
            (
                s.inference_count,
                s.inference_stats
                    .as_ref()
                    .unwrap()
                    .success
                    .as_ref()
                    .unwrap()
                    .count
            ),
            (1, 1)
        );
        let index = c
            .repository_index(proto::RepositoryIndexRequest {
                ready: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(index.models.len(), IDENTITY.len() + 2);
    });
}

// ---------------------------------------------------------------- load and shutdown

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 16 clients at once over keep-alive HTTP and over gRPC: every answer is the client's own.
#[test]
fn sixteen_concurrent_clients_get_their_own_answers() {
    let f = default_fixture();
    let a = f.http();
    const CLIENTS: usize = 16;
    const EACH: usize = 50;
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = connect(a);
                let mut times = Vec::new();
                for i in 0..EACH {
                    let v = (c * 1000 + i) as f32;
                    let body = json!({"inputs": [{"name": "IN", "shape": [1, 2], "datatype": "FP32", "data": [v, -v]}]}).to_string();
                    let t = Instant::now();
                    write_request(&mut s, "POST", "/v2/models/id_fp32/infer", &[], body.as_bytes()).unwrap();
                    let r = read_reply(&mut s).unwrap();
                    times.push(t.elapsed());
                    assert_eq!(r.status, 200);
                    assert_eq!(r.json()["outputs"][0]["data"], json!([v, -v]));
                }
                times
            })
        })
        .collect();
    let mut http: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    http.sort();

    let url = f.grpc_url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut grpc: Vec<Duration> = rt.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut client = grpc_client(url).await;
                    let mut times = Vec::new();
                    for i in 0..EACH {
                        let v = (c * 1000 + i) as f32;
                        let req = proto::ModelInferRequest {
                            model_name: "id_fp32".into(),
                            inputs: vec![proto::model_infer_request::InferInputTensor {
                                name: "IN".into(),
                                datatype: "FP32".into(),
                                shape: vec![1, 2],
                                ..Default::default()
                            }],
                            raw_input_contents: vec![[v, -v]
                                .iter()
                                .flat_map(|x| x.to_le_bytes())
                                .collect()],
                            ..Default::default()
                        };
                        let t = Instant::now();
                        let resp = client.model_infer(req).await.unwrap().into_inner();
                        times.push(t.elapsed());
                        assert_eq!(f32s(&resp.raw_output_contents[0]), [v, -v]);
                    }
                    times
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    grpc.sort();
    eprintln!(
        "{CLIENTS} clients x {EACH}: HTTP p50 {:?} p99 {:?}; gRPC p50 {:?} p99 {:?} (a debug of the latency, not a claim: see benches/serving.rs)",
        percentile(&http, 0.5), percentile(&http, 0.99), percentile(&grpc, 0.5), percentile(&grpc, 0.99)
    );
    let s = f.repo.model("id_fp32").unwrap().statistics();
    assert_eq!(s.success.count as usize, 2 * CLIENTS * EACH);
}

/// A shutdown lets the request in flight finish, then stops accepting.
#[test]
fn shutdown_finishes_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    test_repo(dir.path());
    let gate = Arc::new(Gate::default());
    let repo = load(dir.path(), ModelControl::None, &gate);
    let server = Server::start(repo, ServerOptions::loopback()).unwrap();
    let a = server.http_addr().unwrap();
    // Warmup-free model: the held request waits at the gate.
    let pending = std::thread::spawn(move || {
        post_json(
            a,
            "/v2/models/held/infer",
            &json!({"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": [1.0, 2.5]}]}),
        )
    });
    gate.wait_for(1);
    let stopper = std::thread::spawn(move || server.shutdown());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !stopper.is_finished(),
        "shutdown returned with a request in flight"
    );
    gate.open();
    let r = pending.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["outputs"][0]["data"], json!([2.0, 5.0]));
    stopper.join().unwrap();
    assert!(
        TcpStream::connect(a).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn an_address_in_use_is_an_error() {
    let f = default_fixture();
    let taken = ServerOptions {
        http: Some(f.http()),
        grpc: None,
        metrics: None,
        ..ServerOptions::default()
    };
    let e = Server::start(f.repo.clone(), taken).unwrap_err();
    assert!(
        e.to_string().contains("failed to start HTTP service"),
        "{e}"
    );
}

// ---------------------------------------------------------------- the binary

/// `modelyard serve` with tritonserver's flags: it prints where it listens, answers, and
/// exits 0 after SIGTERM; a bad flag exits 2 with a message.
#[test]
fn the_binary_serves_and_stops_on_sigterm() {
    let exe = env!("CARGO_BIN_EXE_modelyard");
    let bad = std::process::Command::new(exe)
        .args(["serve", "--model-repository", "x", "--frobnicate", "1"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown option '--frobnicate'"));
    let missing = std::process::Command::new(exe)
        .args([
            "serve",
            "--model-repository",
            "/no/such/repo",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(
        missing.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let mut child = std::process::Command::new(exe)
        .args(["serve", "--model-repository"])
        .arg(fixtures().join("tutorial_repository"))
        .args([
            "--http-port=0",
            "--grpc-port=0",
            "--metrics-port=0",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut http = None;
    let mut seen = String::new();
    while http.is_none() {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() == 0 {
            panic!("the server ended: {seen}");
        }
        seen.push_str(&line);
        if let Some(a) = line.trim().strip_prefix("Started HTTPService at ") {
            http = Some(a.parse::<SocketAddr>().unwrap());
        }
    }
    let a = http.unwrap();
    assert_eq!(get(a, "/v2/health/ready").status, 200);
    assert_eq!(
        get(a, "/v2/models/text_detection").json()["inputs"][0]["name"],
        "input_images:0"
    );
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "{seen}{rest}");
    assert!(rest.contains("stopped"), "{rest}");
}

// ---------------------------------------------------------------- tritonclient

/// The Python that has `tritonclient` (the venv `.ci/run` makes), if any.
fn tritonclient_python() -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var_os("MODELYARD_TRITONCLIENT_PYTHON").map(std::path::PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyclient/bin/python")),
    ];
    candidates.into_iter().flatten().find(|p| {
        std::process::Command::new(p)
            .args([
                "-c",
                "import tritonclient.http, tritonclient.grpc, onnxruntime, numpy, PIL",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The tutorial's clients, unchanged in what they call: Part 1 (detection → crop →
/// recognition over `tritonclient.http` with binary tensors, on the tutorial-architecture
/// models, each answer checked against ONNX Runtime run by the script on the same model file)
/// and Part 5 (image bytes → `recognized_text` over `tritonclient.grpc` on the PaddleOCR
/// ensemble, checked against the same ensemble run in-process), plus the other calls
/// tritonclient makes (metadata, config, statistics, repository, errors).
#[test]
fn tritonclient_runs_the_tutorial_clients() {
    let Some(python) = tritonclient_python() else {
        common::skip("no Python with tritonclient, onnxruntime, numpy and pillow (bash .ci/run makes target/pyclient); tritonclient checks not run");
        return;
    };
    let part1 = Repository::builder(fixtures().join("tutorial_repository"))
        .load()
        .unwrap();
    let part5 = modelyard::ocr::steps::ppocr_steps(Repository::builder(
        fixtures().join("ensemble_repository_ppocr"),
    ))
    .load()
    .unwrap();
    let image = fixtures().join("images/sign_1280x720.png");
    let bytes = std::fs::read(&image).unwrap();
    let in_process = part5
        .model("ensemble_model")
        .unwrap()
        .infer([(
            "input_image",
            Tensor::from(ndarray::Array2::from_shape_vec((1, bytes.len()), bytes).unwrap()),
        )])
        .unwrap();
    let expected: Vec<String> = in_process
        .get("recognized_text")
        .unwrap()
        .bytes()
        .unwrap()
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        expected.iter().any(|t| t.contains("STATION")),
        "the sign reads NORTH STATION EXIT 12: {expected:?}"
    );

    let http = Server::start(
        part1,
        ServerOptions {
            grpc: None,
            metrics: None,
            ..ServerOptions::loopback()
        },
    )
    .unwrap();
    let grpc = Server::start(
        part5,
        ServerOptions {
            http: None,
            metrics: None,
            ..ServerOptions::loopback()
        },
    )
    .unwrap();
    let out = std::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/tutorial_clients.py"))
        .args([
            "--http",
            &http.http_addr().unwrap().to_string(),
            "--grpc",
            &grpc.grpc_addr().unwrap().to_string(),
        ])
        .arg("--fixtures")
        .arg(fixtures())
        .arg("--image")
        .arg(&image)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tritonclient script failed:\n{stdout}\n{stderr}"
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let texts: Vec<String> = report["part5_texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, expected, "Part 5 over gRPC vs in-process");
    eprintln!("tritonclient report: {report}");
}
