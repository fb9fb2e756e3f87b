//! `keygate`: the command line over the keygate library.
//!
//! Exit status: 0 done; 1 `keys verify` found the key not VALID; 2 bad input or an unusable
//! database, with one line on standard error and nothing written.

mod admin;
mod api;
mod cli;
mod config;
mod gateway;
mod keys;
mod metrics;
mod serve;
mod webhooks;

use std::process::ExitCode;

use clap::Parser;
use keygate::Keygate;
use keygate::store::StoreError;

use crate::cli::{Cli, Command};
use crate::config::Settings;

/// Why a command failed; printed as one line, exit status 2.
#[derive(Debug)]
pub enum Failure {
    /// The store refused or failed.
    Store(StoreError),
    /// Writing output failed.
    Io(std::io::Error),
    /// The configuration is not usable.
    Config(String),
    /// Anything else.
    Other(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(StoreError::NotFound) => f.write_str("no key with that id"),
            Self::Store(e) => write!(f, "{e}"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Config(e) => f.write_str(e),
            Self::Other(e) => f.write_str(e),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    // The service wants every core; a one-shot CLI command needs one thread.
    let mut builder = match cli.command {
        Command::Serve(_) | Command::Gateway(_) => tokio::runtime::Builder::new_multi_thread(),
        Command::Keys(_)
        | Command::Audit(_)
        | Command::Incident(_)
        | Command::RotateDue(_)
        | Command::Webhooks(_)
        | Command::Admin(_) => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&Failure::Io(e)),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let serve_args = match &cli.command {
        Command::Serve(args) => Some(args),
        _ => None,
    };
    let settings = Settings::resolve(&cli, serve_args)?;
    match cli.command {
        Command::Serve(_) => serve::run(settings).await.map(|()| 0),
        Command::Gateway(args) => gateway::run(settings, cli.config.as_deref(), args)
            .await
            .map(|()| 0),
        command => {
            let store = keygate::store::open(&settings.database).await?;
            // A one-shot command: no cache, usage written before exit.
            let keygate = Keygate::builder(store)
                .prefix(settings.prefix)
                .usage_flush_interval(None)
                .cache(None)
                .sealing_key(settings.sealing_key)
                .build();
            match command {
                Command::Keys(command) => keys::run(&keygate, command).await,
                Command::Audit(args) => keys::audit(&keygate, args).await,
                Command::Incident(cli::IncidentCommand::Revoke(args)) => {
                    keys::incident_revoke(&keygate, args).await
                }
                Command::RotateDue(args) => keys::rotate_due(&keygate, args).await,
                Command::Webhooks(command) => keys::webhooks(&keygate, command).await,
                Command::Admin(command) => keys::admin(&keygate, command).await,
                Command::Serve(_) | Command::Gateway(_) => unreachable!("handled above"),
            }
        }
    }
}

fn fail(e: &Failure) -> ExitCode {
    let line = e.to_string().replace(['\n', '\r'], " ");
    eprintln!("keygate: error: {line}");
    ExitCode::from(2)
}

/// Help and version go to stdout with status 0; a usage error is one line and status 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                2
            } else {
                0
            },
        );
    }
    let rendered = e.render().to_string();
    // clap's message may run over several lines before its usage block: fold it into one.
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let message = message.join(" ");
    let message = message.trim_start_matches("error: ");
    eprintln!("keygate: error: {message} (see keygate --help)");
    ExitCode::from(2)
}
