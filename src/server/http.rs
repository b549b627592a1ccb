//! The HTTP/REST front end: KServe v2 with Triton's extensions (binary tensors,
//! classification, model configuration, model repository, statistics, parameters), and the
//! metrics page. Errors are `{"error": "..."}` with Triton's status codes.

use std::convert::Infallible;
use std::io::Read;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Map, Value};

use super::protocol::{self, invalid, ApiGroup, Status, WantedOutput};
use super::{metrics, State};
use crate::config::DataType;
use crate::{Error, ErrorKind, Model, Outputs, Result, Tensor};

/// Which page set a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/v2/...`
    Api,
    /// `/metrics`
    Metrics,
}

const HEADER_LENGTH: &str = "inference-header-content-length";

/// Accepts connections until `stopped` turns true, then lets the connections finish their
/// requests in flight (up to `grace`).
pub(crate) async fn serve(
    endpoint: Endpoint,
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    grace: std::time::Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.opts.read_timeout)
        .keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                let stopping = stopped.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let st = st.clone();
                    let stopping = *stopping.borrow();
                    async move { Ok::<_, Infallible>(handle(endpoint, st, stopping, req).await) }
                });
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn ok_json(v: &Value) -> Reply {
    reply(StatusCode::OK, "application/json", v.to_string())
}

fn ok_empty() -> Reply {
    reply(StatusCode::OK, "text/plain", Bytes::new())
}

fn error_reply(status: StatusCode, message: &str) -> Reply {
    reply(
        status,
        "application/json",
        json!({ "error": message }).to_string(),
    )
}

fn code(status: Status) -> StatusCode {
    match status {
        Status::BadRequest | Status::Cancelled | Status::TooLarge => StatusCode::BAD_REQUEST,
        Status::NotFound => StatusCode::NOT_FOUND,
        Status::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Status::Unsupported => StatusCode::NOT_IMPLEMENTED,
        Status::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error(e: &Error) -> Reply {
    error_reply(code(protocol::status_of(e)), &e.to_string())
}

/// `%xx` escapes in a path segment (tritonclient quotes model names).
fn unescape(segment: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let [b'%', hi, lo, ..] = bytes[i..] {
            if let (Some(hi), Some(lo)) = (hex(hi), hex(lo)) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a path under `/v2/models/{m}[/versions/{v}]` asks for.
enum ModelRoute {
    Metadata,
    Ready,
    Config,
    Stats,
    Infer,
}

async fn handle(
    endpoint: Endpoint,
    state: Arc<State>,
    stopping: bool,
    req: Request<Incoming>,
) -> Reply {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    if endpoint == Endpoint::Metrics {
        return match (&method, path.as_str()) {
            (&Method::GET, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(&state.repo),
            ),
            _ => error_reply(StatusCode::NOT_FOUND, "Not Found"),
        };
    }
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(unescape)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let group = match segs.as_slice() {
        ["v2", "health", ..] => ApiGroup::Health,
        ["v2"] => ApiGroup::Metadata,
        ["v2", "models", "stats"] => ApiGroup::Statistics,
        ["v2", "models", .., "ready"] => ApiGroup::Health,
        ["v2", "models", .., "config"] => ApiGroup::ModelConfig,
        ["v2", "models", .., "stats"] => ApiGroup::Statistics,
        ["v2", "models", .., "infer"] => ApiGroup::Inference,
        ["v2", "models", ..] => ApiGroup::Metadata,
        ["v2", "repository", ..] => ApiGroup::ModelRepository,
        ["v2", "systemsharedmemory" | "cudasharedmemory", ..] => ApiGroup::SharedMemory,
        ["v2", "trace", ..] => ApiGroup::Trace,
        ["v2", "logging"] => ApiGroup::Logging,
        _ => return error_reply(StatusCode::NOT_FOUND, "Not Found"),
    };
    if let Err(refused) = protocol::allowed(
        &state.opts.http_restricted,
        group,
        |k| req.headers().get(k).and_then(|v| v.to_str().ok()),
        "API",
    ) {
        return error_reply(StatusCode::FORBIDDEN, &refused);
    }
    let repo = &state.repo;
    match (method, segs.as_slice()) {
        (Method::GET, ["v2", "health", "live"]) => ok_empty(),
        (Method::GET, ["v2", "health", "ready"]) => {
            if stopping {
                error_reply(StatusCode::BAD_REQUEST, "Server is not ready")
            } else {
                ok_empty()
            }
        }
        (Method::GET, ["v2"]) => ok_json(&json!({
            "name": protocol::SERVER_NAME,
            "version": protocol::SERVER_VERSION,
            "extensions": protocol::EXTENSIONS,
        })),
        (Method::GET, ["v2", "models", "stats"]) => stats(repo, "", ""),
        (method, ["v2", "models", name, rest @ ..]) => {
            let (version, rest) = match rest {
                ["versions", v, rest @ ..] => (*v, rest),
                _ => ("", rest),
            };
            let route = match (method, rest) {
                (Method::GET, []) => ModelRoute::Metadata,
                (Method::GET, ["ready"]) => ModelRoute::Ready,
                (Method::GET, ["config"]) => ModelRoute::Config,
                (Method::GET, ["stats"]) => ModelRoute::Stats,
                (Method::POST, ["infer"]) => ModelRoute::Infer,
                _ => return error_reply(StatusCode::NOT_FOUND, "Not Found"),
            };
            model_request(&state, route, name, version, req).await
        }
        (Method::POST, ["v2", "repository", "index"]) => match body(&state, req).await {
            Ok(b) => index(repo, &b),
            Err(r) => r,
        },
        (Method::POST, ["v2", "repository", "models", name, action @ ("load" | "unload")]) => {
            let b = match body(&state, req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            control(&state, name, action, &b).await
        }
        (_, ["v2", "systemsharedmemory" | "cudasharedmemory", ..]) => error(&Error::new(
            ErrorKind::Unsupported,
            "shared-memory tensors are not supported by modelyard: send tensors in the request",
        )),
        (_, ["v2", "trace", ..] | ["v2", "logging"]) => error(&Error::new(
            ErrorKind::Unsupported,
            "trace and log settings are not supported by modelyard",
        )),
        _ => error_reply(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn model_request(
    state: &Arc<State>,
    route: ModelRoute,
    name: &str,
    version: &str,
    req: Request<Incoming>,
) -> Reply {
    let repo = &state.repo;
    match route {
        ModelRoute::Ready => {
            if protocol::model_ready(repo, name, version) {
                ok_empty()
            } else {
                error_reply(StatusCode::BAD_REQUEST, "")
            }
        }
        ModelRoute::Metadata => match protocol::model_metadata(repo, name, version) {
            Ok(m) => {
                let tensors = |ts: &[protocol::TensorMeta]| -> Vec<Value> {
                    ts.iter()
                        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
                        .collect()
                };
                ok_json(&json!({
                    "name": m.name,
                    "versions": m.versions,
                    "platform": m.platform,
                    "inputs": tensors(&m.inputs),
                    "outputs": tensors(&m.outputs),
                }))
            }
            Err(e) => error(&e),
        },
        ModelRoute::Config => {
            match protocol::model(repo, name, version).and_then(|m| config_json(&m)) {
                Ok(text) => reply(StatusCode::OK, "application/json", text),
                Err(e) => error(&e),
            }
        }
        ModelRoute::Stats => stats(repo, name, version),
        ModelRoute::Infer => {
            let (parts, incoming) = req.into_parts();
            let b = match read_body(state, &parts.headers, incoming).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let model = match protocol::model(repo, name, version) {
                Ok(m) => m,
                Err(e) => return error(&e),
            };
            infer(model, parts.headers, b).await
        }
    }
}

/// The request body, at most `max_input_bytes` (refused from `Content-Length` before
/// reading, or as soon as the stream passes it), read within the read timeout, and
/// decompressed (`Content-Encoding: gzip` or `deflate`) to at most the same limit.
async fn body(state: &State, req: Request<Incoming>) -> std::result::Result<Bytes, Reply> {
    let (parts, incoming) = req.into_parts();
    read_body(state, &parts.headers, incoming).await
}

/// [`body`] from a request already split into its headers and body stream.
async fn read_body(
    state: &State,
    headers: &HeaderMap,
    incoming: Incoming,
) -> std::result::Result<Bytes, Reply> {
    let max = state.opts.max_input_bytes;
    let too_big = || {
        error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is larger than the server's limit of {max} bytes (--http-max-input-size)"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let encoding = headers
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let collected = tokio::time::timeout(
        state.opts.read_timeout,
        Limited::new(incoming, max).collect(),
    )
    .await
    .map_err(|_| {
        error_reply(
            StatusCode::REQUEST_TIMEOUT,
            "timed out reading the request body",
        )
    })?
    .map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            too_big()
        } else {
            error(&invalid(format!("failed to read the request body: {e}")))
        }
    })?;
    let raw = collected.to_bytes();
    let mut out = Vec::new();
    let decoded = match encoding.as_deref() {
        None | Some("identity") | Some("") => return Ok(raw),
        Some("gzip") => flate2::read::GzDecoder::new(&raw[..])
            .take(max as u64 + 1)
            .read_to_end(&mut out),
        Some("deflate") => flate2::read::ZlibDecoder::new(&raw[..])
            .take(max as u64 + 1)
            .read_to_end(&mut out),
        Some(other) => {
            return Err(error(&Error::new(
                ErrorKind::Unsupported,
                format!("unsupported Content-Encoding '{other}': gzip and deflate are"),
            )))
        }
    };
    decoded.map_err(|e| {
        error(&invalid(format!(
            "failed to decompress the request body: {e}"
        )))
    })?;
    if out.len() > max {
        return Err(too_big());
    }
    Ok(Bytes::from(out))
}

fn parse_json(text: &[u8]) -> Result<Value> {
    serde_json::from_slice(text)
        .map_err(|e| invalid(format!("failed to parse the request JSON buffer: {e}")))
}

fn duration(d: crate::model::DurationStat) -> Value {
    json!({"count": d.count, "ns": d.ns})
}

fn stats(repo: &crate::Repository, name: &str, version: &str) -> Reply {
    match protocol::statistics(repo, name, version) {
        Ok(all) => {
            let model_stats: Vec<Value> = all
                .iter()
                .map(|s| {
                    let batch: Vec<Value> = s
                        .batch_stats
                        .iter()
                        .map(|(size, b)| {
                            json!({
                                "batch_size": size,
                                "compute_input": duration(b.compute_input),
                                "compute_infer": duration(b.compute_infer),
                                "compute_output": duration(b.compute_output),
                            })
                        })
                        .collect();
                    json!({
                        "name": s.name,
                        "version": s.version.to_string(),
                        "last_inference": s.last_inference,
                        "inference_count": s.inference_count,
                        "execution_count": s.execution_count,
                        "inference_stats": {
                            "success": duration(s.success),
                            "fail": duration(s.fail),
                            "queue": duration(s.queue),
                            "compute_input": duration(s.compute_input),
                            "compute_infer": duration(s.compute_infer),
                            "compute_output": duration(s.compute_output),
                            "cache_hit": duration(Default::default()),
                            "cache_miss": duration(Default::default()),
                        },
                        "response_stats": {},
                        "batch_stats": batch,
                        "memory_usage": [],
                    })
                })
                .collect();
            ok_json(&json!({ "model_stats": model_stats }))
        }
        Err(e) => error(&e),
    }
}

/// The completed config as JSON, as Triton writes it: proto field names, enums by name,
/// 64-bit integers as numbers, default values included.
fn config_json(model: &Model) -> Result<String> {
    use prost::Message;
    let desc = crate::config::descriptor("inference.ModelConfig")
        .ok_or_else(|| Error::new(ErrorKind::Execution, "the config schema is not embedded"))?;
    let message =
        prost_reflect::DynamicMessage::decode(desc, model.config().encode_to_vec().as_slice())
            .map_err(|e| {
                Error::new(
                    ErrorKind::Execution,
                    format!("cannot encode the config: {e}"),
                )
            })?;
    let options = prost_reflect::SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let mut out = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut out, &options)
        .map_err(|e| {
            Error::new(
                ErrorKind::Execution,
                format!("cannot write the config: {e}"),
            )
        })?;
    String::from_utf8(out.into_inner()).map_err(|e| {
        Error::new(
            ErrorKind::Execution,
            format!("cannot write the config: {e}"),
        )
    })
}

fn index(repo: &crate::Repository, body: &[u8]) -> Reply {
    let ready_only = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        match parse_json(body) {
            Ok(v) => v.get("ready").and_then(Value::as_bool).unwrap_or(false),
            Err(e) => return error(&e),
        }
    };
    let rows: Vec<Value> = repo
        .index()
        .into_iter()
        .filter(|e| !ready_only || e.state == crate::ModelState::Ready)
        .map(|e| {
            let mut row = Map::new();
            row.insert("name".into(), e.name.into());
            if let Some(v) = e.version {
                row.insert("version".into(), v.to_string().into());
            }
            row.insert("state".into(), e.state.to_string().into());
            if !e.reason.is_empty() {
                row.insert("reason".into(), e.reason.into());
            }
            Value::Object(row)
        })
        .collect();
    ok_json(&Value::Array(rows))
}

async fn control(state: &Arc<State>, name: &str, action: &str, body: &[u8]) -> Reply {
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = match parse_json(body) {
            Ok(v) => v,
            Err(e) => return error(&e),
        };
        if let Some(params) = v.get("parameters").and_then(Value::as_object) {
            for key in params.keys() {
                if let Err(e) = protocol::check_load_parameter(key) {
                    return error(&e);
                }
            }
        }
    }
    let repo = state.repo.clone();
    let (name, action) = (name.to_string(), action.to_string());
    let done = tokio::task::spawn_blocking(move || {
        if action == "load" {
            repo.load_model(&name)
        } else {
            repo.unload_model(&name)
        }
    })
    .await;
    match done {
        Ok(Ok(())) => ok_empty(),
        Ok(Err(e)) => error(&e),
        Err(e) => error(&Error::new(
            ErrorKind::Execution,
            format!("the request failed: {e}"),
        )),
    }
}

/// One input as the JSON header declares it.
struct InputHeader {
    name: String,
    datatype: DataType,
    shape: Vec<usize>,
    binary_size: Option<usize>,
}

fn str_field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{what} has no string '{key}'")))
}

fn param_u64(params: Option<&Value>, key: &str) -> Result<Option<u64>> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(format!("parameter '{key}' must be a non-negative integer"))),
    }
}

fn param_bool(params: Option<&Value>, key: &str) -> Result<Option<bool>> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| invalid(format!("parameter '{key}' must be a boolean"))),
    }
}

/// A parsed inference request: inputs, the outputs asked for, options.
struct Parsed {
    id: Option<String>,
    inputs: Vec<(String, Tensor)>,
    wanted: Vec<WantedOutput>,
    binary_default: bool,
    priority: Option<u64>,
    timeout: Option<u64>,
}

fn parse_infer(model: &Model, headers: &HeaderMap, body: &[u8]) -> Result<Parsed> {
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| invalid("Inference-Header-Content-Length is not a number"))?,
        ),
    };
    if header_len == Some(0) {
        return raw_binary(model, body);
    }
    let json_len = header_len.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(invalid(format!(
            "Inference-Header-Content-Length {json_len} is past the end of the {}-byte body",
            body.len()
        )));
    }
    let (head, mut binary) = body.split_at(json_len);
    let v = parse_json(head)?;
    if !v.is_object() {
        return Err(invalid("the inference request must be a JSON object"));
    }
    let params = v.get("parameters");
    if let Some(p) = params.and_then(Value::as_object) {
        for key in p.keys() {
            protocol::check_parameter(key)?;
        }
    }
    let inputs_json = v
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("the inference request has no 'inputs' array"))?;
    let mut inputs = Vec::with_capacity(inputs_json.len());
    for i in inputs_json {
        let header = input_header(i)?;
        let tensor = match header.binary_size {
            Some(n) => {
                if n > binary.len() {
                    return Err(invalid(format!(
                        "unexpected size for input '{}': its binary_data_size {n} is past the end of the body ({} bytes left)",
                        header.name,
                        binary.len()
                    )));
                }
                let (data, rest) = binary.split_at(n);
                binary = rest;
                Tensor::from_le_bytes(header.datatype, &header.shape, data)
                    .map_err(|e| invalid(format!("input '{}': {}", header.name, e.message())))?
            }
            None => {
                let data = i.get("data").ok_or_else(|| {
                    invalid(format!(
                        "input '{}' has neither 'data' nor a 'binary_data_size' parameter",
                        header.name
                    ))
                })?;
                json_tensor(&header, data)?
            }
        };
        inputs.push((header.name, tensor));
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            binary.len()
        )));
    }
    let mut wanted = Vec::new();
    if let Some(outputs) = v.get("outputs") {
        let outputs = outputs
            .as_array()
            .ok_or_else(|| invalid("'outputs' must be an array"))?;
        for o in outputs {
            let name = str_field(o, "name", "a requested output")?.to_string();
            let p = o.get("parameters");
            wanted.push(WantedOutput {
                class_count: param_u64(p, "classification")?.unwrap_or(0) as usize,
                binary: param_bool(p, "binary_data")?,
                name,
            });
        }
    }
    Ok(Parsed {
        id: v.get("id").and_then(Value::as_str).map(str::to_string),
        inputs,
        wanted,
        binary_default: param_bool(params, "binary_data_output")?.unwrap_or(false),
        priority: param_u64(params, "priority")?,
        timeout: param_u64(params, "timeout")?,
    })
}

fn input_header(i: &Value) -> Result<InputHeader> {
    let name = str_field(i, "name", "an input")?.to_string();
    let datatype =
        protocol::data_type(str_field(i, "datatype", &format!("input '{name}'"))?, &name)?;
    let dims = i
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("input '{name}' has no 'shape' array")))?
        .iter()
        .map(|d| d.as_i64())
        .collect::<Option<Vec<i64>>>()
        .ok_or_else(|| {
            invalid(format!(
                "unable to parse shape of input '{name}': not integers"
            ))
        })?;
    let shape = protocol::shape(&dims, &name)?;
    let binary_size = match i.get("parameters").and_then(|p| p.get("binary_data_size")) {
        None => None,
        Some(v) => Some(v.as_u64().map(|n| n as usize).ok_or_else(|| {
            invalid(format!(
                "binary_data_size of input '{name}' must be a non-negative integer"
            ))
        })?),
    };
    Ok(InputHeader {
        name,
        datatype,
        shape,
        binary_size,
    })
}

/// The elements of a (possibly nested) JSON array, row-major.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, limit: usize) -> bool {
    match v {
        Value::Array(items) => items.iter().all(|i| flatten(i, out, limit)),
        other => {
            out.push(other);
            out.len() <= limit
        }
    }
}

fn json_tensor(h: &InputHeader, data: &Value) -> Result<Tensor> {
    let n = protocol::element_count(&h.shape);
    let mut flat = Vec::new();
    if !flatten(data, &mut flat, n) || flat.len() != n {
        let mut all = Vec::new();
        flatten(data, &mut all, usize::MAX);
        return Err(protocol::count_mismatch(&h.name, &h.shape, all.len()));
    }
    let bad = |v: &Value| {
        invalid(format!(
            "unable to parse 'data' of input '{}': {v} is not a {} value",
            h.name,
            h.datatype.protocol_name()
        ))
    };
    macro_rules! ints {
        ($t:ty) => {{
            let values = flat
                .iter()
                .map(|v| {
                    v.as_i64()
                        .and_then(|x| <$t>::try_from(x).ok())
                        .or_else(|| v.as_u64().and_then(|x| <$t>::try_from(x).ok()))
                        .ok_or_else(|| bad(v))
                })
                .collect::<Result<Vec<$t>>>()?;
            protocol::tensor_from(&h.shape, values, &h.name)
        }};
    }
    match h.datatype {
        DataType::TypeBool => {
            let values = flat
                .iter()
                .map(|v| v.as_bool().ok_or_else(|| bad(v)))
                .collect::<Result<Vec<bool>>>()?;
            protocol::tensor_from(&h.shape, values, &h.name)
        }
        DataType::TypeUint8 => ints!(u8),
        DataType::TypeUint16 => ints!(u16),
        DataType::TypeUint32 => ints!(u32),
        DataType::TypeUint64 => ints!(u64),
        DataType::TypeInt8 => ints!(i8),
        DataType::TypeInt16 => ints!(i16),
        DataType::TypeInt32 => ints!(i32),
        DataType::TypeInt64 => ints!(i64),
        DataType::TypeFp16 | DataType::TypeFp32 | DataType::TypeFp64 => {
            let values = flat
                .iter()
                .map(|v| v.as_f64().ok_or_else(|| bad(v)))
                .collect::<Result<Vec<f64>>>()?;
            match h.datatype {
                DataType::TypeFp16 => protocol::tensor_from(
                    &h.shape,
                    values.into_iter().map(crate::half::f16::from_f64).collect(),
                    &h.name,
                ),
                DataType::TypeFp32 => protocol::tensor_from(
                    &h.shape,
                    values.into_iter().map(|x| x as f32).collect(),
                    &h.name,
                ),
                _ => protocol::tensor_from(&h.shape, values, &h.name),
            }
        }
        DataType::TypeString => {
            let items = flat
                .iter()
                .map(|v| v.as_str().map(str::as_bytes).ok_or_else(|| bad(v)))
                .collect::<Result<Vec<&[u8]>>>()?;
            Tensor::from_bytes(&h.shape, items)
        }
        other => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "input '{}': {} tensors are not supported",
                h.name,
                other.protocol_name()
            ),
        )),
    }
}

/// Triton's raw binary request (`Inference-Header-Content-Length: 0`): a model with one
/// input, whose shape follows from the body's size; every output comes back binary.
fn raw_binary(model: &Model, body: &[u8]) -> Result<Parsed> {
    let config = model.config();
    let [input] = config.input.as_slice() else {
        return Err(invalid(format!(
            "raw binary request needs a model with exactly 1 input, '{}' has {}",
            config.name,
            config.input.len()
        )));
    };
    let dt = DataType::try_from(input.data_type).unwrap_or(DataType::TypeInvalid);
    let mut shape: Vec<i64> = input.dims.clone();
    if dt == DataType::TypeString {
        shape = vec![1];
    } else {
        let size = dt.byte_size().max(1);
        let known: i64 = shape.iter().filter(|d| **d >= 0).product();
        let wild = shape.iter().filter(|d| **d < 0).count();
        if wild > 1 {
            return Err(invalid(format!(
                "raw binary request needs at most one variable-size dimension in input '{}'",
                input.name
            )));
        }
        let elements = (body.len() / size) as i64;
        if wild == 1 {
            let rest = if known > 0 { elements / known } else { 0 };
            for d in shape.iter_mut().filter(|d| **d < 0) {
                *d = rest;
            }
        }
    }
    if config.max_batch_size > 0 {
        shape.insert(0, 1);
    }
    let shape = protocol::shape(&shape, &input.name)?;
    let tensor = Tensor::from_le_bytes(dt, &shape, body)
        .map_err(|e| invalid(format!("input '{}': {}", input.name, e.message())))?;
    Ok(Parsed {
        id: None,
        inputs: vec![(input.name.clone(), tensor)],
        wanted: Vec::new(),
        binary_default: true,
        priority: None,
        timeout: None,
    })
}

fn json_data(t: &Tensor) -> Result<Value> {
    fn values<T: crate::Element + Copy>(t: &Tensor, f: impl Fn(T) -> Value) -> Result<Value> {
        Ok(Value::Array(t.view::<T>()?.iter().map(|v| f(*v)).collect()))
    }
    match t.data_type() {
        DataType::TypeBool => values::<bool>(t, Value::from),
        DataType::TypeUint8 => values::<u8>(t, Value::from),
        DataType::TypeUint16 => values::<u16>(t, Value::from),
        DataType::TypeUint32 => values::<u32>(t, Value::from),
        DataType::TypeUint64 => values::<u64>(t, Value::from),
        DataType::TypeInt8 => values::<i8>(t, Value::from),
        DataType::TypeInt16 => values::<i16>(t, Value::from),
        DataType::TypeInt32 => values::<i32>(t, Value::from),
        DataType::TypeInt64 => values::<i64>(t, Value::from),
        DataType::TypeFp16 => values::<crate::half::f16>(t, |v| Value::from(v.to_f32())),
        DataType::TypeFp32 => values::<f32>(t, Value::from),
        DataType::TypeFp64 => values::<f64>(t, Value::from),
        DataType::TypeString => Ok(Value::Array(
            t.bytes()?
                .into_iter()
                .map(|b| Value::from(String::from_utf8_lossy(b).into_owned()))
                .collect(),
        )),
        other => Err(Error::new(
            ErrorKind::Unsupported,
            format!("{} outputs are not supported", other.protocol_name()),
        )),
    }
}

fn respond(
    model: &Model,
    parsed: &Parsed,
    outputs: Outputs,
    accept: Option<&str>,
) -> Result<Reply> {
    let mut binary = Vec::new();
    let mut listed = Vec::new();
    // The order the request asked for (or the config's), with each output's binary choice.
    let order: Vec<(String, bool)> = if parsed.wanted.is_empty() {
        outputs
            .iter()
            .map(|(n, _)| (n.to_string(), parsed.binary_default))
            .collect()
    } else {
        parsed
            .wanted
            .iter()
            .map(|w| (w.name.clone(), w.binary.unwrap_or(parsed.binary_default)))
            .collect()
    };
    for (name, as_binary) in order {
        let Some(t) = outputs.get(&name) else {
            continue;
        };
        let mut o = Map::new();
        o.insert("name".into(), name.clone().into());
        o.insert("datatype".into(), t.data_type().protocol_name().into());
        o.insert("shape".into(), json!(t.shape()));
        if as_binary {
            let bytes = t.to_le_bytes()?;
            o.insert(
                "parameters".into(),
                json!({"binary_data_size": bytes.len()}),
            );
            binary.extend_from_slice(&bytes);
        } else {
            o.insert("data".into(), json_data(t)?);
        }
        listed.push(Value::Object(o));
    }
    let mut head = Map::new();
    if let Some(id) = &parsed.id {
        head.insert("id".into(), id.clone().into());
    }
    head.insert("model_name".into(), model.name().into());
    head.insert("model_version".into(), model.version().to_string().into());
    head.insert("outputs".into(), Value::Array(listed));
    let head = Value::Object(head).to_string();
    let has_binary = !binary.is_empty();
    let header_len = head.len();
    let mut body = head.into_bytes();
    body.extend_from_slice(&binary);
    let (body, encoding) = compress(body, accept);
    let mut r = reply(
        StatusCode::OK,
        if has_binary {
            "application/octet-stream"
        } else {
            "application/json"
        },
        body,
    );
    if has_binary {
        r.headers_mut()
            .insert(HEADER_LENGTH, HeaderValue::from(header_len));
    }
    if let Some(enc) = encoding {
        r.headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static(enc));
    }
    Ok(r)
}

/// The response body compressed as the client's `Accept-Encoding` asks (gzip or deflate),
/// as Triton does for inference responses.
fn compress(body: Vec<u8>, accept: Option<&str>) -> (Vec<u8>, Option<&'static str>) {
    use std::io::Write;
    let Some(accept) = accept else {
        return (body, None);
    };
    let wants = |enc: &str| {
        accept.split(',').any(|a| {
            a.split(';')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case(enc))
        })
    };
    let level = flate2::Compression::fast();
    if wants("gzip") {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
        if e.write_all(&body).is_ok() {
            if let Ok(out) = e.finish() {
                return (out, Some("gzip"));
            }
        }
    } else if wants("deflate") {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
        if e.write_all(&body).is_ok() {
            if let Ok(out) = e.finish() {
                return (out, Some("deflate"));
            }
        }
    }
    (body, None)
}

async fn infer(model: Model, headers: HeaderMap, body: Bytes) -> Reply {
    let done = protocol::blocking(|| -> Result<Reply> {
        let mut parsed = parse_infer(&model, &headers, &body)?;
        let options = protocol::options(&parsed.wanted, parsed.priority, parsed.timeout);
        let inputs = std::mem::take(&mut parsed.inputs);
        let outputs = model.infer_with(inputs, &options)?;
        let accept = headers
            .get(hyper::header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok());
        respond(&model, &parsed, outputs, accept)
    });
    done.unwrap_or_else(|e| error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_unescaped() {
        assert_eq!(unescape("text%20detection"), "text detection");
        assert_eq!(unescape("a%2"), "a%2");
        assert_eq!(unescape("%zz"), "%zz");
        assert_eq!(unescape("plain"), "plain");
    }

    #[test]
    fn nested_json_data_flattens_row_major() {
        let h = InputHeader {
            name: "x".into(),
            datatype: DataType::TypeInt32,
            shape: vec![2, 2],
            binary_size: None,
        };
        let t = json_tensor(&h, &json!([[1, 2], [3, 4]])).unwrap();
        assert_eq!(
            t.view::<i32>().unwrap().iter().copied().collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let e = json_tensor(&h, &json!([1, 2, 3])).unwrap_err();
        assert!(
            e.message().contains("holds 4 elements, the data has 3"),
            "{e}"
        );
        let e = json_tensor(&h, &json!([1, 2, 3, "x"])).unwrap_err();
        assert!(e.message().contains("is not a INT32 value"), "{e}");
        let e = json_tensor(&h, &json!([1, 2, 3, 1u64 << 40])).unwrap_err();
        assert!(e.message().contains("is not a INT32 value"), "{e}");
    }

    #[test]
    fn responses_compress_as_asked() {
        let body = vec![b'a'; 1000];
        let (out, enc) = compress(body.clone(), Some("deflate;q=1.0"));
        assert_eq!(enc, Some("deflate"));
        let mut back = Vec::new();
        flate2::read::ZlibDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, body);
        assert_eq!(compress(body.clone(), Some("br")).1, None);
        assert_eq!(compress(body, None).1, None);
    }
}
