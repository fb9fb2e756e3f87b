//! Marks whether the PostgreSQL tests can run here: with `KEYGATE_TEST_POSTGRES` set at build
//! time they run; without it they are reported as ignored, with the reason. Also rebuilds the
//! crate when a migration is added or changed (`sqlx::migrate!` embeds them at compile time,
//! and cargo does not see those files otherwise).

fn main() {
    println!("cargo::rerun-if-changed=migrations");
    println!("cargo::rerun-if-env-changed=KEYGATE_TEST_POSTGRES");
    println!("cargo::rustc-check-cfg=cfg(keygate_test_postgres)");
    if std::env::var_os("KEYGATE_TEST_POSTGRES").is_some() {
        println!("cargo::rustc-cfg=keygate_test_postgres");
    }
}
