//! `keygate`: the command line over the keygate library (see the `keygate_server` crate).
//!
//! Exit status: 0 done; 1 `keys verify` found the key not VALID; 2 bad input or an unusable
//! database, with one line on standard error and nothing written.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use keygate_server::{Cli, Command, Failure, run};

/// mimalloc instead of the system allocator: a request allocates often (hyper, axum, JSON),
/// and glibc's malloc/free were a fifth of `/v1/verify`'s instructions. Built with `no_thp`:
/// with transparent huge pages its resident memory doubled (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    // The service wants every core; a one-shot command needs one thread.
    let mut builder = match cli.command {
        Command::Serve(_) | Command::Gateway(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let outcome = match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => Err(Failure::Io(e)),
    };
    outcome.map_or_else(|e| fail(&e.to_string()), ExitCode::from)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("keygate: error: {}", message.replace(['\n', '\r'], " "));
    ExitCode::from(2)
}

/// Help and version go to stdout with status 0; a usage error is one line and status 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    if let ErrorKind::DisplayHelp | ErrorKind::DisplayVersion = e.kind() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return ExitCode::from(2);
    }
    // clap's message may run over several lines before its usage block: fold it into one.
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let message = message.join(" ");
    fail(&format!(
        "{} (see keygate --help)",
        message.trim_start_matches("error: ")
    ))
}
