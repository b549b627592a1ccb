//! `server` (feature `server`): Triton's network front end on a [`Repository`], so that
//! clients written for `tritonserver` (tritonclient over HTTP or gRPC, load balancers probing
//! `/v2/health/ready`, Prometheus scraping `/metrics`) work unchanged against
//! `modelyard serve`.
//!
//! - HTTP/REST on `--http-port` (8000): the KServe v2 protocol with Triton's extensions:
//!   binary tensors, classification, model configuration, model repository, statistics,
//!   schedule policy and parameters (`http.rs`).
//! - gRPC on `--grpc-port` (8001): Triton's `inference.GRPCInferenceService` (`grpc.rs`).
//! - Prometheus metrics on `--metrics-port` (8002), with Triton's names (`metrics.rs`).
//!
//! What both protocols share (model lookup, error codes, tensor decoding, who may call what)
//! is in `protocol.rs`; the command line (`tritonserver`'s flags) in `cli.rs`. This module
//! uses only the crate's public API, like [`ocr`](crate::ocr) could.
//!
//! ```no_run
//! # fn main() -> modelyard::Result<()> {
//! use modelyard::server::{Server, ServerOptions};
//! use modelyard::Repository;
//!
//! let repo = Repository::load("model_repository")?;
//! let server = Server::start(repo, ServerOptions::default())?; // ports 8000, 8001, 8002
//! println!("HTTP on {:?}", server.http_addr());
//! server.wait(); // until SIGINT or SIGTERM, then a graceful shutdown
//! # Ok(()) }
//! ```

mod cli;
mod grpc;
mod http;
mod metrics;
mod protocol;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

pub use cli::run_cli;
/// Triton's gRPC messages, server and client (`GrpcInferenceServiceClient`, for Rust clients
/// of any Triton server), generated from `src/server/proto/grpc_service.proto`.
pub use grpc::pb as proto;
pub use protocol::{ApiGroup, Restriction};

use crate::{Error, ErrorKind, Repository, Result};

/// How the server listens and what it allows. The defaults are `tritonserver`'s.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The HTTP/REST endpoint (`--http-address`, `--http-port`; default 0.0.0.0:8000), or
    /// `None` for no HTTP (`--allow-http false`). Port 0 picks a free port.
    pub http: Option<SocketAddr>,
    /// The gRPC endpoint (`--grpc-address`, `--grpc-port`; default 0.0.0.0:8001), or `None`.
    pub grpc: Option<SocketAddr>,
    /// The metrics endpoint (`--metrics-address`, `--metrics-port`; default 0.0.0.0:8002),
    /// or `None`.
    pub metrics: Option<SocketAddr>,
    /// The largest request body accepted, compressed or not (`--http-max-input-size`,
    /// Triton's default 64 MiB), checked from `Content-Length` before any of it is read; the
    /// same limit bounds a gRPC message.
    pub max_input_bytes: usize,
    /// API groups that need a header (`--http-restricted-api`).
    pub http_restricted: Vec<Restriction>,
    /// API groups that need a metadata key (`--grpc-restricted-protocol`).
    pub grpc_restricted: Vec<Restriction>,
    /// How long a client may take to send a request's headers, and then its body, before
    /// the connection is closed (slow or half-open clients).
    pub read_timeout: Duration,
    /// How long a graceful shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Worker threads of the network runtime (0: the machine's cores). A request's
    /// inference runs on the worker that received it, which hands its other connections to
    /// another thread meanwhile (`block_in_place`), so slow models do not stall the network.
    pub threads: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        ServerOptions {
            http: Some(SocketAddr::new(any, 8000)),
            grpc: Some(SocketAddr::new(any, 8001)),
            metrics: Some(SocketAddr::new(any, 8002)),
            max_input_bytes: 64 << 20,
            http_restricted: Vec::new(),
            grpc_restricted: Vec::new(),
            read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            threads: 0,
        }
    }
}

impl ServerOptions {
    /// All three endpoints on free loopback ports (for tests and local use).
    pub fn loopback() -> Self {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        ServerOptions {
            http: Some(SocketAddr::new(lo, 0)),
            grpc: Some(SocketAddr::new(lo, 0)),
            metrics: Some(SocketAddr::new(lo, 0)),
            ..ServerOptions::default()
        }
    }
}

/// What the request handlers share.
pub(crate) struct State {
    pub(crate) repo: Repository,
    pub(crate) opts: ServerOptions,
}

/// A running server. Dropping it shuts it down (gracefully, as [`shutdown`](Self::shutdown)).
pub struct Server {
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("http", &self.http)
            .field("grpc", &self.grpc)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("failed to start {what} service at {addr}: {e}"),
        )
    })?;
    listener.set_nonblocking(true).map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("failed to start {what} service at {addr}: {e}"),
        )
    })?;
    Ok(listener)
}

fn local(listener: &Option<TcpListener>) -> Option<SocketAddr> {
    listener.as_ref().and_then(|l| l.local_addr().ok())
}

impl Server {
    /// Binds the endpoints (an address in use is an error here, not later) and serves `repo`
    /// on a runtime of its own until [`shutdown`](Self::shutdown) or drop.
    pub fn start(repo: Repository, opts: ServerOptions) -> Result<Server> {
        let http = opts.http.map(|a| bind("HTTP", a)).transpose()?;
        let grpc = opts.grpc.map(|a| bind("GRPC", a)).transpose()?;
        let metrics = opts.metrics.map(|a| bind("Metrics", a)).transpose()?;
        let (http_addr, grpc_addr, metrics_addr) = (local(&http), local(&grpc), local(&metrics));
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        if opts.threads > 0 {
            rt.worker_threads(opts.threads);
        }
        let rt = rt
            .enable_all()
            .thread_name("modelyard-server")
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::ResourceExhausted,
                    format!("cannot start the server runtime: {e}"),
                )
            })?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let grace = opts.shutdown_grace;
        let state = Arc::new(State { repo, opts });
        // Listeners become tokio's inside the runtime.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("modelyard-server".into())
            .spawn(move || {
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    let started = (|| -> Result<()> {
                        if let Some(l) = http {
                            tasks.push(tokio::spawn(http::serve(
                                http::Endpoint::Api,
                                tokio_listener(l)?,
                                state.clone(),
                                stopped.clone(),
                                grace,
                            )));
                        }
                        if let Some(l) = metrics {
                            tasks.push(tokio::spawn(http::serve(
                                http::Endpoint::Metrics,
                                tokio_listener(l)?,
                                state.clone(),
                                stopped.clone(),
                                grace,
                            )));
                        }
                        if let Some(l) = grpc {
                            tasks.push(tokio::spawn(grpc::serve(
                                tokio_listener(l)?,
                                state.clone(),
                                stopped.clone(),
                                grace,
                            )));
                        }
                        Ok(())
                    })();
                    let failed = started.is_err();
                    let _ = ready_tx.send(started);
                    if failed {
                        return;
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })
            .map_err(|e| {
                Error::new(
                    ErrorKind::ResourceExhausted,
                    format!("cannot start the server thread: {e}"),
                )
            })?;
        let started = ready_rx.recv().unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Execution,
                "the server thread ended before it started",
            ))
        });
        let server = Server {
            http: http_addr,
            grpc: grpc_addr,
            metrics: metrics_addr,
            stop: Some(stop),
            thread: Some(thread),
        };
        started.map(|()| server)
    }

    /// The HTTP/REST endpoint's address, if it serves one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// The gRPC endpoint's address, if it serves one.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc
    }

    /// The metrics endpoint's address, if it serves one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Stops accepting connections, lets the requests in flight finish (up to the options'
    /// `shutdown_grace`), and returns when the server has stopped.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    /// Serves until the process gets SIGINT or SIGTERM (Ctrl-C elsewhere), then shuts down
    /// gracefully.
    pub fn wait(self) {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(termination());
        }
        self.shutdown();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn tokio_listener(l: TcpListener) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(l).map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot listen on the socket: {e}"),
        )
    })
}

/// SIGINT or SIGTERM.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
