//! The `switchyard` binary: parse flags, set up logging, serve until SIGINT/SIGTERM.
//! `switchyard shadow-report ...` instead reads divergence logs offline (no runtime, no
//! server; see `switchyard::report`); `switchyard calibrate ...` makes an INT8 calibration
//! table (`switchyard::engine::calibrate_cmd`).

use clap::Parser;

fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "shadow-report")
    {
        std::process::exit(switchyard::report::main(std::env::args_os().skip(1)));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "calibrate") {
        std::process::exit(switchyard::engine::calibrate_cmd::main(
            std::env::args_os().skip(1),
        ));
    }
    let args = switchyard::config::Args::parse();
    switchyard::init_tracing(args.log_verbose);
    tracing::info!(?args, "starting switchyard {}", env!("CARGO_PKG_VERSION"));
    // What CUDA this process can load (libraries are opened at run time, never linked).
    tracing::info!("CUDA: {}", switchyard_kernels::probe().summary());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(switchyard::run(args, switchyard::shutdown::signal())) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            1
        }
    };
    // `run` has drained what it could within --exit-timeout-secs; requests still running
    // past it must not hold the process (dropping the runtime would wait for them).
    std::process::exit(code);
}
