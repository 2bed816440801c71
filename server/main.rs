//! The `switchyard` binary: parse flags, set up logging, serve until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = switchyard::config::Args::parse();
    switchyard::init_tracing(args.log_verbose);
    tracing::info!(?args, "starting switchyard {}", env!("CARGO_PKG_VERSION"));
    match switchyard::run(args, switchyard::shutdown::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
