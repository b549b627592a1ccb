//! What `modelyard serve` costs over an in-process `infer` (feature `server`): the same
//! request on the same model, in-process and over loopback, side by side in one run.
//!
//! - `front_end_tiny`: the identity model `id_fp32` (16 floats), one caller: in-process
//!   `Model::infer`, the same request's bytes echoed by a bare TCP thread over loopback (the
//!   floor any server has: two thread wake-ups a round trip), HTTP/REST with the binary
//!   tensor extension and with JSON tensors over one keep-alive connection, and gRPC
//!   `ModelInfer` over one HTTP/2 channel. After the group, p50/p99 per row and what each
//!   adds at p50 over the in-process call (goal: <= 50 us).
//! - `front_end_tiny_16_clients`: 16 callers at once (16 keep-alive connections; 16 tonic
//!   clients on one runtime); criterion's throughput is requests/s (goal: >= 10,000/s on 2
//!   cores).
//! - `front_end_recogniser`: the tutorial-architecture recogniser (1x1x32x100), one caller,
//!   in-process vs HTTP binary vs gRPC.
//!
//! `cargo bench --features server --bench front_end`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use modelyard::server::proto::{self, grpc_inference_service_client::GrpcInferenceServiceClient};
use modelyard::server::{Server, ServerOptions};
use modelyard::{Model, Repository, Tensor};
use ndarray::ArrayD;

const TINY: &str = r#"backend: "identity" max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]"#;

/// The tutorial's Part 2 recogniser config, on one CPU instance without a batching delay.
const RECOGNISER: &str = r#"backend: "onnxruntime" max_batch_size: 8
input [ { name: "input.1" data_type: TYPE_FP32 dims: [ 1, 32, 100 ] } ]
output [ { name: "308" data_type: TYPE_FP32 dims: [ 26, 37 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]"#;

/// One model's request, in every form a client sends it.
struct Request {
    model: String,
    input: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

impl Request {
    fn bytes(&self) -> Vec<u8> {
        self.values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn tensor(&self) -> (String, Tensor) {
        let x = ArrayD::from_shape_vec(self.shape.clone(), self.values.clone()).unwrap();
        (self.input.clone(), Tensor::from(x))
    }

    /// Triton's binary tensor extension: the JSON header, then the raw bytes.
    fn http_binary(&self) -> Vec<u8> {
        let raw = self.bytes();
        let head = serde_json::json!({
            "inputs": [{"name": self.input, "datatype": "FP32", "shape": self.shape,
                        "parameters": {"binary_data_size": raw.len()}}],
            "parameters": {"binary_data_output": true},
        })
        .to_string();
        let mut req = format!(
            "POST /v2/models/{}/infer HTTP/1.1\r\nHost: localhost\r\n\
             Inference-Header-Content-Length: {}\r\nContent-Length: {}\r\n\r\n",
            self.model,
            head.len(),
            head.len() + raw.len()
        )
        .into_bytes();
        req.extend_from_slice(head.as_bytes());
        req.extend_from_slice(&raw);
        req
    }

    fn http_json(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "inputs": [{"name": self.input, "datatype": "FP32", "shape": self.shape,
                        "data": self.values}],
        })
        .to_string();
        let mut req = format!(
            "POST /v2/models/{}/infer HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            self.model,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body.as_bytes());
        req
    }

    fn grpc(&self) -> proto::ModelInferRequest {
        proto::ModelInferRequest {
            model_name: self.model.clone(),
            inputs: vec![proto::model_infer_request::InferInputTensor {
                name: self.input.clone(),
                datatype: "FP32".into(),
                shape: self.shape.iter().map(|&d| d as i64).collect(),
                ..Default::default()
            }],
            raw_input_contents: vec![self.bytes()],
            ..Default::default()
        }
    }
}

/// A keep-alive HTTP/1.1 connection that sends a prepared request and reads the reply.
struct Http {
    out: TcpStream,
    inp: BufReader<TcpStream>,
    body: Vec<u8>,
}

impl Http {
    fn connect(addr: SocketAddr) -> Http {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Http {
            inp: BufReader::new(s.try_clone().unwrap()),
            out: s,
            body: Vec::new(),
        }
    }

    /// Sends `req`, reads the reply; panics unless it is a 200 (a bench of errors is no bench).
    fn call(&mut self, req: &[u8]) -> &[u8] {
        self.out.write_all(req).unwrap();
        let mut line = String::new();
        self.inp.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        let mut len = 0;
        loop {
            line.clear();
            self.inp.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        self.body.resize(len, 0);
        self.inp.read_exact(&mut self.body).unwrap();
        &self.body
    }
}

async fn grpc_client(url: String) -> GrpcInferenceServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    GrpcInferenceServiceClient::new(channel)
}

/// A thread that sends back every `len` bytes it receives, on one connection.
fn echo_server(len: usize) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; len];
        while s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {}
    });
    addr
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Collects each request's latency per row and prints p50/p99 after a group.
#[derive(Default)]
struct Latencies(Mutex<Vec<(String, Vec<Duration>)>>);

impl Latencies {
    fn record(&self, row: &str, d: Duration) {
        let mut rows = self.0.lock().unwrap();
        match rows.iter_mut().find(|(r, _)| r == row) {
            Some((_, v)) => v.push(d),
            None => rows.push((row.to_string(), vec![d])),
        }
    }

    fn report(self, title: &str, baseline: &str) {
        let mut rows = self.0.into_inner().unwrap();
        for (_, v) in &mut rows {
            v.sort();
        }
        let p50_of = |name: &str| {
            rows.iter()
                .find(|(r, _)| r == name)
                .map(|(_, v)| us(percentile(v, 0.5)))
        };
        let (base, echo) = (p50_of(baseline), p50_of("tcp_echo"));
        println!("\nlatency, {title}:");
        for (row, v) in &rows {
            let p50 = percentile(v, 0.5);
            let added = match (base, echo) {
                (Some(b), Some(e)) if row != baseline && row != "tcp_echo" => format!(
                    "  over in-process {:>7.1} us, over in-process + echo {:>7.1} us",
                    us(p50) - b,
                    us(p50) - b - e
                ),
                _ => String::new(),
            };
            println!(
                "  {row:<28} p50 {:>8.1} us  p99 {:>8.1} us  ({} requests){added}",
                us(p50),
                us(percentile(v, 0.99)),
                v.len()
            );
        }
    }
}

fn repository(dir: &Path) -> Repository {
    std::fs::create_dir_all(dir.join("id_fp32/1")).unwrap();
    std::fs::write(dir.join("id_fp32/config.pbtxt"), TINY).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tutorial_repository_part2/text_recognition");
    let dst = dir.join("text_recognition");
    std::fs::create_dir_all(dst.join("1")).unwrap();
    std::fs::write(dst.join("config.pbtxt"), RECOGNISER).unwrap();
    std::fs::copy(src.join("1/model.onnx"), dst.join("1/model.onnx")).unwrap();
    Repository::load(dir).unwrap()
}

/// One caller: in-process, HTTP binary, HTTP JSON (tiny only) and gRPC, each request timed.
fn one_caller(
    c: &mut Criterion,
    group: &str,
    model: &Model,
    server: &Server,
    req: &Request,
    json: bool,
) {
    let lat = Latencies::default();
    let mut g = c.benchmark_group(group);
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let input = req.tensor();
    g.bench_function("in_process", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let t = Instant::now();
                model.infer([input.clone()]).unwrap();
                lat.record("in_process", t.elapsed());
            }
            start.elapsed()
        })
    });
    // The floor: the same bytes over loopback to a thread that answers at once (two
    // threads woken per round trip, as for any server).
    let echo = echo_server(req.http_binary().len());
    let mut conn = TcpStream::connect(echo).unwrap();
    conn.set_nodelay(true).unwrap();
    let bytes = req.http_binary();
    let mut back = vec![0u8; bytes.len()];
    g.bench_function("tcp_echo", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let t = Instant::now();
                conn.write_all(&bytes).unwrap();
                conn.read_exact(&mut back).unwrap();
                lat.record("tcp_echo", t.elapsed());
            }
            start.elapsed()
        })
    });
    let addr = server.http_addr().unwrap();
    let mut rows = vec![("http_binary", req.http_binary())];
    if json {
        rows.push(("http_json", req.http_json()));
    }
    for (row, bytes) in rows {
        let mut conn = Http::connect(addr);
        g.bench_function(row, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let t = Instant::now();
                    conn.call(&bytes);
                    lat.record(row, t.elapsed());
                }
                start.elapsed()
            })
        });
    }
    // One caller's client on a runtime of its own thread (the HTTP/2 connection task runs
    // on the caller's thread: no client-side thread wake-ups, as for the HTTP rows).
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://{}", server.grpc_addr().unwrap());
    let mut client = local.block_on(async { grpc_client(url).await });
    let grpc = req.grpc();
    g.bench_function("grpc", |b| {
        b.iter_custom(|iters| {
            local.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let t = Instant::now();
                    client.model_infer(grpc.clone()).await.unwrap();
                    lat.record("grpc", t.elapsed());
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    lat.report(group, "in_process");
}

const CLIENTS: usize = 16;
/// Requests per client per criterion iteration.
const EACH: usize = 8;

/// 16 callers at once; each iteration is `CLIENTS * EACH` requests.
fn sixteen(c: &mut Criterion, server: &Server, rt: &tokio::runtime::Runtime, req: &Request) {
    let lat = Arc::new(Latencies::default());
    let group = "front_end_tiny_16_clients";
    let mut g = c.benchmark_group(group);
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements((CLIENTS * EACH) as u64));
    let addr = server.http_addr().unwrap();
    let bytes = Arc::new(req.http_binary());
    g.bench_function("http_binary", |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(CLIENTS + 1));
            let handles: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    let (barrier, bytes, lat) = (barrier.clone(), bytes.clone(), lat.clone());
                    std::thread::spawn(move || {
                        let mut conn = Http::connect(addr);
                        barrier.wait();
                        for _ in 0..iters as usize * EACH {
                            let t = Instant::now();
                            conn.call(&bytes);
                            lat.record("http_binary", t.elapsed());
                        }
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            for h in handles {
                h.join().unwrap();
            }
            start.elapsed()
        })
    });
    let url = format!("http://{}", server.grpc_addr().unwrap());
    let grpc = req.grpc();
    g.bench_function("grpc", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut clients = Vec::new();
                for _ in 0..CLIENTS {
                    clients.push(grpc_client(url.clone()).await);
                }
                let start = Instant::now();
                let tasks: Vec<_> = clients
                    .into_iter()
                    .map(|mut client| {
                        let (grpc, lat) = (grpc.clone(), lat.clone());
                        tokio::spawn(async move {
                            for _ in 0..iters as usize * EACH {
                                let t = Instant::now();
                                client.model_infer(grpc.clone()).await.unwrap();
                                lat.record("grpc", t.elapsed());
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    if let Ok(lat) = Arc::try_unwrap(lat) {
        lat.report(group, "");
    }
}

fn front_end(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let server = Server::start(repo.clone(), ServerOptions::loopback()).unwrap();
    // The clients' runtime: two workers, as many as the cores the server shares.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let tiny = Request {
        model: "id_fp32".into(),
        input: "IN".into(),
        shape: vec![1, 16],
        values: (0..16).map(|i| i as f32 * 0.5).collect(),
    };
    let tiny_model = repo.model("id_fp32").unwrap();
    one_caller(c, "front_end_tiny", &tiny_model, &server, &tiny, true);
    sixteen(c, &server, &rt, &tiny);

    let rec = Request {
        model: "text_recognition".into(),
        input: "input.1".into(),
        shape: vec![1, 1, 32, 100],
        values: (0..3200).map(|i| ((i % 17) as f32) / 8.0 - 1.0).collect(),
    };
    let rec_model = repo.model("text_recognition").unwrap();
    one_caller(c, "front_end_recogniser", &rec_model, &server, &rec, false);
    server.shutdown();
}

criterion_group!(benches, front_end);
criterion_main!(benches);
