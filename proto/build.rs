//! Compiles `leakwatch/v1/*.proto` with protox (pure Rust, no system
//! `protoc`) and generates the prost messages and tonic client and server,
//! plus the file descriptor set that gRPC reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["leakwatch/v1/collector.proto", "leakwatch/v1/admin.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    fs::write(out.join("leakwatch_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().codec_path("crate::codec::StrictCodec").compile_fds(fds)?;
    Ok(())
}
