//! Switchyard's own CUDA kernels: the `.cu` files in `kernels/cu/`, embedded in the binary.
//!
//! Each `.cu` file includes `common.cuh`. NVRTC is given no include directory: [`expand`]
//! replaces that one `#include` line with the header's text before compiling, so the files
//! stay ordinary CUDA sources that `nvcc -I kernels/cu` compiles as they are.

/// One `.cu` file and the `extern "C"` kernels it defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSource {
    /// File name inside `kernels/cu/`.
    pub file: &'static str,
    /// The file's text, as written (before [`expand`]).
    pub text: &'static str,
    /// The kernels' entry points.
    pub entry_points: &'static [&'static str],
}

/// `kernels/cu/common.cuh`, the one header the sources include.
pub const COMMON_HEADER: &str = include_str!("../cu/common.cuh");

const INCLUDE_COMMON: &str = "#include \"common.cuh\"";

/// Every kernel source of this crate.
pub const KERNEL_SOURCES: &[KernelSource] = &[
    KernelSource {
        file: "bias_act.cu",
        text: include_str!("../cu/bias_act.cu"),
        entry_points: &[
            "bias_f32",
            "bias_relu_f32",
            "bias_gelu_f32",
            "bias_sigmoid_f32",
            "bias_tanh_f32",
            "bias_f16",
            "bias_relu_f16",
            "bias_gelu_f16",
            "bias_sigmoid_f16",
            "bias_tanh_f16",
        ],
    },
    KernelSource {
        file: "softmax.cu",
        text: include_str!("../cu/softmax.cu"),
        entry_points: &["softmax_f32", "softmax_f16"],
    },
    KernelSource {
        file: "layer_norm.cu",
        text: include_str!("../cu/layer_norm.cu"),
        entry_points: &["layer_norm_f32", "layer_norm_f16"],
    },
    KernelSource {
        file: "quantize.cu",
        text: include_str!("../cu/quantize.cu"),
        entry_points: &[
            "quantize_f32",
            "quantize_f16",
            "dequantize_f32",
            "dequantize_f16",
            "quantize_sym_f32",
            "quantize_sym_f16",
            "dequant_bias_act_f32",
            "dequant_bias_act_f16",
            "gemm_i8_i32",
        ],
    },
    KernelSource {
        file: "elementwise.cu",
        text: include_str!("../cu/elementwise.cu"),
        entry_points: &["elementwise"],
    },
    KernelSource {
        file: "attention.cu",
        text: include_str!("../cu/attention.cu"),
        entry_points: &["scale_mask_softmax_f32", "scale_mask_softmax_f16"],
    },
    KernelSource {
        file: "rows.cu",
        text: include_str!("../cu/rows.cu"),
        entry_points: &[
            "add_layer_norm_f32",
            "add_layer_norm_f16",
            "reduce_f32",
            "reduce_f16",
            "argmax",
            "gather_i64",
            "gather_i32",
        ],
    },
];

/// The source with its `#include "common.cuh"` line replaced by the header's text (once).
/// Other lines are kept as written; a source without the include is returned unchanged.
pub fn expand(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + COMMON_HEADER.len());
    let mut included = false;
    for line in text.split_inclusive('\n') {
        if line.trim() == INCLUDE_COMMON {
            if !included {
                out.push_str(COMMON_HEADER);
                if !COMMON_HEADER.ends_with('\n') {
                    out.push('\n');
                }
                included = true;
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Looks a source up by file name.
pub fn source(file: &str) -> Option<&'static KernelSource> {
    KERNEL_SOURCES.iter().find(|k| k.file == file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_is_replaced_once_and_nothing_else_changes() {
        let text = "// a\n#include \"common.cuh\"\nint x;\n  #include \"common.cuh\"  \nint y;";
        let out = expand(text);
        assert_eq!(out.matches("SWITCHYARD_COMMON_CUH").count(), 3);
        assert!(out.starts_with("// a\n// Shared helpers"));
        assert!(out.ends_with("#endif  // SWITCHYARD_COMMON_CUH\nint x;\nint y;"));
        assert!(!out.contains("#include"));
        assert_eq!(expand("int z;\n"), "int z;\n");
    }

    #[test]
    fn every_source_includes_the_header_and_defines_its_entry_points() {
        assert!(!KERNEL_SOURCES.is_empty());
        for k in KERNEL_SOURCES {
            assert!(k.text.contains(INCLUDE_COMMON), "{}", k.file);
            assert!(!k.entry_points.is_empty(), "{}", k.file);
            for e in k.entry_points {
                // Named in the file, directly or as a macro argument.
                assert!(k.text.contains(e), "{} lacks {e}", k.file);
            }
        }
        assert_eq!(source("softmax.cu").unwrap().entry_points.len(), 2);
        assert!(source("missing.cu").is_none());
    }
}
