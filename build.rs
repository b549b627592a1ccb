//! Compiles Triton's model-configuration schema with protox (pure Rust, no `protoc`) and
//! generates the prost types plus an encoded descriptor set for prost-reflect.
use std::path::PathBuf;

fn main() {
    let proto_dir = "src/config/proto";
    let proto = format!("{proto_dir}/model_config.proto");
    println!("cargo:rerun-if-changed={proto}");
    let fds = match protox::compile([&proto], [proto_dir]) {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("failed to compile {proto}: {e}");
            std::process::exit(1);
        }
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("model_config.fds"), bytes).expect("write descriptor set");
    let mut config = prost_build::Config::new();
    config.btree_map(["."]);
    config
        .compile_fds(fds)
        .expect("prost-build generates the model config types");
    #[cfg(feature = "server")]
    grpc(proto_dir, &out);
}

/// Feature `server`: Triton's gRPC service (`src/server/proto/grpc_service.proto`, package
/// `inference` like the model config, whose `ModelConfig` it uses from `crate::config`),
/// generated into its own folder so that it does not overwrite the config's `inference.rs`.
#[cfg(feature = "server")]
fn grpc(config_dir: &str, out: &std::path::Path) {
    let proto = "src/server/proto/grpc_service.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = match protox::compile([proto], ["src/server/proto", config_dir]) {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("failed to compile {proto}: {e}");
            std::process::exit(1);
        }
    };
    let dir = out.join("grpc");
    std::fs::create_dir_all(&dir).expect("create the gRPC output folder");
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_transport(false)
        .out_dir(&dir);
    // The config's messages and enums are the crate's own (`crate::config`), not generated
    // again.
    for f in fds.file.iter().filter(|f| f.name() != "grpc_service.proto") {
        for name in f
            .message_type
            .iter()
            .map(|m| m.name())
            .chain(f.enum_type.iter().map(|e| e.name()))
        {
            builder = builder.extern_path(
                format!(".inference.{name}"),
                format!("crate::config::{name}"),
            );
        }
    }
    builder
        .compile_fds(fds)
        .expect("tonic-prost-build generates the gRPC service");
}
