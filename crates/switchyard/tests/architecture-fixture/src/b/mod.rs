//! The other sibling.
// Its import of `a` closes a cycle.

use crate::a::A;

pub struct B(pub Box<A>);
