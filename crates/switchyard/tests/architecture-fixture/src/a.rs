//! One sibling.

use crate::b::B;

pub struct A(pub Option<B>);
