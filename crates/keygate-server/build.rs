//! Marks whether the PostgreSQL tests can run here: with `KEYGATE_TEST_POSTGRES` set at build
//! time they run; without it they are reported as ignored, with the reason.

//! Likewise `KEYGATE_TEST_TMPFS=1` (for root, who may mount a small tmpfs) runs the
//! full-disk test.

fn main() {
    for (var, cfg) in [
        ("KEYGATE_TEST_POSTGRES", "keygate_test_postgres"),
        ("KEYGATE_TEST_TMPFS", "keygate_test_tmpfs"),
    ] {
        println!("cargo::rerun-if-env-changed={var}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if std::env::var_os(var).is_some() {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
