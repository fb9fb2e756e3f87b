//! Every input kept under `fuzz/regressions/<target>/` (inputs a fuzz target once failed on)
//! and every seed under `fuzz/seeds/<target>/`, replayed through the same checks the fuzz
//! targets run (`fuzz/checks.rs`), on stable Rust, in every test run.

#[allow(dead_code)]
#[path = "../../../../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

use crate::support::App;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut found = Vec::new();
    for kind in ["regressions", "seeds"] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            found.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    found
}

#[test]
fn saved_fuzz_inputs_still_pass_the_pure_checks() {
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 5] = [
        ("key_parse", checks::key_parse),
        ("credentials", checks::credentials),
        ("next_param", checks::next_param),
        ("webhook_url", checks::webhook_url),
        ("config_toml", checks::config_toml),
    ];
    for (target, check) in targets {
        let saved = inputs(target);
        assert!(!saved.is_empty(), "no seeds for {target}");
        for (path, bytes) in saved {
            let replay = std::panic::catch_unwind(|| check(&bytes));
            assert!(replay.is_ok(), "{target}: {} fails again", path.display());
        }
    }
}

#[test]
fn saved_fuzz_bodies_still_get_an_answer_below_500() {
    let app = App::new(&[]);
    let key_id = app.create(serde_json::json!({"name": "target"}))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let own =
        app.create(serde_json::json!({"name": "self", "scopes": ["keygate:self-rotate"]}))["key"]
            .as_str()
            .unwrap()
            .to_owned();
    let saved = inputs("json_bodies");
    assert!(!saved.is_empty());
    for (path, bytes) in saved {
        let Some((method, template, body)) = checks::json_body_request(&bytes) else {
            continue;
        };
        let route = template.replace("{id}", &key_id);
        let key = if route == "/v1/self/rotate" {
            &own
        } else {
            &app.admin
        };
        let reply = crate::support::Http::send(
            &app,
            method,
            &route,
            Some(key),
            Some(("application/json", body)),
        );
        let content_type = reply.header("content-type").map(str::to_owned);
        let answer = std::panic::catch_unwind(|| {
            checks::json_body_answer(reply.status, content_type.as_deref());
        });
        assert!(answer.is_ok(), "{}: {}", path.display(), reply.text());
    }
}
