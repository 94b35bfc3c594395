//! The pieces of the Switchyard benchmark that the binaries share: the load
//! generator, percentile summaries and readings from `/proc`.
//!
//! The binaries are `bench-upstream` (the fake OpenAI-compatible server everything is
//! measured against), `bench-forwarder` (a bare pass-through proxy, the floor),
//! `bench-load` (the load generator on its own) and `bench-harness` (what `bench/run`
//! drives: every arm, side by side, in one run).

pub mod load;
pub mod procfs;
pub mod stats;
