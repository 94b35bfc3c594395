//! Google access tokens: a service account's signed JWT (RFC 7523) exchanged at its
//! `token_uri`, an authorized user's refresh token, or the metadata server.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::{oauth_token, AuthError, Credential, FetchFuture, Source};
use crate::config::{GoogleAuthorizedUser, GoogleServiceAccount};

/// The scope every Vertex AI and Gemini call is covered by.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The longest lifetime Google accepts for the assertion.
const ASSERTION_LIFETIME_S: u64 = 3600;

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

pub struct ServiceAccount {
    client: reqwest::Client,
    key: Arc<GoogleServiceAccount>,
}

impl ServiceAccount {
    pub fn new(client: reqwest::Client, key: Arc<GoogleServiceAccount>) -> Self {
        ServiceAccount { client, key }
    }

    /// The signed assertion for `now` (seconds since the epoch).
    pub fn assertion(key: &GoogleServiceAccount, now: u64) -> Result<String, AuthError> {
        let signing =
            EncodingKey::from_rsa_pem(key.private_key.expose().as_bytes()).map_err(|_| {
                AuthError::Source("the service account's private_key is not an RSA PEM key".into())
            })?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = key.private_key_id.clone();
        let claims = Claims {
            iss: &key.client_email,
            scope: CLOUD_PLATFORM_SCOPE,
            aud: &key.token_uri,
            iat: now,
            exp: now + ASSERTION_LIFETIME_S,
        };
        jsonwebtoken::encode(&header, &claims, &signing)
            .map_err(|e| AuthError::Source(format!("cannot sign the JWT: {e}")))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Source<Credential> for ServiceAccount {
    fn fetch(&self) -> FetchFuture<'_, Credential> {
        Box::pin(async move {
            let assertion = ServiceAccount::assertion(&self.key, unix_now())?;
            let form = [("grant_type", JWT_BEARER_GRANT), ("assertion", &assertion)];
            oauth_token(self.client.post(&self.key.token_uri).form(&form)).await
        })
    }
}

pub struct AuthorizedUser {
    client: reqwest::Client,
    user: Arc<GoogleAuthorizedUser>,
}

impl AuthorizedUser {
    pub fn new(client: reqwest::Client, user: Arc<GoogleAuthorizedUser>) -> Self {
        AuthorizedUser { client, user }
    }
}

impl Source<Credential> for AuthorizedUser {
    fn fetch(&self) -> FetchFuture<'_, Credential> {
        Box::pin(async move {
            let u = &self.user;
            let form = [
                ("grant_type", "refresh_token"),
                ("client_id", u.client_id.as_str()),
                ("client_secret", u.client_secret.expose()),
                ("refresh_token", u.refresh_token.expose()),
            ];
            oauth_token(self.client.post(&u.token_uri).form(&form)).await
        })
    }
}

/// The metadata server's token for the machine's default service account.
pub struct Metadata {
    client: reqwest::Client,
    url: String,
}

impl Metadata {
    pub fn new(client: reqwest::Client, base_url: &str) -> Self {
        Metadata {
            client,
            url: format!(
                "{base_url}/computeMetadata/v1/instance/service-accounts/default/token?scopes={CLOUD_PLATFORM_SCOPE}"
            ),
        }
    }
}

impl Source<Credential> for Metadata {
    fn fetch(&self) -> FetchFuture<'_, Credential> {
        Box::pin(async move {
            // The header proves the request is not a forwarded browser request.
            oauth_token(
                self.client
                    .get(&self.url)
                    .header("Metadata-Flavor", "Google"),
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const KEY: &str = include_str!("../../../tests/fixtures/credentials/test-only-rsa-private.pem");
    const PUBLIC: &str =
        include_str!("../../../tests/fixtures/credentials/test-only-rsa-public.pem");

    #[test]
    fn the_assertion_is_an_rs256_jwt_with_google_claims() {
        let key = GoogleServiceAccount {
            client_email: "svc@proj.iam.gserviceaccount.com".into(),
            private_key: Secret::new(KEY),
            private_key_id: Some("kid-1".into()),
            token_uri: "https://oauth2.example/token".into(),
        };
        let jwt = ServiceAccount::assertion(&key, 1_700_000_000).expect("signs");
        let header = jsonwebtoken::decode_header(&jwt).expect("header");
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("kid-1"));
        let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
        v.validate_exp = false;
        v.set_audience(&["https://oauth2.example/token"]);
        v.required_spec_claims.clear();
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            &jwt,
            &jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).expect("public key"),
            &v,
        )
        .expect("verifies with the public key");
        let c = decoded.claims;
        assert_eq!(c["iss"], "svc@proj.iam.gserviceaccount.com");
        assert_eq!(c["scope"], CLOUD_PLATFORM_SCOPE);
        assert_eq!(c["iat"], 1_700_000_000u64);
        assert_eq!(c["exp"], 1_700_003_600u64);
    }
}
