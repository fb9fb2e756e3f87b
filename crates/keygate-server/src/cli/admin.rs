//! `keygate admin ...`: the admin web UI's users. A password is read from the terminal (twice)
//! or from stdin's first line, checked, hashed with argon2id, and never printed or stored in
//! the clear.

use std::io::Write;

use keygate::Keygate;
use keygate::accounts::{AdminUser, check_password, check_username};
use serde_json::{Value, json};

use super::args::AdminCommand;
use super::keys::cli;
use super::output::print_json;
use crate::Failure;

/// `keygate admin set-password`: adds or changes an admin-UI user. The password is read from
/// the terminal (twice) or from stdin's first line, checked, hashed with argon2id, and never
/// printed or stored in the clear.
pub async fn run(
    keygate: &Keygate,
    command: AdminCommand,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    match command {
        AdminCommand::SetPassword {
            username,
            read_only,
            password_stdin,
        } => set_password(keygate, username, read_only, password_stdin, out).await,
        AdminCommand::Users { json } => admin_users(keygate, json, out).await,
        AdminCommand::RemoveUser { username } => {
            let removed = keygate.accounts().remove_user(&username, &cli()).await?;
            if !removed {
                return Err(Failure::Other(format!(
                    "no admin UI user called {username}"
                )));
            }
            writeln!(
                out,
                "admin UI user {username} removed; their sessions have ended"
            )?;
            Ok(0)
        }
    }
}

/// `keygate admin users`: name, role and times; never the hash.
async fn admin_users(keygate: &Keygate, json: bool, out: &mut dyn Write) -> Result<u8, Failure> {
    let users = keygate.accounts().users().await?;
    if json {
        let list: Vec<Value> = users
            .iter()
            .map(|u| {
                json!({"username": u.username, "read_only": u.read_only,
                       "created_at": u.created_at, "updated_at": u.updated_at})
            })
            .collect();
        print_json(out, &Value::Array(list))?;
        return Ok(0);
    }
    for u in &users {
        let role = if u.read_only {
            "read-only"
        } else {
            "full access"
        };
        writeln!(out, "{}\t{role}\tpassword set {}", u.username, u.updated_at)?;
    }
    if users.is_empty() {
        writeln!(
            out,
            "no admin UI users (keygate admin set-password NAME adds one)"
        )?;
    }
    Ok(0)
}

async fn set_password(
    keygate: &Keygate,
    username: String,
    read_only: bool,
    password_stdin: bool,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    check_username(&username).map_err(|e| Failure::Other(format!("username: {e}")))?;
    let password = read_password(password_stdin)?;
    check_password(&password).map_err(|e| Failure::Other(format!("password: {e}")))?;
    let hash = tokio::task::spawn_blocking(move || crate::admin::password::hash(&password))
        .await
        .map_err(|e| Failure::Other(e.to_string()))?
        .map_err(Failure::Other)?;
    let now = keygate.now();
    // For an existing user the store keeps the first `created_at`.
    let user = AdminUser {
        username,
        password_hash: hash,
        read_only,
        created_at: now,
        updated_at: now,
    };
    keygate.accounts().set_user(&user, &cli()).await?;
    writeln!(
        out,
        "admin UI user {} set ({}); sign in at /admin",
        user.username,
        if read_only {
            "read-only"
        } else {
            "full access"
        }
    )?;
    Ok(0)
}

fn read_password(from_stdin: bool) -> Result<String, Failure> {
    use std::io::{BufRead, IsTerminal};
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Other(
            "no terminal to ask for the password on; pass it with --password-stdin".into(),
        ));
    }
    let first = rpassword::prompt_password("Password: ")?;
    let second = rpassword::prompt_password("Password again: ")?;
    if first != second {
        return Err(Failure::Other(
            "the two passwords differ; nothing was changed".into(),
        ));
    }
    Ok(first)
}
