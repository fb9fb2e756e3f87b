//! The command line: what clap parses ([`args`]) and the one-shot commands that manage keys
//! from the shell (everything but `serve`, which is [`crate::serve`]).

mod admin;
pub mod args;
mod audit;
pub mod client;
mod keys;
mod output;
mod webhooks;

use std::io::Write;

use keygate::Keygate;

pub use args::{Cli, Command};

use crate::Failure;

/// Runs a one-shot command on `keygate`, printing to `out`; `Ok(code)` is the exit status.
pub async fn run(keygate: &Keygate, command: Command, out: &mut dyn Write) -> Result<u8, Failure> {
    match command {
        Command::Keys(command) => keys::run(keygate, command, out).await,
        Command::Audit(args) => audit::audit(keygate, args, out).await,
        Command::Incident(args::IncidentCommand::Revoke(args)) => {
            keys::incident_revoke(keygate, args, out).await
        }
        Command::RotateDue(args) => keys::rotate_due(keygate, args, out).await,
        Command::Refill { json } => keys::refill(keygate, json, out).await.map(|()| 0),
        Command::Webhooks(command) => webhooks::webhooks(keygate, command, out).await,
        Command::Admin(command) => admin::run(keygate, command, out).await,
        Command::Client(command) => client::run(command, out).await,
        Command::Serve(_) | Command::Gateway(_) => Err(Failure::Other(
            "serve and gateway are not one-shot commands".into(),
        )),
    }
}
