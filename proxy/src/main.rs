//! The `portcullis` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::config::Config;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "An identity-aware access proxy")]
struct Cli {
    /// The configuration file (TOML).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and validate the configuration, then exit.
    Check,
}

/// Configuration errors exit with this code.
const CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(path) = cli.config else {
        eprintln!("error: --config FILE is required");
        return ExitCode::from(CONFIG_ERROR);
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} configuration error(s)",
                path.display(),
                errors.0.len()
            );
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    match cli.command {
        Some(Command::Check) => {
            println!("{}", config.summary());
            ExitCode::SUCCESS
        }
        None => match portcullis::server::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
