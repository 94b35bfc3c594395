//! Credentials that are obtained and renewed at run time instead of being written in
//! the file: Google service accounts and Application Default Credentials, Entra ID
//! client credentials for Azure, and the standard AWS chain for Bedrock.
//!
//! What is checked here is everything that can be checked without a network: the key
//! file exists, is of the right type and holds a usable private key; the fields that
//! go together are all there; no two credentials are configured at once.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::native::{only_for_kinds, KindField};
use super::raw::RawProvider;
use super::{err, is_insecure_remote, validate_url, ConfigError, ProviderKind, Secret};

/// The public Entra ID sign-in host.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The scope of Azure OpenAI (Cognitive Services) tokens.
pub const DEFAULT_AZURE_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// Google's OAuth2 token endpoint, for `authorized_user` files that name none.
pub const DEFAULT_GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The metadata server's host on Google Cloud machines.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// Key files are a few KiB; anything much larger is not one.
const MAX_KEY_FILE_BYTES: u64 = 256 * 1024;

/// A credential the gateway obtains and renews itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderCredentials {
    /// A Google service-account key: a signed JWT exchanged for an access token.
    GoogleServiceAccount(Arc<GoogleServiceAccount>),
    /// A Google user's refresh token (an `authorized_user` ADC file).
    GoogleAuthorizedUser(Arc<GoogleAuthorizedUser>),
    /// The metadata server of a Google Cloud machine, at `base_url` (`http://HOST`).
    GoogleMetadata { base_url: String },
    /// Entra ID client credentials, for Azure OpenAI.
    AzureEntra(Arc<AzureEntra>),
    /// The standard AWS credential chain, optionally from a named profile.
    AwsChain { profile: Option<String> },
}

impl ProviderCredentials {
    /// A short name for logs: which kind of credential, never a value.
    pub fn label(&self) -> &'static str {
        match self {
            ProviderCredentials::GoogleServiceAccount(_) => "google_service_account",
            ProviderCredentials::GoogleAuthorizedUser(_) => "google_authorized_user",
            ProviderCredentials::GoogleMetadata { .. } => "google_metadata",
            ProviderCredentials::AzureEntra(_) => "azure_entra",
            ProviderCredentials::AwsChain { .. } => "aws_chain",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleServiceAccount {
    pub client_email: String,
    /// The PEM private key (PKCS#8 or PKCS#1), checked to be a usable RSA key.
    pub private_key: Secret,
    /// Sent as the JWT's `kid` when the file has it.
    pub private_key_id: Option<String>,
    /// Where the signed JWT is exchanged; also its audience.
    pub token_uri: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleAuthorizedUser {
    pub client_id: String,
    pub client_secret: Secret,
    pub refresh_token: Secret,
    pub token_uri: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureEntra {
    /// `{authority_host}/{tenant_id}/oauth2/v2.0/token`.
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: String,
}

/// The fields of a Google credential file this gateway reads (`type` decides which).
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

/// The run-time credential of provider `p` of `kind`, or `None` when it uses a static
/// one (`api_key`, static AWS keys) or none.
pub(super) fn validate(
    p: &RawProvider,
    kind: &ProviderKind,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ProviderCredentials>, ConfigError> {
    reject_foreign_fields(p, at)?;
    let insecure_ok = p.allow_insecure_http == Some(true);
    match kind {
        ProviderKind::Vertex { .. } | ProviderKind::Gemini { .. } => {
            let found = match (&p.credentials_file, &p.credentials) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        format!("{at}.credentials"),
                        "`credentials` and `credentials_file` are alternatives; set one",
                    ))
                }
                (Some(file), None) => {
                    let path = format!("{at}.credentials_file");
                    Some(service_account_file(Path::new(file), &path, insecure_ok)?)
                }
                (None, Some(adc)) if adc == "adc" => {
                    Some(application_default(at, env, insecure_ok)?)
                }
                (None, Some(other)) => {
                    return Err(err(
                        format!("{at}.credentials"),
                        format!("unknown value `{other}`; expected `adc`"),
                    ))
                }
                (None, None) => None,
            };
            if found.is_some() && p.api_key.is_some() {
                let field = if p.credentials_file.is_some() {
                    "credentials_file"
                } else {
                    "credentials"
                };
                return Err(err(
                    format!("{at}.{field}"),
                    format!("`api_key` and `{field}` are alternatives; set one"),
                ));
            }
            Ok(found)
        }
        ProviderKind::Azure { .. } => azure(p, at, env, insecure_ok),
        ProviderKind::Bedrock { credentials, .. } => {
            if let Some(profile) = &p.profile {
                if p.access_key_id.is_some() || p.api_key.is_some() {
                    let other = if p.api_key.is_some() {
                        "api_key"
                    } else {
                        "access_key_id"
                    };
                    return Err(err(
                        format!("{at}.profile"),
                        format!("`{other}` and `profile` are alternatives; set one"),
                    ));
                }
                if profile.is_empty() {
                    return Err(err(format!("{at}.profile"), "must not be empty"));
                }
            }
            // No static keys and no Bedrock API key: the standard chain.
            Ok((credentials.is_none() && p.api_key.is_none()).then(|| {
                ProviderCredentials::AwsChain {
                    profile: p.profile.clone(),
                }
            }))
        }
        _ => Ok(None),
    }
}

fn reject_foreign_fields(p: &RawProvider, at: &str) -> Result<(), ConfigError> {
    let fields: [KindField<'_>; 8] = [
        (
            "credentials_file",
            p.credentials_file.is_some(),
            &["vertex", "gemini"],
        ),
        (
            "credentials",
            p.credentials.is_some(),
            &["vertex", "gemini"],
        ),
        ("tenant_id", p.tenant_id.is_some(), &["azure"]),
        ("client_id", p.client_id.is_some(), &["azure"]),
        ("client_secret", p.client_secret.is_some(), &["azure"]),
        ("scope", p.scope.is_some(), &["azure"]),
        ("authority_host", p.authority_host.is_some(), &["azure"]),
        ("profile", p.profile.is_some(), &["bedrock"]),
    ];
    only_for_kinds(p, at, &fields)
}

fn azure(
    p: &RawProvider,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
    insecure_ok: bool,
) -> Result<Option<ProviderCredentials>, ConfigError> {
    let (tenant, client_id, secret) = match (&p.tenant_id, &p.client_id, &p.client_secret) {
        (None, None, None) => {
            for (field, set) in [
                ("scope", p.scope.is_some()),
                ("authority_host", p.authority_host.is_some()),
            ] {
                if set {
                    return Err(err(
                        format!("{at}.{field}"),
                        "is only used with Entra ID sign-in (`tenant_id`, `client_id`, `client_secret`)",
                    ));
                }
            }
            return Ok(None);
        }
        (Some(t), Some(c), Some(s)) => (t, c, s),
        (t, c, _) => {
            let missing = if t.is_none() {
                "tenant_id"
            } else if c.is_none() {
                "client_id"
            } else {
                "client_secret"
            };
            return Err(err(
                format!("{at}.{missing}"),
                "is required for Entra ID sign-in (with `tenant_id`, `client_id` and `client_secret`)",
            ));
        }
    };
    if p.api_key.is_some() {
        return Err(err(
            format!("{at}.client_secret"),
            "`api_key` and Entra ID sign-in (`client_secret`) are alternatives; set one",
        ));
    }
    let tenant_ok = !tenant.is_empty()
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !tenant_ok {
        return Err(err(
            format!("{at}.tenant_id"),
            format!("`{tenant}` is not a tenant id (a GUID or a domain name)"),
        ));
    }
    if client_id.trim().is_empty() {
        return Err(err(format!("{at}.client_id"), "must not be empty"));
    }
    let host_path = format!("{at}.authority_host");
    let host = validate_url(
        p.authority_host
            .as_deref()
            .unwrap_or(DEFAULT_AUTHORITY_HOST),
        &host_path,
    )?;
    check_secure(&host, &host_path, insecure_ok)?;
    let scope = p
        .scope
        .clone()
        .unwrap_or_else(|| DEFAULT_AZURE_SCOPE.to_owned());
    if scope.trim().is_empty() {
        return Err(err(format!("{at}.scope"), "must not be empty"));
    }
    Ok(Some(ProviderCredentials::AzureEntra(Arc::new(
        AzureEntra {
            token_url: format!("{host}/{tenant}/oauth2/v2.0/token"),
            client_id: client_id.clone(),
            client_secret: Secret::resolve(secret, &format!("{at}.client_secret"), env)?,
            scope,
        },
    ))))
}

/// Application Default Credentials, in Google's order of lookup.
fn application_default(
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
    insecure_ok: bool,
) -> Result<ProviderCredentials, ConfigError> {
    let path = format!("{at}.credentials");
    if let Some(file) = env("GOOGLE_APPLICATION_CREDENTIALS").filter(|f| !f.is_empty()) {
        return credential_file(Path::new(&file), &path, insecure_ok, true).map_err(|e| {
            ConfigError {
                message: format!("GOOGLE_APPLICATION_CREDENTIALS (`{file}`): {}", e.message),
                ..e
            }
        });
    }
    let gcloud_dir = env("CLOUDSDK_CONFIG")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            env("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| Path::new(&h).join(".config").join("gcloud"))
        });
    if let Some(dir) = gcloud_dir {
        let well_known = dir.join("application_default_credentials.json");
        if well_known.is_file() {
            return credential_file(&well_known, &path, insecure_ok, true);
        }
    }
    let host = env("GCE_METADATA_HOST")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned());
    let host_ok = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !host_ok {
        return Err(err(
            path,
            format!("GCE_METADATA_HOST `{host}` is not a host name (with an optional port)"),
        ));
    }
    // The metadata server is plain http by design: it is on the machine's own
    // link-local network, reached without leaving the host's virtual NIC.
    Ok(ProviderCredentials::GoogleMetadata {
        base_url: format!("http://{host}"),
    })
}

/// `credentials_file`: a service-account key and nothing else.
fn service_account_file(
    file: &Path,
    path: &str,
    insecure_ok: bool,
) -> Result<ProviderCredentials, ConfigError> {
    credential_file(file, path, insecure_ok, false)
}

/// Reads a Google credential file: a service-account key, or (when `user_ok`) an
/// `authorized_user` file.
fn credential_file(
    file: &Path,
    path: &str,
    insecure_ok: bool,
    user_ok: bool,
) -> Result<ProviderCredentials, ConfigError> {
    let shown = file.display();
    let size = std::fs::metadata(file)
        .map_err(|e| err(path, format!("cannot read `{shown}`: {e}")))?
        .len();
    if size > MAX_KEY_FILE_BYTES {
        return Err(err(
            path,
            format!("`{shown}` is {size} bytes, too large for a Google key file"),
        ));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| err(path, format!("cannot read `{shown}`: {e}")))?;
    let expected = if user_ok {
        "a Google service-account key or authorized_user file"
    } else {
        "a Google service-account JSON key"
    };
    let key: KeyFile = serde_json::from_str(&text)
        .map_err(|_| err(path, format!("`{shown}` is not {expected} (not JSON)")))?;
    let field = |v: Option<String>, name: &str| -> Result<String, ConfigError> {
        v.filter(|v| !v.trim().is_empty())
            .ok_or_else(|| err(path, format!("`{shown}` has no `{name}`")))
    };
    let token_uri = |v: Option<String>| -> Result<String, ConfigError> {
        let uri =
            validate_url(v.as_deref().unwrap_or(DEFAULT_GOOGLE_TOKEN_URI), path).map_err(|_| {
                err(
                    path,
                    format!("`{shown}` has a `token_uri` that is not a URL"),
                )
            })?;
        check_secure(&uri, path, insecure_ok)?;
        Ok(uri)
    };
    match key.kind.as_deref() {
        Some("service_account") => {
            let private_key = field(key.private_key, "private_key")?;
            if jsonwebtoken::EncodingKey::from_rsa_pem(private_key.as_bytes()).is_err() {
                return Err(err(
                    path,
                    format!("`{shown}`: `private_key` is not an RSA private key in PEM"),
                ));
            }
            Ok(ProviderCredentials::GoogleServiceAccount(Arc::new(
                GoogleServiceAccount {
                    client_email: field(key.client_email, "client_email")?,
                    private_key: Secret::new(private_key),
                    private_key_id: key.private_key_id.filter(|k| !k.is_empty()),
                    token_uri: token_uri(key.token_uri)?,
                },
            )))
        }
        Some("authorized_user") if user_ok => Ok(ProviderCredentials::GoogleAuthorizedUser(
            Arc::new(GoogleAuthorizedUser {
                client_id: field(key.client_id, "client_id")?,
                client_secret: Secret::new(field(key.client_secret, "client_secret")?),
                refresh_token: Secret::new(field(key.refresh_token, "refresh_token")?),
                token_uri: token_uri(key.token_uri)?,
            }),
        )),
        other => Err(err(
            path,
            format!(
                "`{shown}` is not {expected} (its `type` is {})",
                other.map_or("missing".to_owned(), |t| format!("`{t}`"))
            ),
        )),
    }
}

/// A token endpoint receives the long-lived secret: refuse clear text off this machine.
fn check_secure(url: &str, path: &str, insecure_ok: bool) -> Result<(), ConfigError> {
    if is_insecure_remote(url) && !insecure_ok {
        return Err(err(
            path,
            format!(
                "`{url}` is plain http:// to another machine, which would send the \
                 credential in clear text; use https://, or set `allow_insecure_http = true`"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError, ProviderCredentials};

    const PRIVATE_PEM: &str =
        include_str!("../../tests/fixtures/credentials/test-only-rsa-private.pem");

    fn parse(provider: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::parse(
            &format!(
                "[providers.p]\n{provider}\n[deployments.d]\nprovider = \"p\"\nmodel = \"m\"\n[models.m]\ndeployments = [\"d\"]\n"
            ),
            move |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        )
    }

    fn write(dir: &std::path::Path, name: &str, doc: serde_json::Value) -> String {
        let path = dir.join(name);
        std::fs::write(&path, doc.to_string()).expect("write");
        path.display().to_string()
    }

    fn service_account() -> serde_json::Value {
        serde_json::json!({
            "type": "service_account",
            "client_email": "a@p.iam.gserviceaccount.com",
            "private_key": PRIVATE_PEM,
            "private_key_id": "k1",
            "token_uri": "https://oauth2.example/token",
        })
    }

    const VERTEX: &str = "kind = \"vertex\"\nproject = \"p\"\nlocation = \"us-central1\"";

    #[test]
    fn a_service_account_file_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write(dir.path(), "sa.json", service_account());
        let c = parse(&format!("{VERTEX}\ncredentials_file = \"{key}\""), &[]).expect("valid");
        let Some(ProviderCredentials::GoogleServiceAccount(sa)) = &c.providers[0].credentials
        else {
            panic!("not a service account: {:?}", c.providers[0].credentials);
        };
        assert_eq!(sa.client_email, "a@p.iam.gserviceaccount.com");
        assert_eq!(sa.token_uri, "https://oauth2.example/token");
        assert!(c.providers[0].api_key.is_none());
        // The environment's static token is not picked up when a key file is set.
        let c = parse(
            &format!("{VERTEX}\ncredentials_file = \"{key}\""),
            &[("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.x")],
        )
        .expect("valid");
        assert!(c.providers[0].api_key.is_none());
    }

    #[test]
    fn bad_key_files_are_config_errors_naming_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.json").display().to_string();
        let e = parse(&format!("{VERTEX}\ncredentials_file = \"{missing}\""), &[])
            .expect_err("missing file");
        assert_eq!(e.path, "providers.p.credentials_file");
        assert!(e.message.contains("cannot read"), "{}", e.message);

        let user = write(
            dir.path(),
            "user.json",
            serde_json::json!({"type": "authorized_user", "client_id": "c",
                "client_secret": "s", "refresh_token": "r"}),
        );
        let e = parse(&format!("{VERTEX}\ncredentials_file = \"{user}\""), &[])
            .expect_err("not a service account");
        assert_eq!(e.path, "providers.p.credentials_file");
        assert!(e.message.contains("authorized_user"), "{}", e.message);

        let mut bad_key = service_account();
        bad_key["private_key"] =
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        let bad = write(dir.path(), "bad.json", bad_key);
        let e =
            parse(&format!("{VERTEX}\ncredentials_file = \"{bad}\""), &[]).expect_err("bad key");
        assert!(e.message.contains("private_key"), "{}", e.message);

        let text = dir.path().join("t.json");
        std::fs::write(&text, "not json").expect("write");
        let e = parse(
            &format!("{VERTEX}\ncredentials_file = \"{}\"", text.display()),
            &[],
        )
        .expect_err("not json");
        assert!(e.message.contains("not JSON"), "{}", e.message);

        let mut http = service_account();
        http["token_uri"] = "http://tokens.example/token".into();
        let http = write(dir.path(), "http.json", http);
        let e = parse(&format!("{VERTEX}\ncredentials_file = \"{http}\""), &[])
            .expect_err("clear-text token endpoint");
        assert!(e.message.contains("clear text"), "{}", e.message);
    }

    #[test]
    fn conflicting_credentials_name_both_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write(dir.path(), "sa.json", service_account());
        let e = parse(
            &format!("{VERTEX}\napi_key = \"t\"\ncredentials_file = \"{key}\""),
            &[],
        )
        .expect_err("both");
        assert_eq!(e.path, "providers.p.credentials_file");
        assert!(e.message.contains("api_key"), "{}", e.message);
        let e = parse(
            &format!("{VERTEX}\ncredentials = \"adc\"\ncredentials_file = \"{key}\""),
            &[],
        )
        .expect_err("both");
        assert_eq!(e.path, "providers.p.credentials");
        assert!(e.message.contains("credentials_file"), "{}", e.message);
        let e = parse(&format!("{VERTEX}\ncredentials = \"gcloud\""), &[]).expect_err("value");
        assert_eq!(e.path, "providers.p.credentials");
        let e = parse(
            "kind = \"openai\"\nbase_url = \"https://x/v1\"\ncredentials = \"adc\"",
            &[],
        )
        .expect_err("foreign");
        assert_eq!(e.path, "providers.p.credentials");
    }

    #[test]
    fn adc_looks_in_googles_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write(dir.path(), "sa.json", service_account());
        let adc = format!("{VERTEX}\ncredentials = \"adc\"");
        let c = parse(&adc, &[("GOOGLE_APPLICATION_CREDENTIALS", &key)]).expect("env file");
        assert!(matches!(
            c.providers[0].credentials,
            Some(ProviderCredentials::GoogleServiceAccount(_))
        ));
        // gcloud's well-known file under $HOME.
        let gcloud = dir.path().join(".config").join("gcloud");
        std::fs::create_dir_all(&gcloud).expect("mkdir");
        write(
            &gcloud,
            "application_default_credentials.json",
            serde_json::json!({"type": "authorized_user", "client_id": "c",
                "client_secret": "s", "refresh_token": "r"}),
        );
        let home = dir.path().display().to_string();
        let c = parse(
            "kind = \"gemini\"\ncredentials = \"adc\"",
            &[("HOME", &home)],
        )
        .expect("well-known file");
        let Some(ProviderCredentials::GoogleAuthorizedUser(u)) = &c.providers[0].credentials else {
            panic!("not a user: {:?}", c.providers[0].credentials);
        };
        assert_eq!(u.token_uri, super::DEFAULT_GOOGLE_TOKEN_URI);
        // Nothing: the metadata server, at GCE_METADATA_HOST when set.
        let c = parse(&adc, &[("GCE_METADATA_HOST", "127.0.0.1:8089")]).expect("metadata");
        assert!(matches!(
            &c.providers[0].credentials,
            Some(ProviderCredentials::GoogleMetadata { base_url }) if base_url == "http://127.0.0.1:8089"
        ));
        let c = parse(&adc, &[]).expect("metadata");
        assert!(matches!(
            &c.providers[0].credentials,
            Some(ProviderCredentials::GoogleMetadata { base_url }) if base_url == "http://metadata.google.internal"
        ));
        let e = parse(
            &adc,
            &[("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/x.json")],
        )
        .expect_err("missing file");
        assert_eq!(e.path, "providers.p.credentials");
        assert!(
            e.message.contains("GOOGLE_APPLICATION_CREDENTIALS"),
            "{}",
            e.message
        );
    }

    const AZURE: &str =
        "kind = \"azure\"\nendpoint = \"https://r.openai.azure.com\"\napi_version = \"2024-10-21\"";

    #[test]
    fn azure_entra_id_fields() {
        let c = parse(
            &format!(
                "{AZURE}\ntenant_id = \"t-1\"\nclient_id = \"c-1\"\nclient_secret = \"${{S}}\""
            ),
            &[("S", "shh")],
        )
        .expect("valid");
        let Some(ProviderCredentials::AzureEntra(e)) = &c.providers[0].credentials else {
            panic!("not entra");
        };
        assert_eq!(
            e.token_url,
            "https://login.microsoftonline.com/t-1/oauth2/v2.0/token"
        );
        assert_eq!(e.scope, super::DEFAULT_AZURE_SCOPE);
        assert_eq!(e.client_secret.expose(), "shh");
        assert!(c.providers[0].api_key.is_none());

        let e = parse(
            &format!("{AZURE}\ntenant_id = \"t\"\nclient_id = \"c\""),
            &[],
        )
        .expect_err("no secret");
        assert_eq!(e.path, "providers.p.client_secret");
        let e = parse(
            &format!("{AZURE}\napi_key = \"k\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\""),
            &[],
        )
        .expect_err("both");
        assert_eq!(e.path, "providers.p.client_secret");
        assert!(e.message.contains("api_key"), "{}", e.message);
        let e = parse(
            &format!("{AZURE}\napi_key = \"k\"\nscope = \"x/.default\""),
            &[],
        )
        .expect_err("scope alone");
        assert_eq!(e.path, "providers.p.scope");
        let e = parse(
            &format!("{AZURE}\ntenant_id = \"a/b\"\nclient_id = \"c\"\nclient_secret = \"s\""),
            &[],
        )
        .expect_err("bad tenant");
        assert_eq!(e.path, "providers.p.tenant_id");
        let e = parse(AZURE, &[]).expect_err("no credential");
        assert_eq!(e.path, "providers.p.api_key");
        assert!(e.message.contains("tenant_id"), "{}", e.message);
    }

    #[test]
    fn bedrock_profile_and_chain() {
        let c = parse(
            "kind = \"bedrock\"\nregion = \"us-east-1\"\nprofile = \"prod\"",
            &[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ],
        )
        .expect("valid");
        assert!(matches!(
            &c.providers[0].credentials,
            Some(ProviderCredentials::AwsChain { profile: Some(p) }) if p == "prod"
        ));
        let e = parse(
            "kind = \"bedrock\"\nregion = \"us-east-1\"\nprofile = \"prod\"\naccess_key_id = \"A\"\nsecret_access_key = \"B\"",
            &[],
        )
        .expect_err("both");
        assert_eq!(e.path, "providers.p.profile");
        assert!(e.message.contains("access_key_id"), "{}", e.message);
        // Static keys from the environment stay static.
        let c = parse(
            "kind = \"bedrock\"\nregion = \"us-east-1\"",
            &[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ],
        )
        .expect("valid");
        assert!(c.providers[0].credentials.is_none());
    }
}
