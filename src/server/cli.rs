//! `modelyard serve`: the command line, with `tritonserver`'s flags where they apply.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use super::{Restriction, Server, ServerOptions};
use crate::{Error, ErrorKind, ModelControl, Repository, Result};

const HELP: &str = "\
modelyard serve: Triton's HTTP/REST (KServe v2), gRPC and metrics endpoints on a model repository

Usage: modelyard serve --model-repository <DIR> [OPTIONS]
       (`modelyard --model-repository <DIR> ...` works too, as `tritonserver` is called)

Options (tritonserver's names and defaults; `--flag value` or `--flag=value`):
  --model-repository <DIR>           the repository folder (also --model-store)
  --http-port <PORT>                 HTTP/REST port [8000]
  --grpc-port <PORT>                 gRPC port [8001]
  --metrics-port <PORT>              Prometheus metrics port [8002]
  --http-address, --grpc-address, --metrics-address <IP>   [0.0.0.0]
  --allow-http, --allow-grpc, --allow-metrics <BOOL>      serve that endpoint [true]
  --model-control-mode <none|explicit|poll>               [none]
  --load-model <NAME>                model to load at start in explicit mode (repeat; '*': all)
  --repository-poll-secs <N>         poll interval in poll mode [15]
  --disable-auto-complete-config     configs must be complete (no auto-complete from the files)
  --exit-on-error <BOOL>             fail the start if any model fails to load [true]
  --http-restricted-api <APIS:KEY=VALUE>       API groups that need header KEY=VALUE (repeat)
  --grpc-restricted-protocol <APIS:KEY=VALUE>  the same for gRPC metadata (repeat)
  --http-max-input-size <BYTES>      largest request body [67108864]
  --http-thread-count <N>            network threads [the machine's cores]
  --log-verbose <N>                  accepted; modelyard logs through the `tracing` crate
  --help, --version
";

/// A parsed command line.
#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) repository: std::path::PathBuf,
    pub(crate) control: ModelControl,
    pub(crate) load_models: Vec<String>,
    pub(crate) poll_secs: u64,
    pub(crate) auto_complete: bool,
    pub(crate) exit_on_error: bool,
    pub(crate) options: ServerOptions,
}

#[derive(Debug)]
pub(crate) enum Parsed {
    Serve(Box<Args>),
    Help,
    Version,
}

fn usage(message: String) -> Error {
    Error::new(ErrorKind::InvalidConfig, message)
}

fn boolean(flag: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(usage(format!(
            "{flag}: '{v}' is not a boolean (true or false)"
        ))),
    }
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| usage(format!("{flag}: '{v}' is not a valid number")))
}

pub(crate) fn parse(args: &[String]) -> Result<Parsed> {
    let mut rest = args;
    if let Some(first) = rest.first() {
        match first.as_str() {
            "serve" => rest = &rest[1..],
            "--help" | "-h" | "help" => return Ok(Parsed::Help),
            "--version" | "-V" => return Ok(Parsed::Version),
            f if f.starts_with("--") => {}
            other => {
                return Err(usage(format!(
                    "unknown command '{other}': the command is 'serve'"
                )))
            }
        }
    }
    let mut repository = None;
    let mut control = ModelControl::None;
    let mut load_models = Vec::new();
    let mut poll_secs = 15;
    let mut auto_complete = true;
    let mut exit_on_error = true;
    let mut o = ServerOptions::default();
    let (mut http_port, mut grpc_port, mut metrics_port) = (8000u16, 8001u16, 8002u16);
    let any: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let (mut http_ip, mut grpc_ip, mut metrics_ip) = (any, any, any);
    let (mut allow_http, mut allow_grpc, mut allow_metrics) = (true, true, true);
    let mut i = 0;
    while i < rest.len() {
        let arg = &rest[i];
        i += 1;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if !flag.starts_with("--") {
            return Err(usage(format!("unexpected argument '{arg}'")));
        }
        match flag {
            "--help" => return Ok(Parsed::Help),
            "--version" => return Ok(Parsed::Version),
            "--disable-auto-complete-config" if inline.is_none() => {
                auto_complete = false;
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let v = rest
                    .get(i)
                    .ok_or_else(|| usage(format!("{flag} needs a value")))?;
                i += 1;
                v.clone()
            }
        };
        let v = value.as_str();
        let ip = |v: &str| -> Result<IpAddr> {
            let v = v.strip_prefix("ipv6:").unwrap_or(v);
            v.trim_matches(['[', ']'])
                .parse()
                .map_err(|_| usage(format!("{flag}: '{v}' is not an IP address")))
        };
        match flag {
            "--model-repository" | "--model-store" => {
                repository = Some(std::path::PathBuf::from(v))
            }
            "--http-port" => http_port = number(flag, v)?,
            "--grpc-port" => grpc_port = number(flag, v)?,
            "--metrics-port" => metrics_port = number(flag, v)?,
            "--http-address" => http_ip = ip(v)?,
            "--grpc-address" => grpc_ip = ip(v)?,
            "--metrics-address" => metrics_ip = ip(v)?,
            "--allow-http" => allow_http = boolean(flag, v)?,
            "--allow-grpc" => allow_grpc = boolean(flag, v)?,
            "--allow-metrics" => allow_metrics = boolean(flag, v)?,
            "--model-control-mode" => {
                control = match v {
                    "none" => ModelControl::None,
                    "explicit" => ModelControl::Explicit,
                    "poll" => ModelControl::Poll,
                    _ => {
                        return Err(usage(format!(
                            "--model-control-mode: '{v}' is not one of none, explicit, poll"
                        )))
                    }
                }
            }
            "--load-model" => load_models.push(v.to_string()),
            "--repository-poll-secs" => poll_secs = number(flag, v)?,
            "--disable-auto-complete-config" => auto_complete = !boolean(flag, v)?,
            "--strict-model-config" => auto_complete = !boolean(flag, v)?,
            "--exit-on-error" => exit_on_error = boolean(flag, v)?,
            "--http-restricted-api" => o.http_restricted.push(Restriction::parse(v)?),
            "--grpc-restricted-protocol" => o.grpc_restricted.push(Restriction::parse(v)?),
            "--http-max-input-size" => o.max_input_bytes = number(flag, v)?,
            "--http-thread-count" => o.threads = number(flag, v)?,
            "--log-verbose" | "--log-info" | "--log-warning" | "--log-error"
            | "--strict-readiness" => {}
            _ => return Err(usage(format!("unknown option '{flag}' (see --help)"))),
        }
    }
    let repository =
        repository.ok_or_else(|| usage("--model-repository must be given".to_string()))?;
    o.http = allow_http.then(|| SocketAddr::new(http_ip, http_port));
    o.grpc = allow_grpc.then(|| SocketAddr::new(grpc_ip, grpc_port));
    o.metrics = allow_metrics.then(|| SocketAddr::new(metrics_ip, metrics_port));
    Ok(Parsed::Serve(Box::new(Args {
        repository,
        control,
        load_models,
        poll_secs,
        auto_complete,
        exit_on_error,
        options: o,
    })))
}

fn serve(args: Args) -> Result<()> {
    let mut builder = Repository::builder(&args.repository)
        .model_control(args.control)
        .auto_complete(args.auto_complete)
        .exit_on_error(args.exit_on_error)
        .startup_models(args.load_models.iter().cloned());
    // The tutorial's Part 5 steps (EAST and PaddleOCR) as native backends, so that its
    // ensemble repositories serve as they are.
    #[cfg(feature = "ocr")]
    {
        builder = crate::ocr::steps::ppocr_steps(crate::ocr::steps::tutorial_steps(builder));
    }
    if args.control == ModelControl::Poll && args.poll_secs > 0 {
        builder = builder.poll_interval(Duration::from_secs(args.poll_secs));
    }
    let repo = builder.load()?;
    for e in repo.index() {
        let version = e
            .version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        eprintln!(
            "model '{}' version {version}: {} {}",
            e.name, e.state, e.reason
        );
    }
    let server = Server::start(repo, args.options)?;
    if let Some(a) = server.grpc_addr() {
        eprintln!("Started GRPCInferenceService at {a}");
    }
    if let Some(a) = server.http_addr() {
        eprintln!("Started HTTPService at {a}");
    }
    if let Some(a) = server.metrics_addr() {
        eprintln!("Started Metrics Service at {a}");
    }
    server.wait();
    eprintln!("modelyard: stopped");
    Ok(())
}

/// The `modelyard` binary: parses `args` (without the program name), loads the repository,
/// serves until SIGINT/SIGTERM. Errors go to stderr with exit code 1 (2 for a bad command
/// line).
pub fn run_cli(args: impl IntoIterator<Item = String>) -> ExitCode {
    let args: Vec<String> = args.into_iter().collect();
    match parse(&args) {
        Ok(Parsed::Help) => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Version) => {
            println!("modelyard {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Parsed::Serve(a)) => match serve(*a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("error: {e}\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn tritonserver_flags_parse() {
        let Parsed::Serve(a) = parse(&args(
            "serve --model-repository=/m --http-port 9000 --grpc-address 127.0.0.1 --allow-metrics false \
             --model-control-mode explicit --load-model a --load-model b --disable-auto-complete-config \
             --http-restricted-api model-repository:k=v --exit-on-error=false",
        ))
        .unwrap() else {
            panic!("not serve")
        };
        assert_eq!(a.repository, std::path::Path::new("/m"));
        assert_eq!(a.options.http.unwrap().port(), 9000);
        assert_eq!(a.options.grpc.unwrap().to_string(), "127.0.0.1:8001");
        assert!(a.options.metrics.is_none());
        assert_eq!(a.control, ModelControl::Explicit);
        assert_eq!(a.load_models, ["a", "b"]);
        assert!(!a.auto_complete && !a.exit_on_error);
        assert_eq!(a.options.http_restricted.len(), 1);
        // tritonserver's own form, without the subcommand.
        assert!(matches!(
            parse(&args("--model-repository /m")).unwrap(),
            Parsed::Serve(_)
        ));
    }

    #[test]
    fn bad_command_lines_are_errors() {
        for bad in [
            "serve",
            "serve --model-repository",
            "serve --model-repository /m --http-port 70000",
            "serve --model-repository /m --model-control-mode sometimes",
            "serve --model-repository /m --frobnicate 1",
            "serve --model-repository /m --allow-http maybe",
            "launch",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }
}
