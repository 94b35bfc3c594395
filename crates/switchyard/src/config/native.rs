//! Validation of the native provider kinds (every kind but `openai` and `azure`):
//! their fields, defaults for the public endpoints, and credentials.

use super::raw::RawProvider;
use super::{err, validate_url, AwsCredentials, ConfigError, ProviderKind, Secret};

/// The native kinds, as written in `kind`.
pub(super) const KINDS: &[&str] = &["anthropic", "bedrock", "gemini", "vertex", "mistral"];

pub(super) const DEFAULT_ANTHROPIC_URL: &str = "https://api.anthropic.com";
pub(super) const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// The validated kind for a native `kind` name; `None` when the name is unknown.
pub(super) fn kind(
    name: &str,
    p: &RawProvider,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
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
        "bedrock" => {
            let region = p
                .region
                .clone()
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .ok_or_else(|| {
                    err(
                        format!("{at}.region"),
                        "is required for kind `bedrock` (e.g. \"us-east-1\"), or set AWS_REGION",
                    )
                })?;
            let valid = !region.is_empty()
                && region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid {
                return Err(err(
                    format!("{at}.region"),
                    format!("`{region}` is not an AWS region name such as us-east-1"),
                ));
            }
            let default_url = format!("https://bedrock-runtime.{region}.amazonaws.com");
            ProviderKind::Bedrock {
                base_url: base_url(&default_url)?,
                credentials: aws_credentials(p, at, env)?,
                region,
            }
        }
        "mistral" => ProviderKind::Mistral {
            base_url: base_url("https://api.mistral.ai/v1")?,
        },
        "gemini" => ProviderKind::Gemini {
            base_url: base_url("https://generativelanguage.googleapis.com")?,
            api_version: path_version(p, at, "v1beta")?,
        },
        "vertex" => {
            let project = required_name(p.project.as_deref(), &format!("{at}.project"))?;
            let location = required_name(p.location.as_deref(), &format!("{at}.location"))?;
            let default_url = if location == "global" {
                "https://aiplatform.googleapis.com".to_owned()
            } else {
                format!("https://{location}-aiplatform.googleapis.com")
            };
            ProviderKind::Vertex {
                base_url: base_url(&default_url)?,
                api_version: path_version(p, at, "v1")?,
                project,
                location,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(kind))
}

/// `api_version` as a path segment (`v1`, `v1beta`, `v1beta1`).
fn path_version(p: &RawProvider, at: &str, default: &str) -> Result<String, ConfigError> {
    let v = p.api_version.as_deref().unwrap_or(default);
    let valid = v.starts_with('v') && v.len() > 1 && v.chars().all(|c| c.is_ascii_alphanumeric());
    if !valid {
        return Err(err(
            format!("{at}.api_version"),
            format!("`{v}` is not an API version such as {default}"),
        ));
    }
    Ok(v.to_owned())
}

/// A project or location: present, and safe in a URL path.
fn required_name(value: Option<&str>, path: &str) -> Result<String, ConfigError> {
    let Some(v) = value else {
        return Err(err(path, "is required for kind `vertex`"));
    };
    let valid = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !valid {
        return Err(err(path, format!("`{v}` is not a valid name")));
    }
    Ok(v.to_owned())
}

/// A credential some kinds take from the environment when `api_key` is not set.
pub(super) fn default_api_key(
    kind: &ProviderKind,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Secret> {
    match kind {
        ProviderKind::Vertex { .. } => env("GOOGLE_OAUTH_ACCESS_TOKEN")
            .filter(|t| !t.is_empty())
            .map(Secret::new),
        _ => None,
    }
}

/// SigV4 credentials from the config, else from the standard AWS environment
/// variables. None when the provider authenticates with a Bedrock API key instead.
fn aws_credentials(
    p: &RawProvider,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<AwsCredentials>, ConfigError> {
    let resolve = |v: &str, field: &str| Secret::resolve(v, &format!("{at}.{field}"), env);
    match (&p.access_key_id, &p.secret_access_key) {
        (Some(id), Some(secret)) => Ok(Some(AwsCredentials {
            access_key_id: resolve(id, "access_key_id")?,
            secret_access_key: resolve(secret, "secret_access_key")?,
            session_token: p
                .session_token
                .as_deref()
                .map(|t| resolve(t, "session_token"))
                .transpose()?,
        })),
        (Some(_), None) => Err(err(
            format!("{at}.secret_access_key"),
            "is required with `access_key_id`",
        )),
        (None, Some(_)) => Err(err(
            format!("{at}.access_key_id"),
            "is required with `secret_access_key`",
        )),
        (None, None) if p.session_token.is_some() => Err(err(
            format!("{at}.session_token"),
            "needs `access_key_id` and `secret_access_key`",
        )),
        // A Bedrock API key, or a named profile of the standard chain.
        (None, None) if p.api_key.is_some() || p.profile.is_some() => Ok(None),
        (None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                Ok(Some(AwsCredentials {
                    access_key_id: Secret::new(id),
                    secret_access_key: Secret::new(secret),
                    session_token: env("AWS_SESSION_TOKEN")
                        .filter(|t| !t.is_empty())
                        .map(Secret::new),
                }))
            }
            // The standard chain finds them at run time (see `credentials.rs`).
            _ => Ok(None),
        },
    }
}

/// A provider field that only some kinds use: its name, whether it is set, and those
/// kinds.
pub(super) type KindField<'a> = (&'a str, bool, &'a [&'a str]);

/// Refuses the first of `fields` that is set although `p`'s kind does not use it.
pub(super) fn only_for_kinds(
    p: &RawProvider,
    at: &str,
    fields: &[KindField<'_>],
) -> Result<(), ConfigError> {
    for &(field, set, kinds) in fields {
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
    Ok(())
}

/// Refuses fields that the provider's kind does not use, so a misplaced setting is
/// never silently ignored.
pub(super) fn reject_foreign_fields(p: &RawProvider, at: &str) -> Result<(), ConfigError> {
    let fields: [KindField<'_>; 8] = [
        (
            "anthropic_version",
            p.anthropic_version.is_some(),
            &["anthropic"],
        ),
        ("project", p.project.is_some(), &["vertex"]),
        ("location", p.location.is_some(), &["vertex"]),
        (
            "api_version",
            p.api_version.is_some(),
            &["azure", "gemini", "vertex"],
        ),
        ("region", p.region.is_some(), &["bedrock"]),
        ("access_key_id", p.access_key_id.is_some(), &["bedrock"]),
        (
            "secret_access_key",
            p.secret_access_key.is_some(),
            &["bedrock"],
        ),
        ("session_token", p.session_token.is_some(), &["bedrock"]),
    ];
    only_for_kinds(p, at, &fields)?;
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
    Ok(())
}

/// For kinds that cannot work without `api_key`: an example value for the error.
pub(super) fn required_key_example(kind: &ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Anthropic { .. } => Some("${ANTHROPIC_API_KEY}"),
        ProviderKind::Gemini { .. } => Some("${GEMINI_API_KEY}"),
        ProviderKind::Mistral { .. } => Some("${MISTRAL_API_KEY}"),
        ProviderKind::Vertex { .. } => Some("${GOOGLE_OAUTH_ACCESS_TOKEN}"),
        _ => None,
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.get(4) == Some(&b'-')
        && b.get(7) == Some(&b'-')
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

    fn aws_env(name: &str) -> Option<String> {
        match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIDENV".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("env-secret".into()),
            "AWS_SESSION_TOKEN" => Some("env-token".into()),
            "AWS_REGION" => Some("eu-west-1".into()),
            _ => env(name),
        }
    }

    fn one_provider(body: &str) -> Result<Config, super::ConfigError> {
        one_provider_env(body, env)
    }

    fn one_provider_env(
        body: &str,
        env: fn(&str) -> Option<String>,
    ) -> Result<Config, super::ConfigError> {
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

    #[test]
    fn bedrock_takes_keys_from_config_or_environment() {
        let c = one_provider(
            "kind = \"bedrock\"\nregion = \"us-east-1\"\naccess_key_id = \"AKID\"\nsecret_access_key = \"${K}\"",
        )
        .expect("valid");
        let ProviderKind::Bedrock {
            base_url,
            region,
            credentials,
        } = &c.providers[0].kind
        else {
            panic!("not bedrock");
        };
        assert_eq!(base_url, "https://bedrock-runtime.us-east-1.amazonaws.com");
        assert_eq!(region, "us-east-1");
        let creds = credentials.as_ref().expect("credentials");
        assert_eq!(creds.access_key_id.expose(), "AKID");
        assert_eq!(creds.secret_access_key.expose(), "secret-value");
        assert!(creds.session_token.is_none());

        let c = one_provider_env("kind = \"bedrock\"", aws_env).expect("valid from env");
        let ProviderKind::Bedrock {
            region,
            credentials,
            ..
        } = &c.providers[0].kind
        else {
            panic!("not bedrock");
        };
        assert_eq!(region, "eu-west-1");
        let creds = credentials.as_ref().expect("credentials");
        assert_eq!(creds.access_key_id.expose(), "AKIDENV");
        assert_eq!(
            creds.session_token.as_ref().map(|t| t.expose()),
            Some("env-token")
        );

        let c = one_provider("kind = \"bedrock\"\nregion = \"us-west-2\"\napi_key = \"${K}\"\nbase_url = \"http://127.0.0.1:1\"")
            .expect("API key instead of SigV4");
        assert!(
            matches!(&c.providers[0].kind, ProviderKind::Bedrock { credentials: None, base_url, .. } if base_url == "http://127.0.0.1:1")
        );
    }

    #[test]
    fn bedrock_errors_name_the_field() {
        let e =
            one_provider("kind = \"bedrock\"\naccess_key_id = \"A\"\nsecret_access_key = \"B\"")
                .expect_err("no region");
        assert_eq!(e.path, "providers.p.region");
        // No keys anywhere: the standard AWS chain, at run time.
        let c = one_provider("kind = \"bedrock\"\nregion = \"us-east-1\"").expect("chain");
        assert!(matches!(
            c.providers[0].credentials,
            Some(super::super::ProviderCredentials::AwsChain { profile: None })
        ));
        let e = one_provider("kind = \"bedrock\"\nregion = \"us-east-1\"\naccess_key_id = \"A\"")
            .expect_err("half the keys");
        assert_eq!(e.path, "providers.p.secret_access_key");
        let e = one_provider("kind = \"bedrock\"\nregion = \"US East\"\napi_key = \"${K}\"")
            .expect_err("bad region");
        assert_eq!(e.path, "providers.p.region");
        let e = one_provider("kind = \"anthropic\"\napi_key = \"${K}\"\nregion = \"us-east-1\"")
            .expect_err("foreign field");
        assert_eq!(e.path, "providers.p.region");
    }

    #[test]
    fn gemini_and_vertex_defaults() {
        let c = one_provider("kind = \"gemini\"\napi_key = \"${K}\"").expect("valid");
        assert_eq!(
            c.providers[0].kind,
            ProviderKind::Gemini {
                base_url: "https://generativelanguage.googleapis.com".into(),
                api_version: "v1beta".into()
            }
        );
        let c = one_provider("kind = \"vertex\"\nproject = \"my-proj\"\nlocation = \"europe-west4\"\napi_key = \"${K}\"")
            .expect("valid");
        assert_eq!(
            c.providers[0].kind,
            ProviderKind::Vertex {
                base_url: "https://europe-west4-aiplatform.googleapis.com".into(),
                api_version: "v1".into(),
                project: "my-proj".into(),
                location: "europe-west4".into(),
            }
        );
        let c = one_provider_env(
            "kind = \"vertex\"\nproject = \"p\"\nlocation = \"global\"\napi_version = \"v1beta1\"",
            |name| (name == "GOOGLE_OAUTH_ACCESS_TOKEN").then(|| "ya29.token".to_owned()),
        )
        .expect("token from the environment");
        assert_eq!(
            c.providers[0].api_key.as_ref().map(|k| k.expose()),
            Some("ya29.token")
        );
        assert!(
            matches!(&c.providers[0].kind, ProviderKind::Vertex { base_url, api_version, .. }
            if base_url == "https://aiplatform.googleapis.com" && api_version == "v1beta1")
        );
    }

    #[test]
    fn gemini_and_vertex_errors_name_the_field() {
        assert_eq!(
            one_provider("kind = \"gemini\"").expect_err("no key").path,
            "providers.p.api_key"
        );
        let e = one_provider("kind = \"vertex\"\nlocation = \"us-central1\"\napi_key = \"${K}\"")
            .expect_err("no project");
        assert_eq!(e.path, "providers.p.project");
        let e = one_provider("kind = \"vertex\"\nproject = \"p\"\napi_key = \"${K}\"")
            .expect_err("no location");
        assert_eq!(e.path, "providers.p.location");
        let e = one_provider(
            "kind = \"vertex\"\nproject = \"a/b\"\nlocation = \"l\"\napi_key = \"${K}\"",
        )
        .expect_err("bad project");
        assert_eq!(e.path, "providers.p.project");
        let e = one_provider("kind = \"vertex\"\nproject = \"p\"\nlocation = \"l\"")
            .expect_err("no token");
        assert_eq!(e.path, "providers.p.api_key");
        let e = one_provider("kind = \"gemini\"\napi_key = \"${K}\"\napi_version = \"2024\"")
            .expect_err("bad version");
        assert_eq!(e.path, "providers.p.api_version");
        let e = one_provider("kind = \"gemini\"\napi_key = \"${K}\"\nproject = \"p\"")
            .expect_err("foreign");
        assert_eq!(e.path, "providers.p.project");
        let e = one_provider("kind = \"anthropic\"\napi_key = \"${K}\"\napi_version = \"v1\"")
            .expect_err("foreign");
        assert_eq!(e.path, "providers.p.api_version");
    }

    #[test]
    fn mistral_defaults_and_errors() {
        let c = one_provider("kind = \"mistral\"\napi_key = \"${K}\"").expect("valid");
        assert_eq!(
            c.providers[0].kind,
            ProviderKind::Mistral {
                base_url: "https://api.mistral.ai/v1".into()
            }
        );
        assert_eq!(
            one_provider("kind = \"mistral\"").expect_err("no key").path,
            "providers.p.api_key"
        );
        let e = one_provider("kind = \"mistral\"\napi_key = \"${K}\"\nbase_url = \"ftp://x\"")
            .expect_err("bad url");
        assert_eq!(e.path, "providers.p.base_url");
    }
}
