pub mod a;
pub mod app;
pub mod b;
pub mod stray;
pub mod types;
