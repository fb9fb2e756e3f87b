//! `keygate client rotate`: the key holder's side of a rotation, run by its own cron or CI
//! job — no database, only the keygate server's API and the holder's own key.
//!
//! 1. rotate the key in `--key-env` (`POST /v1/self/rotate`, the key needs
//!    `keygate:self-rotate`);
//! 2. hand the new key over: rewrite `VAR=` in `--write-env FILE` atomically (a temporary file
//!    in the same directory with the same mode, synced, renamed over it), or write it to the
//!    stdin of `--exec CMD`;
//! 3. with `--check URL`, GET the holder's own API with the new key: a 2xx passes; a failure
//!    puts the env file back as it was;
//! 4. with `--retire` (only with a check, only once it passed), end the old key's grace
//!    period now (`POST /v1/self/retire`, authenticated by the new key).
//!
//! Any failure leaves the old key working (for its grace period), prints one line and exits 2.
//! The keys travel only in the environment, request headers, the env file and the command's
//! stdin: never in arguments, output or log lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};

use super::args::{ClientCommand, ClientRotateArgs};
use crate::Failure;

/// How long keygate, the check URL and the `--exec` command each have.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Largest env file rewritten.
const MAX_ENV_FILE: u64 = 1 << 20;

/// `keygate client ...`
pub async fn run(command: ClientCommand, out: &mut dyn Write) -> Result<u8, Failure> {
    match command {
        ClientCommand::Rotate(args) => rotate(args, out).await,
    }
}

fn fail(message: impl Into<String>) -> Failure {
    Failure::Other(message.into())
}

async fn rotate(args: ClientRotateArgs, out: &mut dyn Write) -> Result<u8, Failure> {
    let old = std::env::var(&args.key_env)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            fail(format!(
                "{} is not set: it must hold the current key",
                args.key_env
            ))
        })?;
    let server = args.server.trim_end_matches('/');
    let parsed =
        reqwest::Url::parse(server).map_err(|_| fail("--server: expected an http(s) URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(fail("--server: expected an http(s) URL"));
    }
    if let Some(check) = &args.check
        && !reqwest::Url::parse(check).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        return Err(fail("--check: expected an http(s) URL"));
    }
    let client = http_client()?;
    // Read the env file (and make sure its directory takes a new file) before rotating: a
    // destination that cannot be written fails while nothing has changed.
    let env_file = args.write_env.as_deref().map(EnvFile::open).transpose()?;

    // 1. Rotate.
    let mut body = json!({});
    if let Some(grace) = &args.grace {
        body["grace_period"] = json!(grace);
    }
    let response = client
        .post(format!("{server}/v1/self/rotate"))
        .header(AUTHORIZATION, format!("Api-Key {old}"))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| {
            fail(format!(
                "could not reach keygate at {server}: {}; nothing changed",
                reason(&e)
            ))
        })?;
    let status = response.status();
    let answer = json_of(response).await;
    if status.as_u16() != 201 {
        return Err(fail(format!(
            "keygate refused the rotation (HTTP {}: {}); nothing changed",
            status.as_u16(),
            detail(&answer)
        )));
    }
    let (Some(new_key), Some(new_id)) = (answer["key"].as_str(), answer["id"].as_str()) else {
        return Err(fail(
            "keygate's answer to the rotation has no new key; the old key keeps working for its grace period",
        ));
    };
    let old_id = answer["rotated_from"].as_str().unwrap_or("the old key");

    // 2. Hand the new key over.
    let lost = |why: String| {
        fail(format!(
            "rotated {old_id} -> {new_id} but could not hand the new key over ({why}); the old key \
             keeps working for its grace period: have an admin rotate it again"
        ))
    };
    if let Some(file) = &env_file {
        file.write_var(&args.key_env, new_key)
            .map_err(|e| lost(format!("{}: {e}", file.path.display())))?;
    }
    if let Some(command) = &args.exec {
        pipe_to(command, &args.key_env, new_key)
            .await
            .map_err(lost)?;
    }
    let mut done = format!("rotated {old_id} -> {new_id}");
    if let Some(file) = &env_file {
        done.push_str(&format!("; wrote {}", file.path.display()));
    }
    if args.exec.is_some() {
        done.push_str("; handed to the command");
    }

    // 3. Check it.
    if let Some(url) = &args.check {
        if let Err(why) = check(&client, url, new_key).await {
            let restored = match &env_file {
                Some(file) => match file.restore() {
                    Ok(()) => format!("; {} restored", file.path.display()),
                    Err(e) => format!("; could not restore {}: {e}", file.path.display()),
                },
                None => String::new(),
            };
            return Err(fail(format!(
                "rotated {old_id} -> {new_id} but the new key failed the check ({why}){restored}; \
                 the old key keeps working for its grace period (not retired)"
            )));
        }
        done.push_str("; check passed");
    }

    // 4. Retire the old key.
    if args.retire {
        let response = client
            .post(format!("{server}/v1/self/retire"))
            .header(AUTHORIZATION, format!("Api-Key {new_key}"))
            .send()
            .await;
        let refused = match response {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => {
                let status = r.status().as_u16();
                let answer = json_of(r).await;
                Some(format!("HTTP {status}: {}", detail(&answer)))
            }
            Err(e) => Some(reason(&e)),
        };
        if let Some(why) = refused {
            return Err(fail(format!(
                "{done}, but keygate did not retire the old key ({why}); it keeps working for its grace period"
            )));
        }
        done.push_str("; old key retired");
    }
    writeln!(out, "{done}")?;
    Ok(0)
}

/// The HTTP client: a timeout per request, no redirects (the key must not follow one
/// elsewhere), TLS by rustls on ring.
fn http_client() -> Result<reqwest::Client, Failure> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| fail(format!("could not set up HTTP: {e}")))
}

/// A request error in a few words (no headers, so no key).
fn reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        e.to_string()
    }
}

/// An answer's JSON body (`null` if it has none), read up to 64 KiB.
async fn json_of(response: reqwest::Response) -> Value {
    match response.bytes().await {
        Ok(body) if body.len() <= 64 * 1024 => serde_json::from_slice(&body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// A problem+json answer's detail.
fn detail(answer: &Value) -> String {
    answer["detail"]
        .as_str()
        .map_or_else(|| "no detail".to_owned(), |d| d.replace(['\n', '\r'], " "))
}

/// GETs `url` with the new key; a 2xx passes.
async fn check(client: &reqwest::Client, url: &str, key: &str) -> Result<(), String> {
    let response = client
        .get(url)
        .header(AUTHORIZATION, format!("Api-Key {key}"))
        .send()
        .await
        .map_err(|e| format!("{url}: {}", reason(&e)))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "{url} answered HTTP {}",
            response.status().as_u16()
        ))
    }
}

/// Runs `command` with `sh -c`, the key and a newline on its stdin (the old key's variable
/// removed from its environment); it must exit 0 within [`TIMEOUT`].
async fn pipe_to(command: &str, var: &str, key: &str) -> Result<(), String> {
    let (command, var, key) = (command.to_owned(), var.to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || run_with_stdin(&command, &var, &key))
        .await
        .map_err(|e| format!("the command could not be run: {e}"))?
}

fn run_with_stdin(command: &str, var: &str, key: &str) -> Result<(), String> {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env_remove(var)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start the command: {e}"))?;
    let fed = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin"))
        .and_then(|mut stdin| {
            stdin.write_all(key.as_bytes())?;
            stdin.write_all(b"\n")
        });
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the command did not finish within 30 s".to_owned());
            }
            Err(e) => return Err(format!("the command failed: {e}")),
        }
    };
    if !status.success() {
        return Err(match status.code() {
            Some(code) => format!("the command exited with status {code}"),
            None => "the command was killed".to_owned(),
        });
    }
    fed.map_err(|e| format!("could not write to the command: {e}"))
}

/// An env file, as read before the rotation.
struct EnvFile {
    path: PathBuf,
    original: String,
    mode: u32,
}

impl EnvFile {
    /// Reads it, and checks that its directory takes a new file.
    fn open(path: &Path) -> Result<Self, Failure> {
        use std::os::unix::fs::PermissionsExt;
        let name = path.display();
        let meta = std::fs::metadata(path).map_err(|e| fail(format!("--write-env {name}: {e}")))?;
        if !meta.is_file() {
            return Err(fail(format!("--write-env {name}: not a regular file")));
        }
        if meta.len() > MAX_ENV_FILE {
            return Err(fail(format!("--write-env {name}: larger than 1 MiB")));
        }
        let original =
            std::fs::read_to_string(path).map_err(|e| fail(format!("--write-env {name}: {e}")))?;
        let file = Self {
            path: path.to_owned(),
            original,
            mode: meta.permissions().mode() & 0o7777,
        };
        // A trial write of the same content proves the directory takes the temporary file.
        file.replace_with(&file.original)
            .map_err(|e| fail(format!("--write-env {name}: cannot replace it: {e}")))?;
        Ok(file)
    }

    /// Writes the file with `VAR=<key>` in place of every `VAR=` (or `export VAR=`) line, or
    /// appended if there is none.
    fn write_var(&self, var: &str, key: &str) -> std::io::Result<()> {
        let mut found = false;
        let mut text = String::with_capacity(self.original.len() + key.len());
        for line in self.original.split_inclusive('\n') {
            let body = line.trim_start();
            let export = body.strip_prefix("export ").map(str::trim_start);
            let assigned = export.unwrap_or(body).strip_prefix(var);
            if assigned.is_some_and(|rest| rest.starts_with('=')) {
                found = true;
                let newline = if line.ends_with('\n') { "\n" } else { "" };
                let prefix = if export.is_some() { "export " } else { "" };
                text.push_str(&format!("{prefix}{var}={key}{newline}"));
            } else {
                text.push_str(line);
            }
        }
        if !found {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("{var}={key}\n"));
        }
        self.replace_with(&text)
    }

    /// Puts the original content back.
    fn restore(&self) -> std::io::Result<()> {
        self.replace_with(&self.original)
    }

    /// Replaces the file with `text` atomically: a new file in the same directory with the
    /// same mode, written and synced, renamed over the old one, the directory synced.
    fn replace_with(&self, text: &str) -> std::io::Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let file_name = self
            .path
            .file_name()
            .map_or_else(|| "env".into(), |n| n.to_string_lossy().into_owned());
        let temp = dir.join(format!(".{file_name}.keygate-{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            // Exactly the old mode, whatever the umask.
            file.set_permissions(std::fs::Permissions::from_mode(self.mode))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)?;
            std::fs::File::open(&dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }
}
