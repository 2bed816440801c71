//! The `switchyard` binary: parse flags, set up logging, serve until SIGINT/SIGTERM.

use clap::Parser;

fn main() {
    let args = switchyard::config::Args::parse();
    switchyard::init_tracing(args.log_verbose);
    tracing::info!(?args, "starting switchyard {}", env!("CARGO_PKG_VERSION"));
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
