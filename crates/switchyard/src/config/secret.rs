//! Secrets: resolved from `${ENV_VAR}` references, never printed.

use std::fmt;
use std::sync::Arc;

use super::{err, ConfigError};

/// A credential. `Debug` and `Display` print a placeholder, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces every `${VAR}` in `template` from `env`. A literal `$` that does not
    /// start `${` is kept as it is.
    pub(super) fn resolve(
        template: &str,
        path: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Secret, ConfigError> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some((literal, after)) = rest.split_once("${") {
            out.push_str(literal);
            let Some((name, tail)) = after.split_once('}') else {
                return Err(err(path, "has `${` without a closing `}`"));
            };
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(err(
                    path,
                    format!("`${{{name}}}` is not a valid environment variable reference"),
                ));
            }
            let Some(value) = env(name) else {
                return Err(err(path, format!("environment variable {name} is not set")));
            };
            out.push_str(&value);
            rest = tail;
        }
        out.push_str(rest);
        if out.is_empty() {
            return Err(err(path, "is empty"));
        }
        Ok(Secret(out.into()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
