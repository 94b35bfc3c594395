//! The bottom layer: the canonical request, usage, money, time and error types every
//! other layer shares. It imports nothing of the crate's own.

pub mod chat;
pub mod error;
pub mod money;
pub mod reasoning;
pub mod time;
pub mod usage;

pub use chat::{ChatRequest, EmbeddingsRequest};
pub use error::ProviderError;
pub use money::Price;
pub use usage::Usage;
