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
}
