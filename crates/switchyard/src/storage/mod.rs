//! The engines under the gateway's stores, in one place: SQLite (the zero-setup
//! default) and PostgreSQL for the key store and the ledger, and Redis for the run-time
//! state that replicas share (rate limits, budgets, provider exhaustion, breakers).
//!
//! This module owns connections, pools, migrations and the Redis connection with its
//! script loading; the concerns above it (ledger, limits, governance, routing) keep
//! their own queries and scripts and reach the engines through it.

pub mod redis;
