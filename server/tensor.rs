//! Tensors as the core sees them: a data type, a shape and little-endian bytes.
//!
//! Proto and JSON types never get past `api/`; everything behind it speaks these types.
//! BYTES tensors keep Triton's wire layout (`u32` little-endian length + data per element),
//! so they can be passed along without re-encoding.

use bytes::Bytes;

/// Triton's data types, with their wire names and `config.pbtxt` enum values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
    Bf16,
}

impl DataType {
    /// Every type, for tests and tables.
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
        DataType::Bf16,
    ];

    /// The name on the wire (`"INT32"`, `"BYTES"`, ...).
    pub fn wire_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
            DataType::Bf16 => "BF16",
        }
    }

    /// Parses a wire name; `None` for anything Triton does not know.
    pub fn from_wire(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.wire_name() == name)
    }

    /// The `inference.DataType` enum value used in `config.pbtxt` (TYPE_STRING = BYTES).
    pub fn config_value(self) -> i32 {
        match self {
            DataType::Bool => 1,
            DataType::Uint8 => 2,
            DataType::Uint16 => 3,
            DataType::Uint32 => 4,
            DataType::Uint64 => 5,
            DataType::Int8 => 6,
            DataType::Int16 => 7,
            DataType::Int32 => 8,
            DataType::Int64 => 9,
            DataType::Fp16 => 10,
            DataType::Fp32 => 11,
            DataType::Fp64 => 12,
            DataType::Bytes => 13,
            DataType::Bf16 => 14,
        }
    }

    /// Inverse of [`DataType::config_value`]; `None` for TYPE_INVALID and unknown values.
    pub fn from_config_value(v: i32) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.config_value() == v)
    }

    /// Bytes per element, `None` for BYTES (variable length).
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// Why a shape cannot describe a tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// A dimension below zero.
    NegativeDim { index: usize, value: i64 },
    /// The product of the dimensions does not fit in `i64`.
    ElementCountOverflow,
}

/// Number of elements of a shape, checked: negative dims and overflow are errors.
pub fn element_count(shape: &[i64]) -> Result<u64, ShapeError> {
    let mut count: i64 = 1;
    for (index, &d) in shape.iter().enumerate() {
        if d < 0 {
            return Err(ShapeError::NegativeDim { index, value: d });
        }
        count = count
            .checked_mul(d)
            .ok_or(ShapeError::ElementCountOverflow)?;
    }
    Ok(count as u64)
}

/// Why a BYTES tensor's payload is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BytesError {
    /// A length prefix or its data runs past the end of the buffer.
    Truncated { element: usize },
    /// The buffer holds a different number of elements than the shape says.
    CountMismatch { expected: u64, found: u64 },
}

/// Splits a serialized BYTES tensor into its elements, checking that exactly `expected`
/// elements are present and that nothing is truncated or left over.
pub fn split_bytes_elements(data: &[u8], expected: u64) -> Result<Vec<&[u8]>, BytesError> {
    // Every element needs at least a 4-byte prefix, so this bound keeps the allocation honest.
    let mut out = Vec::with_capacity(expected.min(data.len() as u64 / 4) as usize);
    let mut rest = data;
    while !rest.is_empty() {
        let element = out.len();
        if rest.len() < 4 {
            return Err(BytesError::Truncated { element });
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if rest.len() < len {
            return Err(BytesError::Truncated { element });
        }
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    if out.len() as u64 != expected {
        return Err(BytesError::CountMismatch {
            expected,
            found: out.len() as u64,
        });
    }
    Ok(out)
}

/// Serializes BYTES elements into Triton's length-prefixed layout.
pub fn join_bytes_elements<I, B>(elements: I) -> Vec<u8>
where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    let mut out = Vec::new();
    for e in elements {
        let e = e.as_ref();
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// A tensor with validated shape and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: DataType,
    pub shape: Vec<i64>,
    /// Row-major little-endian elements; for BYTES the length-prefixed serialization.
    pub data: Bytes,
}

/// A named tensor: model inputs and outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_and_config_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::from_wire(d.wire_name()), Some(d));
            assert_eq!(DataType::from_config_value(d.config_value()), Some(d));
        }
        assert_eq!(DataType::from_wire("STRING"), None);
        assert_eq!(DataType::from_config_value(0), None);
        assert_eq!(DataType::from_config_value(13), Some(DataType::Bytes));
    }

    #[test]
    fn element_count_rejects_negative_and_overflow() {
        assert_eq!(element_count(&[]), Ok(1));
        assert_eq!(element_count(&[2, 0, 5]), Ok(0));
        assert_eq!(element_count(&[4, 16]), Ok(64));
        assert_eq!(
            element_count(&[3, -1]),
            Err(ShapeError::NegativeDim {
                index: 1,
                value: -1
            })
        );
        assert_eq!(
            element_count(&[16, (1 << 60) + 2]),
            Err(ShapeError::ElementCountOverflow)
        );
        // 2^32+1 by 16 fits in i64: the byte-size check against the payload catches it later.
        assert_eq!(
            element_count(&[(1 << 32) + 1, 16]),
            Ok(((1u64 << 32) + 1) * 16)
        );
    }

    #[test]
    fn bytes_elements_round_trip_and_reject_garbage() {
        let data = join_bytes_elements(["a", "", "hello\0world"]);
        let parts = split_bytes_elements(&data, 3).unwrap();
        assert_eq!(parts, vec![&b"a"[..], &b""[..], &b"hello\0world"[..]]);
        assert_eq!(
            split_bytes_elements(&data, 2),
            Err(BytesError::CountMismatch {
                expected: 2,
                found: 3
            })
        );
        assert_eq!(
            split_bytes_elements(&data[..data.len() - 1], 3),
            Err(BytesError::Truncated { element: 2 })
        );
        assert_eq!(
            split_bytes_elements(&[1, 0], 1),
            Err(BytesError::Truncated { element: 0 })
        );
        // A huge declared count with a tiny payload must not allocate the declared count.
        assert!(split_bytes_elements(&[], u64::MAX).is_err());
    }
}
