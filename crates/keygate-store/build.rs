//! Marks whether the PostgreSQL tests can run here: with `KEYGATE_TEST_POSTGRES` set at build
//! time they run; without it they are reported as ignored, with the reason.

fn main() {
    println!("cargo::rerun-if-env-changed=KEYGATE_TEST_POSTGRES");
    println!("cargo::rustc-check-cfg=cfg(keygate_test_postgres)");
    if std::env::var_os("KEYGATE_TEST_POSTGRES").is_some() {
        println!("cargo::rustc-cfg=keygate_test_postgres");
    }
}
