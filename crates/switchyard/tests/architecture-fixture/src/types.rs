//! Canonical types; this doc comment names crate::app, which does not count.

// Nor does this comment: crate::app::App.
const NOTE: &str = "crate::app is only a string here";
/// See [`crate::app::App`] (a documentation link).
pub struct T;

pub fn upward() -> crate::app::App {
    todo!()
}

#[cfg(test)]
mod tests {
    use crate::app::App;
}
