//! `config.pbtxt` (protobuf text format of `inference.ModelConfig`) → typed `ModelConfig`.
//!
//! prost-reflect parses the text format against the descriptors compiled from `proto/`.
//! It rejects one spelling Triton's own examples use everywhere — a repeated field written
//! without a colon, `input [ { ... } ]` — so a small pre-pass inserts that colon.

use std::sync::OnceLock;

use prost_reflect::{DynamicMessage, MessageDescriptor};

use crate::proto::inference::ModelConfig;
use crate::proto::message_descriptor;

/// A parsed config and which top-level fields the file set explicitly.
#[derive(Debug, Clone)]
pub struct ParsedConfig {
    pub config: ModelConfig,
    /// `max_batch_size` appeared in the file (auto-complete only fills it when absent).
    pub has_max_batch_size: bool,
}

fn model_config_descriptor() -> Result<&'static MessageDescriptor, String> {
    static DESC: OnceLock<Result<MessageDescriptor, String>> = OnceLock::new();
    DESC.get_or_init(|| message_descriptor("inference.ModelConfig"))
        .as_ref()
        .map_err(Clone::clone)
}

/// Parses the text of a `config.pbtxt`.
pub fn parse_model_config(text: &str) -> Result<ParsedConfig, String> {
    let desc = model_config_descriptor()?;
    let fixed = insert_list_colons(text);
    let msg = DynamicMessage::parse_text_format(desc.clone(), &fixed)
        .map_err(|e| format!("failed to parse config.pbtxt: {e}"))?;
    let has_max_batch_size = msg.has_field_by_name("max_batch_size");
    let config: ModelConfig = msg
        .transcode_to()
        .map_err(|e| format!("failed to convert config.pbtxt: {e}"))?;
    Ok(ParsedConfig {
        config,
        has_max_batch_size,
    })
}

/// Parses the load API's `config` override: a JSON `ModelConfig` as proto3 JSON reads it
/// (proto or JSON field names, enum names, numbers given as strings). Unknown fields are errors.
pub fn parse_model_config_json(json: &str) -> Result<ModelConfig, String> {
    let desc = model_config_descriptor()?;
    let mut de = serde_json::Deserializer::from_str(json);
    let msg = DynamicMessage::deserialize(desc.clone(), &mut de)
        .map_err(|e| format!("failed to parse the config override: {e}"))?;
    de.end()
        .map_err(|e| format!("failed to parse the config override: {e}"))?;
    msg.transcode_to()
        .map_err(|e| format!("failed to convert the config override: {e}"))
}

/// Inserts `:` between a field name and a following `[`, outside strings and comments:
/// `input [ {..} ]` becomes `input :[ {..} ]`. Everything else is left as written.
pub fn insert_list_colons(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    // The last significant character emitted, outside comments.
    let mut last_sig: Option<char> = None;
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                out.push(c);
                for n in chars.by_ref() {
                    out.push(n);
                    if n == '\n' {
                        break;
                    }
                }
            }
            '"' | '\'' => {
                out.push(c);
                while let Some(n) = chars.next() {
                    out.push(n);
                    if n == '\\' {
                        if let Some(esc) = chars.next() {
                            out.push(esc);
                        }
                    } else if n == c {
                        break;
                    }
                }
                last_sig = Some(c);
            }
            '[' => {
                if matches!(last_sig, Some(p) if p.is_ascii_alphanumeric() || p == '_') {
                    out.push(':');
                }
                out.push(c);
                last_sig = Some(c);
            }
            _ => {
                out.push(c);
                if !c.is_whitespace() {
                    last_sig = Some(c);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_override_json() {
        let c = parse_model_config_json(
            r#"{"name":"m","max_batch_size":"16","input":[{"name":"X","data_type":"TYPE_FP32","dims":["4"]}]}"#,
        )
        .unwrap();
        assert_eq!(c.max_batch_size, 16);
        assert_eq!(c.input[0].dims, vec![4]);
        let e = parse_model_config_json(r#"{"bogus":1}"#).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        assert!(parse_model_config_json("{").is_err());
        assert!(parse_model_config_json("{} x").is_err());
    }

    #[test]
    fn colon_inserted_only_where_missing() {
        assert_eq!(insert_list_colons("input [ { } ]"), "input :[ { } ]");
        assert_eq!(insert_list_colons("dims: [ 16 ]"), "dims: [ 16 ]");
        assert_eq!(insert_list_colons("input\n[\n]"), "input\n:[\n]");
        assert_eq!(
            insert_list_colons("name: \"a [b\" # c [d\nx [ 1 ]"),
            "name: \"a [b\" # c [d\nx :[ 1 ]"
        );
        assert_eq!(
            insert_list_colons("dims: [ -1 ] x: [ ["),
            "dims: [ -1 ] x: [ ["
        );
    }

    #[test]
    fn parses_triton_simple_example() {
        let text = r#"
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input  [ { name: "INPUT0"  data_type: TYPE_INT32 dims: [ 16 ] },
         { name: "INPUT1"  data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
         { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0 ] } ]
version_policy: { specific { versions: [1, 3] } }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"#;
        let p = parse_model_config(text).unwrap();
        assert!(p.has_max_batch_size);
        let c = p.config;
        assert_eq!(c.name, "simple");
        assert_eq!(c.max_batch_size, 8);
        assert_eq!(c.input.len(), 2);
        assert_eq!(c.input[1].dims, vec![16]);
        assert_eq!(c.input[0].data_type, 8);
        assert_eq!(c.output[1].name, "OUTPUT1");
        assert_eq!(c.instance_group[0].count, 2);
        assert_eq!(c.instance_group[0].kind, 1);
        assert_eq!(c.parameters["intra_op_thread_count"].string_value, "1");
        assert!(c.scheduling_choice.is_some());
    }

    #[test]
    fn repeated_lines_and_missing_fields() {
        let p = parse_model_config("platform: \"onnxruntime_onnx\"\ninput { name: \"x\" data_type: TYPE_FP32 dims: 3 dims: 4 }\n").unwrap();
        assert!(!p.has_max_batch_size);
        assert_eq!(p.config.input[0].dims, vec![3, 4]);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse_model_config("max_batch_size: \"eight\"").unwrap_err();
        assert!(e.contains("failed to parse"), "{e}");
        let e = parse_model_config("no_such_field: 1").unwrap_err();
        assert!(e.contains("no_such_field"), "{e}");
    }
}
