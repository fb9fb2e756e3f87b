//! keygate-server's integration tests, in one binary: the application in-process (most of
//! them: `support::App`), and the `keygate` binary as a process where a process is the point
//! (start-up output, signals, restarts, several nodes, the CLI's exit codes, the browser).

mod admin;
mod api;
mod bounds;
mod browser;
mod cli;
mod client;
mod emails;
mod fuzz_regressions;
mod gateway;
mod import;
mod limits;
mod nodes;
mod openapi_check;
mod serve;
mod support;
mod switch_over;
mod usage;
mod webhooks;
