//! Resilience mechanisms that do not know about HTTP or providers: the circuit
//! breaker and the retry backoff. [`crate::dispatch`] applies them.

mod backoff;
mod breaker;

pub use backoff::full_jitter;
pub use breaker::{Admission, Breaker, BreakerState, ProbeTicket};
