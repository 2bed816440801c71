//! Code generated from `proto/` by `build.rs`. Only `api/` and the config parser use it.

#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

#[allow(clippy::all, missing_docs)]
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// Encoded `FileDescriptorSet` of every file in `proto/`, for prost-reflect.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
