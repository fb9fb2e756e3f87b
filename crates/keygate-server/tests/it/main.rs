//! keygate-server's integration tests, in one binary: the `keygate` command line, and
//! `keygate serve` and `keygate gateway` started as real processes on port 0 with a temp
//! SQLite file.

mod admin;
mod browser;
mod cli;
mod gateway;
mod nodes;
mod openapi_check;
mod serve;
mod support;
mod webhooks;
