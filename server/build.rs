//! Compiles `proto/` with protox (pure Rust, no `protoc` needed) into tonic/prost code, and
//! writes the descriptor set so `config.pbtxt` files can be parsed with prost-reflect.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/grpc_service.proto",
        "proto/model_config.proto",
        "proto/health.proto",
        "proto/switchyard.proto",
        // Messages only (no services): the engine importer decodes `.onnx` files with them.
        "proto/onnx.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Tensor payloads as `Bytes`: requests are sliced, not copied, on their way to the engine.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(fds)?;
    Ok(())
}
