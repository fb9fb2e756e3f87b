//! What `keygate serve` does besides answering requests: the scheduler's sweeps, the
//! webhook sender and the email sender. Each job has a one-round function (tests call it with a fixed clock) and a
//! loop that runs it on a timer.

pub mod deliver;
pub mod email;
pub mod scheduler;
