//! JSON rendering and parsing helpers of the HTTP front end.
//!
//! - Proto messages (config, metadata, statistics) render through prost-reflect the way Triton
//!   renders them: proto field names, every primitive field printed, enum names, and 64-bit
//!   integers as JSON numbers.
//! - Tensor `data` is parsed straight into little-endian bytes (nested or flat arrays), never
//!   through a `serde_json::Value` tree, and rendered lazily from the output bytes.

use std::fmt;

use prost_reflect::{DynamicMessage, SerializeOptions};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};

use crate::error::InferError;
use crate::proto::message_descriptor;
use crate::tensor::DataType;

/// Renders a proto message as Triton's HTTP JSON. `full_name` is its proto name.
pub fn proto_to_json(msg: &impl prost::Message, full_name: &str) -> Result<Vec<u8>, InferError> {
    let desc = message_descriptor(full_name).map_err(InferError::Internal)?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| InferError::Internal(format!("cannot render {full_name}: {e}")))?;
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .skip_default_fields(false)
        .use_proto_field_name(true);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    dynamic
        .serialize_with_options(&mut ser, &options)
        .map_err(|e| InferError::Internal(format!("cannot render {full_name}: {e}")))?;
    Ok(out)
}

/// The deepest nesting of arrays and objects in `json` (strings are skipped), stopping early
/// once `limit` is exceeded. Linear time, constant memory: run before any parser recurses.
pub fn nesting_exceeds(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses an input's JSON `data` (nested or flat, row-major) into little-endian bytes of
/// `dtype`, refusing more than `max_elements` elements.
pub fn parse_tensor_data(
    raw: &str,
    dtype: DataType,
    max_elements: usize,
) -> Result<(Vec<u8>, usize), String> {
    let mut sink = DataSink {
        dtype,
        out: Vec::new(),
        count: 0,
        max: max_elements,
    };
    let mut de = serde_json::Deserializer::from_str(raw);
    Elements(&mut sink)
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok((sink.out, sink.count))
}

struct DataSink {
    dtype: DataType,
    out: Vec<u8>,
    count: usize,
    max: usize,
}

impl DataSink {
    fn bump(&mut self) -> Result<(), String> {
        self.count += 1;
        if self.count > self.max {
            return Err(format!(
                "more data elements than the shape holds ({})",
                self.max
            ));
        }
        Ok(())
    }

    fn int<E: de::Error>(&mut self, v: i128) -> Result<(), E> {
        self.bump().map_err(E::custom)?;
        let d = self.dtype;
        let range = || E::custom(format!("value {v} is out of range for {d}"));
        let o = &mut self.out;
        match d {
            DataType::Int8 => o.push(i8::try_from(v).map_err(|_| range())? as u8),
            DataType::Int16 => o.extend(i16::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Int32 => o.extend(i32::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Int64 => o.extend(i64::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Uint8 => o.push(u8::try_from(v).map_err(|_| range())?),
            DataType::Uint16 => o.extend(u16::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Uint32 => o.extend(u32::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Uint64 => o.extend(u64::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => {
                self.count -= 1;
                return self.float(v as f64);
            }
            DataType::Bool | DataType::Bytes => {
                return Err(E::custom(format!("expected a {} value, got {v}", d)))
            }
        }
        Ok(())
    }

    fn float<E: de::Error>(&mut self, v: f64) -> Result<(), E> {
        self.bump().map_err(E::custom)?;
        let o = &mut self.out;
        match self.dtype {
            DataType::Fp16 => o.extend(half::f16::from_f64(v).to_le_bytes()),
            DataType::Bf16 => o.extend(half::bf16::from_f64(v).to_le_bytes()),
            DataType::Fp32 => o.extend((v as f32).to_le_bytes()),
            DataType::Fp64 => o.extend(v.to_le_bytes()),
            d => return Err(E::custom(format!("expected a {d} value, got {v}"))),
        }
        Ok(())
    }
}

/// Visits one element or a (nested) array of elements.
struct Elements<'s>(&'s mut DataSink);

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} values in (nested) arrays", self.0.dtype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Elements(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        if self.0.dtype != DataType::Bool {
            return Err(E::custom(format!(
                "expected a {} value, got {v}",
                self.0.dtype
            )));
        }
        self.0.bump().map_err(E::custom)?;
        self.0.out.push(v as u8);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.int(v as i128)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.int(v as i128)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.float(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.0.dtype != DataType::Bytes {
            return Err(E::custom(format!(
                "expected a {} value, got string \"{}\"",
                self.0.dtype,
                v.chars().take(32).collect::<String>()
            )));
        }
        let len = u32::try_from(v.len()).map_err(|_| E::custom("string element over 4 GiB"))?;
        self.0.bump().map_err(E::custom)?;
        self.0.out.extend(len.to_le_bytes());
        self.0.out.extend_from_slice(v.as_bytes());
        Ok(())
    }
}

/// An output's bytes rendered as a flat JSON array, element by element.
pub struct DataJson<'a> {
    pub dtype: DataType,
    /// Number of elements (the shape's element count).
    pub elements: u64,
    pub data: &'a [u8],
}

impl Serialize for DataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let d = self.data;
        macro_rules! seq {
            ($t:ty, $n:expr, $conv:expr) => {{
                let mut seq = s.serialize_seq(Some(d.len() / $n))?;
                for c in d.chunks_exact($n) {
                    let mut b = [0u8; $n];
                    b.copy_from_slice(c);
                    let v: $t = <$t>::from_le_bytes(b);
                    seq.serialize_element(&$conv(v))?;
                }
                seq.end()
            }};
        }
        match self.dtype {
            DataType::Bool => s.collect_seq(d.iter().map(|b| *b != 0)),
            DataType::Uint8 => s.collect_seq(d.iter()),
            DataType::Int8 => s.collect_seq(d.iter().map(|b| *b as i8)),
            DataType::Int16 => seq!(i16, 2, |v| v),
            DataType::Int32 => seq!(i32, 4, |v| v),
            DataType::Int64 => seq!(i64, 8, |v| v),
            DataType::Uint16 => seq!(u16, 2, |v| v),
            DataType::Uint32 => seq!(u32, 4, |v| v),
            DataType::Uint64 => seq!(u64, 8, |v| v),
            DataType::Fp32 => seq!(f32, 4, |v| v),
            DataType::Fp64 => seq!(f64, 8, |v| v),
            DataType::Fp16 => seq!(half::f16, 2, |v: half::f16| v.to_f32()),
            DataType::Bf16 => seq!(half::bf16, 2, |v: half::bf16| v.to_f32()),
            DataType::Bytes => {
                let elems = crate::tensor::split_bytes_elements(d, self.elements)
                    .map_err(|e| S::Error::custom(format!("malformed BYTES output: {e:?}")))?;
                let mut seq = s.serialize_seq(Some(elems.len()))?;
                for e in elems {
                    let text = std::str::from_utf8(e).map_err(|_| {
                        S::Error::custom(
                            "a BYTES output element is not valid UTF-8; request the output with binary_data: true",
                        )
                    })?;
                    seq.serialize_element(text)?;
                }
                seq.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_data_give_the_same_bytes() {
        let (a, n) = parse_tensor_data("[[1,2],[3,-4]]", DataType::Int32, 4).unwrap();
        let (b, m) = parse_tensor_data("[1,2,3,-4]", DataType::Int32, 4).unwrap();
        assert_eq!((a.clone(), n), (b, m));
        assert_eq!(&a[12..], &(-4i32).to_le_bytes());
        let (f, _) = parse_tensor_data("[1, 2.5]", DataType::Fp32, 2).unwrap();
        assert_eq!(&f[4..], &2.5f32.to_le_bytes());
        let (s, _) = parse_tensor_data(r#"["ab",""]"#, DataType::Bytes, 2).unwrap();
        assert_eq!(s, vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        let (t, _) = parse_tensor_data("[true,false]", DataType::Bool, 2).unwrap();
        assert_eq!(t, vec![1, 0]);
    }

    #[test]
    fn data_errors_name_the_problem() {
        let e = parse_tensor_data("[1,2,3]", DataType::Int32, 2).unwrap_err();
        assert!(e.contains("more data elements"), "{e}");
        let e = parse_tensor_data("[300]", DataType::Uint8, 1).unwrap_err();
        assert!(e.contains("out of range for UINT8"), "{e}");
        let e = parse_tensor_data(r#"["x"]"#, DataType::Int32, 1).unwrap_err();
        assert!(e.contains("expected a INT32 value"), "{e}");
        let e = parse_tensor_data("[1.5]", DataType::Int64, 1).unwrap_err();
        assert!(e.contains("INT64"), "{e}");
        assert!(parse_tensor_data("[1] x", DataType::Int32, 1).is_err());
    }

    #[test]
    fn nesting_depth_is_measured_outside_strings() {
        assert!(!nesting_exceeds(br#"{"a":[[1]]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[[[1]]]}"#, 3));
        assert!(!nesting_exceeds(br#"{"a":"[[[[[[\"[["}"#, 1));
        let deep = "[".repeat(100_000);
        assert!(nesting_exceeds(deep.as_bytes(), 100));
    }

    #[test]
    fn output_data_renders_flat() {
        let bytes: Vec<u8> = [1i32, -2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let j = serde_json::to_string(&DataJson {
            dtype: DataType::Int32,
            elements: 2,
            data: &bytes,
        })
        .unwrap();
        assert_eq!(j, "[1,-2]");
        let s = serde_json::to_string(&DataJson {
            dtype: DataType::Bytes,
            elements: 1,
            data: &[1, 0, 0, 0, b'z'],
        })
        .unwrap();
        assert_eq!(s, r#"["z"]"#);
    }

    #[test]
    fn config_json_has_numbers_names_and_defaults() {
        let cfg = crate::proto::inference::ModelConfig {
            name: "m".into(),
            max_batch_size: 8,
            ..Default::default()
        };
        let j: serde_json::Value =
            serde_json::from_slice(&proto_to_json(&cfg, "inference.ModelConfig").unwrap()).unwrap();
        assert_eq!(j["max_batch_size"], 8);
        assert_eq!(j["platform"], "");
    }
}
