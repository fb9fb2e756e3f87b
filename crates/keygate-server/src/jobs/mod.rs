//! What `keygate serve` does besides answering requests: the scheduler's sweeps and the
//! webhook sender. Each job has a one-round function (tests call it with a fixed clock) and a
//! loop that runs it on a timer.

pub mod deliver;
pub mod scheduler;
