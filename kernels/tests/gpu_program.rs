//! Every test program (each `Step` kind, each element-type path) run on the GPU and on
//! `program_cpu`, outputs compared: F32 within 1e-5 relative, F16 within 1e-2, integers
//! (INT8 accumulators, indices, casts) exactly. Both with the steps launched one by one and
//! from a captured CUDA graph, twice each (the shared arena and staging are reused).
//!
//! Without a usable GPU the test prints why and passes, unless `SWITCHYARD_EXPECT_GPU=1`
//! (benches/gpu/run.sh sets it on the GPU machine): then it fails.

mod common;

use std::sync::Arc;

use switchyard_kernels::gpu::{GpuDevice, GpuEngine, GpuError, LoadOptions};
use switchyard_kernels::program::{Program, ALIGN};
use switchyard_kernels::program_cpu;

fn expect_gpu() -> bool {
    std::env::var("SWITCHYARD_EXPECT_GPU").is_ok_and(|v| v == "1")
}

/// The GPU, or `None` (after saying why) where there is none and none is expected.
fn device() -> Option<Arc<GpuDevice>> {
    common::load_nvrtc();
    match GpuDevice::new(0) {
        Ok(d) => {
            eprintln!("GPU: {d:?}");
            Some(d)
        }
        Err(e) if !expect_gpu() => {
            eprintln!("no GPU run (set SWITCHYARD_EXPECT_GPU=1 to require one): {e}");
            None
        }
        Err(e) => panic!("SWITCHYARD_EXPECT_GPU=1 but the GPU cannot be used: {e}"),
    }
}

#[test]
fn every_step_matches_program_cpu() {
    let Some(device) = device() else { return };
    let cases = common::cases();
    let programs: Vec<Program> = cases.iter().map(|c| c.program.clone()).collect();
    let mut engine = GpuEngine::for_programs(device, &programs).unwrap();
    let mut failures = Vec::new();
    for cuda_graph in [false, true] {
        for case in &cases {
            let inputs = case.host_inputs();
            let want = program_cpu::run(&case.program, &inputs).unwrap();
            let mut gpu = engine
                .load(&case.program, LoadOptions { cuda_graph })
                .unwrap_or_else(|e| panic!("{}: load: {e}", case.name));
            assert_eq!(gpu.uses_cuda_graph(), cuda_graph, "{}", case.name);
            if case.name == "gemm_int8_fallback" {
                assert_eq!(gpu.int8_fallbacks(), 1, "n = 6, k = 10 is not for cuBLASLt");
            }
            for run in 0..2 {
                let got = gpu
                    .run(&inputs)
                    .unwrap_or_else(|e| panic!("{}: run: {e}", case.name));
                for ((b, g), w) in case.program.outputs.iter().zip(&got).zip(&want) {
                    if let Err(e) = common::compare(b.buf.elem, g, w, case.tol) {
                        failures.push(format!(
                            "{} (graph {cuda_graph}, run {run}) output {}: {e}",
                            case.name, b.name
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn weights_are_shared_and_inputs_are_checked() {
    let Some(device) = device() else { return };
    let cases = common::cases();
    let find = |n: &str| cases.iter().find(|c| c.name == n).unwrap();
    let gather = find("gather_i64");
    let mut engine =
        GpuEngine::for_programs(device, std::slice::from_ref(&gather.program)).unwrap();
    let mut g = engine
        .load(&gather.program, LoadOptions::default())
        .unwrap();
    // The same program again: its weight is not uploaded twice.
    let g2 = engine
        .load(&gather.program, LoadOptions::default())
        .unwrap();
    assert_eq!(engine.live_weights(), 1);
    drop(g2);
    // A program needing more arena than the engine holds is refused.
    let mut big = gather.program.clone();
    big.arena_bytes = engine.arena_bytes() + ALIGN;
    let e = engine.load(&big, LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, GpuError::Program(m) if m.contains("arena")),
        "{e}"
    );
    // Inputs: missing, wrong size, index out of range.
    assert!(matches!(g.run(&[]), Err(GpuError::Input(m)) if m.contains("missing")));
    let short = [0u8; 4];
    assert!(matches!(g.run(&[("ids", &short)]), Err(GpuError::Input(m)) if m.contains("bytes")));
    let bad: Vec<u8> = [3i64, 10, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(
        matches!(g.run(&[("ids", &bad)]), Err(GpuError::Input(m)) if m.contains("out of range"))
    );
    // And it still runs afterwards.
    assert!(g.run(&gather.host_inputs()).is_ok());
}
