//! Marks whether the Redis tests can run here: with `KEYGATE_TEST_REDIS` (a Redis URL) set at
//! build time they run; without it they are reported as ignored, with the reason.

fn main() {
    println!("cargo::rerun-if-env-changed=KEYGATE_TEST_REDIS");
    println!("cargo::rustc-check-cfg=cfg(keygate_test_redis)");
    if std::env::var_os("KEYGATE_TEST_REDIS").is_some() {
        println!("cargo::rustc-cfg=keygate_test_redis");
    }
}
