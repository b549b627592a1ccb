//! `modelyard serve --model-repository DIR`: Triton's HTTP/REST, gRPC and metrics endpoints
//! on a model repository (feature `server`). `modelyard --help` lists the flags.

fn main() -> std::process::ExitCode {
    modelyard::server::run_cli(std::env::args().skip(1))
}
