//! The top layer may import everything below it.

mod inner;

use crate::{a::A, b::B};

pub struct App(pub A, pub B);
