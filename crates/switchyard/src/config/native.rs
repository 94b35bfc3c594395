//! Validation of the native provider kinds (every kind but `openai` and `azure`):
//! their fields, defaults for the public endpoints, and credentials.

use super::raw::RawProvider;
use super::{err, validate_url, ConfigError, ProviderKind};

/// The native kinds, as written in `kind`.
pub(super) const KINDS: &[&str] = &["anthropic"];

pub(super) const DEFAULT_ANTHROPIC_URL: &str = "https://api.anthropic.com";
pub(super) const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// The validated kind for a native `kind` name; `None` when the name is unknown.
pub(super) fn kind(
    name: &str,
    p: &RawProvider,
    at: &str,
    _env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ProviderKind>, ConfigError> {
    let base_url = |default: &str| -> Result<String, ConfigError> {
        validate_url(
            p.base_url.as_deref().unwrap_or(default),
            &format!("{at}.base_url"),
        )
    };
    let kind = match name {
        "anthropic" => {
            let version = p
                .anthropic_version
                .clone()
                .unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_owned());
            if !is_date(&version) {
                return Err(err(
                    format!("{at}.anthropic_version"),
                    format!("`{version}` is not a version date such as 2023-06-01"),
                ));
            }
            ProviderKind::Anthropic {
                base_url: base_url(DEFAULT_ANTHROPIC_URL)?,
                version,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(kind))
}

/// Refuses fields that the provider's kind does not use, so a misplaced setting is
/// never silently ignored.
pub(super) fn reject_foreign_fields(p: &RawProvider, at: &str) -> Result<(), ConfigError> {
    let fields: [(&str, bool, &[&str]); 1] = [(
        "anthropic_version",
        p.anthropic_version.is_some(),
        &["anthropic"],
    )];
    for (field, set, kinds) in fields {
        if set && !kinds.contains(&p.kind.as_str()) {
            return Err(err(
                format!("{at}.{field}"),
                format!(
                    "is not used by kind `{}` (only by {})",
                    p.kind,
                    kinds.join(", ")
                ),
            ));
        }
    }
    let native = KINDS.contains(&p.kind.as_str());
    if native && (p.endpoint.is_some() || p.api.is_some()) {
        let field = if p.endpoint.is_some() {
            "endpoint"
        } else {
            "api"
        };
        return Err(err(
            format!("{at}.{field}"),
            format!("is not used by kind `{}` (only by azure)", p.kind),
        ));
    }
    if native && p.api_version.is_some() {
        return Err(err(
            format!("{at}.api_version"),
            format!("is not used by kind `{}`", p.kind),
        ));
    }
    Ok(())
}

/// For kinds that cannot work without `api_key`: an example value for the error.
pub(super) fn required_key_example(kind: &ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Anthropic { .. } => Some("${ANTHROPIC_API_KEY}"),
        _ => None,
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ProviderKind};

    fn env(name: &str) -> Option<String> {
        (name == "K").then(|| "secret-value".to_owned())
    }

    fn one_provider(body: &str) -> Result<Config, super::ConfigError> {
        Config::parse(
            &format!(
                "[providers.p]\n{body}\n[deployments.d]\nprovider = \"p\"\nmodel = \"m\"\n[models.m]\ndeployments = [\"d\"]\n"
            ),
            env,
        )
    }

    #[test]
    fn anthropic_defaults_to_the_public_endpoint() {
        let c = one_provider("kind = \"anthropic\"\napi_key = \"${K}\"").expect("valid");
        assert_eq!(
            c.providers[0].kind,
            ProviderKind::Anthropic {
                base_url: "https://api.anthropic.com".into(),
                version: "2023-06-01".into()
            }
        );
        assert_eq!(
            c.providers[0].api_key.as_ref().map(|k| k.expose()),
            Some("secret-value")
        );
    }

    #[test]
    fn anthropic_takes_base_url_and_version() {
        let c = one_provider(
            "kind = \"anthropic\"\napi_key = \"${K}\"\nbase_url = \"http://127.0.0.1:9/x/\"\nanthropic_version = \"2024-01-01\"",
        )
        .expect("valid");
        assert_eq!(
            c.providers[0].kind,
            ProviderKind::Anthropic {
                base_url: "http://127.0.0.1:9/x".into(),
                version: "2024-01-01".into()
            }
        );
    }

    #[test]
    fn anthropic_errors_name_the_field() {
        let e = one_provider("kind = \"anthropic\"").expect_err("no key");
        assert_eq!(e.path, "providers.p.api_key");
        let e =
            one_provider("kind = \"anthropic\"\napi_key = \"${K}\"\nanthropic_version = \"v1\"")
                .expect_err("bad version");
        assert_eq!(e.path, "providers.p.anthropic_version");
        let e = one_provider("kind = \"anthropic\"\napi_key = \"${K}\"\nendpoint = \"https://x\"")
            .expect_err("azure field");
        assert_eq!(e.path, "providers.p.endpoint");
        let e = one_provider(
            "kind = \"openai\"\nbase_url = \"https://x/v1\"\nanthropic_version = \"2023-06-01\"",
        )
        .expect_err("foreign field");
        assert_eq!(e.path, "providers.p.anthropic_version");
        let e = one_provider("kind = \"claude\"").expect_err("unknown kind");
        assert!(e.message.contains("anthropic"), "{}", e.message);
    }
}
