//! Code generated from `proto/` by `build.rs`. Only `api/`, the config parser and the engine
//! importer (`onnx`) use it.

#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

#[allow(clippy::all, missing_docs)]
pub mod switchyard {
    tonic::include_proto!("switchyard");
}

#[allow(clippy::all, missing_docs)]
pub mod onnx {
    //! The subset of the ONNX IR schema in `proto/onnx.proto`, read by `engine::import`.
    tonic::include_proto!("onnx");
}

#[allow(clippy::all, missing_docs)]
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// Encoded `FileDescriptorSet` of every file in `proto/`, for prost-reflect.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// The descriptor of message `full_name` (e.g. `inference.ModelConfig`) in [`DESCRIPTOR_SET`].
pub fn message_descriptor(full_name: &str) -> Result<prost_reflect::MessageDescriptor, String> {
    use std::sync::OnceLock;
    static POOL: OnceLock<Result<prost_reflect::DescriptorPool, String>> = OnceLock::new();
    let pool = POOL
        .get_or_init(|| {
            prost_reflect::DescriptorPool::decode(DESCRIPTOR_SET).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)?;
    pool.get_message_by_name(full_name)
        .ok_or_else(|| format!("{full_name} missing from descriptors"))
}
