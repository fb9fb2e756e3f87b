#![no_main]
//! Every JSON body of the API, through the real application (handlers, core rules, a real
//! SQLite store in a temporary directory) in-process: never a 5xx, never a panic.

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

use std::sync::OnceLock;

use axum::body::Body;
use tower::ServiceExt;

struct Target {
    runtime: tokio::runtime::Runtime,
    router: keygate_server::api::Application,
    admin: String,
    key_id: String,
    self_rotating: String,
    _dir: tempfile::TempDir,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}", dir.path().join("fuzz.db").display());
        let cli = <keygate_server::Cli as clap::Parser>::try_parse_from([
            "keygate",
            "serve",
            "--database",
            &database,
        ])
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (router, admin, key_id, self_rotating) = runtime.block_on(async {
            let settings = keygate_server::Settings::resolve(&cli, serve_args(&cli)).unwrap();
            let service =
                keygate_server::serve::Service::open(settings, std::sync::Arc::new(keygate::SystemClock))
                    .await
                    .unwrap();
            let (_, admin) = keygate_server::serve::bootstrap(&service.keygate).await.unwrap().unwrap();
            let spec = keygate::core::KeySpec {
                name: "target".into(),
                ..Default::default()
            };
            let audit = keygate::core::Audit::by(keygate::core::Actor::Cli);
            let (record, _) = service.keygate.issue(spec, &audit).await.unwrap();
            let spec = keygate::core::KeySpec {
                name: "self".into(),
                scopes: vec!["keygate:self-rotate".into()],
                ..Default::default()
            };
            let (_, own) = service.keygate.issue(spec, &audit).await.unwrap();
            (
                service.router(),
                admin.expose().to_owned(),
                record.id.to_string(),
                own.expose().to_owned(),
            )
        });
        Target {
            runtime,
            router,
            admin,
            key_id,
            self_rotating,
            _dir: dir,
        }
    })
}

fn serve_args(cli: &keygate_server::Cli) -> Option<&keygate_server::cli::args::ServeArgs> {
    match &cli.command {
        keygate_server::Command::Serve(args) => Some(args),
        _ => None,
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((method, path, body)) = checks::json_body_request(data) else {
        return;
    };
    let target = target();
    let path = path.replace("{id}", &target.key_id);
    let key = if path == "/v1/self/rotate" {
        &target.self_rotating
    } else {
        &target.admin
    };
    let request = http::Request::builder()
        .method(method)
        .uri(&path)
        .header("authorization", format!("Api-Key {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let response = target
        .runtime
        .block_on(target.router.clone().oneshot(request))
        .unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    checks::json_body_answer(response.status().as_u16(), content_type.as_deref());
});
