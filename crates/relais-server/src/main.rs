//! The `relais` binary.

use std::process::ExitCode;

use clap::Parser;
use relais_server::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = cli::run_tool(&cli) {
        return code;
    }
    let config = match cli::load_for_run(&cli) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match relais_server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
