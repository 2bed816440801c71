//! The typed view of a model's interface, derived once from its (auto-completed) config.
//! Request validation reads only this.

use crate::tensor::DataType;

/// One input or output as the API sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DataType,
    /// Dims without the batch dim when the model batches; -1 is variable.
    pub dims: Vec<i64>,
    /// The shape the engine sees instead of `dims` (config `reshape`).
    pub reshape: Option<Vec<i64>>,
    /// The input may be left out of a request.
    pub optional: bool,
}

/// What a request is validated against.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub version: i64,
    /// 0: no batching, shapes equal `dims`; N: shapes are `[b, dims..]` with 1 <= b <= N.
    pub max_batch_size: i64,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

impl ModelSpec {
    /// The API shape of an input/output: dims with a leading -1 when the model batches.
    pub fn api_dims(&self, io: &IoSpec) -> Vec<i64> {
        let mut d = Vec::with_capacity(io.dims.len() + 1);
        if self.max_batch_size > 0 {
            d.push(-1);
        }
        d.extend_from_slice(&io.dims);
        d
    }
}

/// Formats a shape the way Triton's messages do: `[1,16]`.
pub fn fmt_shape(shape: &[i64]) -> String {
    let parts: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(","))
}
