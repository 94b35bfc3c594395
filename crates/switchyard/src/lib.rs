//! Switchyard: a multi-cloud AI gateway. One OpenAI-compatible API in front of many
//! providers, with a usage ledger behind it.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of this crate.

// A panic aborts the request being served, or for good a background task such as the
// ledger writer, on one odd request or upstream byte; so the library's own code may
// not index, slice, unwrap or panic. Unit tests may: a panic there is a failed check.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::string_slice,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod admin;
pub mod api;
pub mod cache;
pub mod config;
pub mod contracts;
pub mod dashboard;
pub mod demo;
pub mod dispatch;
#[doc(hidden)]
pub mod fuzzing;
pub mod governance;
pub mod images;
pub mod ledger;
pub mod limits;
pub mod providers;
pub mod resilience;
pub mod routing;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod types;
pub mod whatif;

pub use config::{Config, ConfigError};
pub use server::{shutdown_signal, Gateway, ShutdownReport, StartError};
