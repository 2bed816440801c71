//! The GPU executor's launches, checked without a GPU: every test program plans (steps →
//! kernel launches and cuBLASLt matmuls at device addresses), and every planned kernel
//! launch passes exactly the parameters its entry point declares in the PTX NVRTC produces
//! for sm_90 (count, class and size: pointers and 64-bit integers, 32-bit integers, floats,
//! by-value structs). A mismatch here would be a silent wrong answer on the GPU.

mod common;

use std::collections::{BTreeSet, HashMap};

use switchyard_kernels::gpu::plan::{plan_program, Memory, Planned};
use switchyard_kernels::nvrtc::compile_all;
use switchyard_kernels::program_cpu;
use switchyard_kernels::sources::KERNEL_SOURCES;
use switchyard_kernels::ComputeCapability;

/// The parameters of every entry point in `ptx`: (class, bytes) each.
fn ptx_params(ptx: &str) -> HashMap<String, Vec<(&'static str, usize)>> {
    let mut out = HashMap::new();
    let mut rest = ptx;
    while let Some(at) = rest.find(".entry ") {
        rest = &rest[at + ".entry ".len()..];
        let Some(open) = rest.find('(') else { break };
        let name = rest[..open].trim().to_string();
        let close = rest[open..].find(')').map_or(rest.len(), |c| open + c);
        let params = rest[open + 1..close]
            .split(',')
            .filter(|p| p.contains(".param"))
            .map(|p| {
                if let (Some(l), Some(r)) = (p.find('['), p.find(']')) {
                    ("struct", p[l + 1..r].trim().parse::<usize>().unwrap())
                } else if [".u64", ".s64", ".b64"].iter().any(|t| p.contains(t)) {
                    ("b64", 8)
                } else if [".u32", ".s32", ".b32"].iter().any(|t| p.contains(t)) {
                    ("b32", 4)
                } else if p.contains(".f32") {
                    ("f32", 4)
                } else {
                    panic!("unknown PTX parameter `{p}` of {name}")
                }
            })
            .collect();
        out.insert(name, params);
        rest = &rest[close..];
    }
    out
}

fn fake_memory(weights: usize) -> Memory {
    Memory {
        arena: 0x7f00_0000_0000,
        weights: (0..weights as u64)
            .map(|i| 0x7e00_0000_0000 + (i << 20))
            .collect(),
    }
}

#[test]
fn test_programs_are_valid_and_run_on_the_cpu() {
    for case in common::cases() {
        case.program
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let out = program_cpu::run(&case.program, &case.host_inputs())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(out.len(), case.program.outputs.len(), "{}", case.name);
    }
}

#[test]
fn every_planned_launch_matches_its_ptx_signature() {
    assert!(
        common::load_nvrtc(),
        "NVRTC missing: run `bash scripts/deps.sh test` (it installs NVRTC for this test)"
    );
    let mut params = HashMap::new();
    for k in compile_all(ComputeCapability::HOPPER).unwrap_or_else(|e| panic!("{e}")) {
        params.extend(ptx_params(&k.ptx));
    }
    let mut used = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let (mut matmuls, mut int8) = (0, 0);
    for case in common::cases() {
        for s in &case.program.steps {
            kinds.insert(s.kind());
        }
        let mem = fake_memory(case.program.weights.len());
        let planned =
            plan_program(&case.program, &mem).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let mut launches = Vec::new();
        for p in planned {
            match p {
                Planned::Kernel(k) => launches.push(k),
                Planned::Matmul(_) => matmuls += 1,
                Planned::Int8Matmul { spec, fallback } => {
                    int8 += 1;
                    matmuls += spec.is_some() as usize;
                    launches.push(fallback);
                }
            }
        }
        for k in launches {
            let want = params
                .get(&k.entry)
                .unwrap_or_else(|| panic!("{}: no entry point {}", case.name, k.entry));
            let got: Vec<(&str, usize)> = k.args.iter().map(|a| a.ptx_param()).collect();
            assert_eq!(&got, want, "{}: arguments of {}", case.name, k.entry);
            let (block, grid) = (k.cfg.block_dim.0, k.cfg.grid_dim.0);
            assert!(
                block % 32 == 0 && block <= 1024,
                "{}: block {block}",
                k.entry
            );
            assert!(grid >= 1, "{}: empty grid", k.entry);
            used.insert(k.entry.clone());
        }
    }
    // Every step kind is exercised, and every kernel the executor can launch.
    let all_kinds = [
        "gemm",
        "gemm_int8",
        "elementwise",
        "softmax",
        "layer_norm",
        "attention",
        "reduce",
        "gather",
        "argmax",
    ];
    assert_eq!(kinds, all_kinds.into_iter().collect());
    assert!(
        matmuls >= 8 && int8 == 2,
        "{matmuls} matmuls, {int8} INT8 GEMMs"
    );
    let executor_kernels: BTreeSet<String> = KERNEL_SOURCES
        .iter()
        .filter(|k| k.file != "layer_norm.cu")
        .flat_map(|k| k.entry_points.iter())
        // The per-tensor INT8 kernels of quantize.cu are not program steps.
        .filter(|e| !e.starts_with("quantize_f") && !e.starts_with("dequantize_"))
        // bias_act variants: bias_relu_* only run without cuBLASLt's fused epilogue.
        .filter(|e| !e.starts_with("bias_relu_") && !e.starts_with("bias_f"))
        .map(|e| e.to_string())
        .collect();
    let missing: Vec<&String> = executor_kernels.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "kernels no test program launches: {missing:?}"
    );
}

#[test]
fn the_ptx_parser_reads_every_parameter_class() {
    let ptx =
        ".visible .entry k(\n\t.param .u64 .ptr .align 1 k_param_0,\n\t.param .f32 k_param_1,\n\
               \t.param .u32 k_param_2,\n\t.param .align 8 .b8 k_param_3[56]\n)\n{\n}\n\
               .visible .entry e(\n\n)\n";
    let p = ptx_params(ptx);
    assert_eq!(
        p["k"],
        vec![("b64", 8), ("f32", 4), ("b32", 4), ("struct", 56)]
    );
    assert!(p["e"].is_empty());
}
