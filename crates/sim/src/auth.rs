//! The identity services the providers' credentials come from, played so that tests
//! need no cloud account: Google's OAuth2 token endpoint (service-account JWT bearer
//! grant, authorized-user refresh token grant) and the GCE metadata server, Entra ID's
//! client-credentials endpoint, STS `AssumeRoleWithWebIdentity` and the ECS container
//! credentials endpoint.
//!
//! Everything it issues expires after a configurable lifetime and can be revoked; the
//! provider endpoints ask [`Authority::check_bearer`] and [`Authority::aws_secret`]
//! about what they receive, so an expired or revoked token is refused there with the
//! provider's own error. Counters of what was issued are exposed for tests.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::plumbing::{percent_decode, rfc3339, unique_hex, unix_now};
use crate::Shared;

/// Lifetime of what the simulator issues unless a test sets another.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Most live tokens kept; older ones are forgotten (and so become unknown).
const MAX_ISSUED: usize = 100_000;
/// Google's JWT bearer grant type.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The scope a Vertex or Gemini token needs.
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How many credentials each endpoint issued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensIssued {
    /// Google OAuth2, service-account JWT bearer grant.
    pub google_jwt_bearer: u64,
    /// Google OAuth2, authorized-user refresh token grant.
    pub google_refresh_token: u64,
    /// GCE metadata server.
    pub google_metadata: u64,
    /// Entra ID client credentials.
    pub entra_client_credentials: u64,
    /// STS AssumeRoleWithWebIdentity.
    pub sts_web_identity: u64,
    /// ECS container credentials endpoint.
    pub container: u64,
}

impl TokensIssued {
    /// Every credential issued, whichever the endpoint.
    pub fn total(&self) -> u64 {
        self.google_jwt_bearer
            + self.google_refresh_token
            + self.google_metadata
            + self.entra_client_credentials
            + self.sts_web_identity
            + self.container
    }
}

/// What a bearer token presented to a provider endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BearerCheck {
    /// Issued here and still valid.
    Valid,
    /// Issued here, past its lifetime.
    Expired,
    /// Issued here and revoked.
    Revoked,
    /// Not issued here, and issued tokens are required.
    Unknown,
    /// Not issued here; the endpoint's own key check decides.
    NotOurs,
}

/// What an AWS access key id presented in a SigV4 signature is.
pub(crate) enum AwsKey {
    /// Issued here and valid: the secret and the session token to verify with.
    Valid {
        secret: String,
        session_token: String,
    },
    Expired,
    /// Revoked, or unknown while issued credentials are required.
    Invalid,
    NotOurs,
}

struct Issued {
    expires: Instant,
    revoked: bool,
}

struct AwsIssued {
    secret: String,
    session_token: String,
    expires: Instant,
    revoked: bool,
}

/// The simulator's identity state.
pub(crate) struct Authority {
    lifetime: Duration,
    require_issued: bool,
    google_accounts: HashMap<String, jsonwebtoken::DecodingKey>,
    /// (client_id, client_secret, refresh_token)
    google_users: Vec<(String, String, String)>,
    /// (tenant, client_id, client_secret)
    entra_clients: Vec<(String, String, String)>,
    /// The `Authorization` value the container endpoint wants; `None`: any or none.
    container_token: Option<String>,
    bearer: HashMap<String, Issued>,
    aws: HashMap<String, AwsIssued>,
    issued: TokensIssued,
}

impl Default for Authority {
    fn default() -> Self {
        Authority {
            lifetime: DEFAULT_LIFETIME,
            require_issued: false,
            google_accounts: HashMap::new(),
            google_users: Vec::new(),
            entra_clients: Vec::new(),
            container_token: None,
            bearer: HashMap::new(),
            aws: HashMap::new(),
            issued: TokensIssued::default(),
        }
    }
}

impl Authority {
    pub(crate) fn check_bearer(&self, token: &str) -> BearerCheck {
        match self.bearer.get(token) {
            Some(t) if t.revoked => BearerCheck::Revoked,
            Some(t) if Instant::now() >= t.expires => BearerCheck::Expired,
            Some(_) => BearerCheck::Valid,
            None if self.require_issued => BearerCheck::Unknown,
            None => BearerCheck::NotOurs,
        }
    }

    pub(crate) fn aws_secret(&self, access_key_id: &str) -> AwsKey {
        match self.aws.get(access_key_id) {
            Some(c) if c.revoked => AwsKey::Invalid,
            Some(c) if Instant::now() >= c.expires => AwsKey::Expired,
            Some(c) => AwsKey::Valid {
                secret: c.secret.clone(),
                session_token: c.session_token.clone(),
            },
            None if self.require_issued => AwsKey::Invalid,
            None => AwsKey::NotOurs,
        }
    }

    fn forget_expired(&mut self) {
        if self.bearer.len() + self.aws.len() < MAX_ISSUED {
            return;
        }
        let now = Instant::now();
        self.bearer.retain(|_, t| t.expires > now);
        self.aws.retain(|_, c| c.expires > now);
        if self.bearer.len() + self.aws.len() >= MAX_ISSUED {
            self.bearer.clear();
            self.aws.clear();
        }
    }

    fn issue_bearer(&mut self, token: String) -> (String, u64) {
        self.forget_expired();
        let expires = Instant::now() + self.lifetime;
        self.bearer.insert(
            token.clone(),
            Issued {
                expires,
                revoked: false,
            },
        );
        (token, self.lifetime_secs())
    }

    /// New temporary AWS credentials: (access key id, secret, session token, expiration).
    fn issue_aws(&mut self, hex: &str) -> (String, String, String, String) {
        self.forget_expired();
        let upper: String = hex
            .chars()
            .take(16)
            .collect::<String>()
            .to_ascii_uppercase();
        let id = format!("ASIASIM{upper}");
        let secret = format!("sim-secret-{hex}");
        let token = format!("sim-session-{hex}");
        self.aws.insert(
            id.clone(),
            AwsIssued {
                secret: secret.clone(),
                session_token: token.clone(),
                expires: Instant::now() + self.lifetime,
                revoked: false,
            },
        );
        // Rounded down, so that a client trusting the date never outlives the key.
        let expiration = rfc3339(unix_now() + self.lifetime.as_secs());
        (id, secret, token, expiration)
    }

    /// `expires_in` in whole seconds, at least 1.
    fn lifetime_secs(&self) -> u64 {
        self.lifetime.as_secs().max(1)
    }
}

impl Shared {
    pub(crate) fn authority(&self) -> MutexGuard<'_, Authority> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl crate::Simulator {
    /// How long tokens and temporary credentials issued from now on live.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.authority().lifetime = lifetime;
    }

    /// When on, the provider endpoints accept only tokens and AWS keys issued here
    /// (Vertex and Gemini bearer tokens, Azure bearer tokens, Bedrock SigV4 keys);
    /// when off (the default) they also take what `SimOptions` configures.
    pub fn require_issued_credentials(&self, on: bool) {
        self.shared.authority().require_issued = on;
    }

    /// Lets the service account `client_email` sign JWTs with the private key of
    /// `public_key_pem` (an RSA public key in PEM).
    pub fn add_google_service_account(
        &self,
        client_email: &str,
        public_key_pem: &str,
    ) -> Result<(), String> {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_key_pem.as_bytes())
            .map_err(|e| format!("not an RSA public key in PEM: {e}"))?;
        self.shared
            .authority()
            .google_accounts
            .insert(client_email.to_owned(), key);
        Ok(())
    }

    /// Accepts the refresh token grant for this client and refresh token.
    pub fn add_google_authorized_user(
        &self,
        client_id: &str,
        client_secret: &str,
        refresh_token: &str,
    ) {
        self.shared.authority().google_users.push((
            client_id.to_owned(),
            client_secret.to_owned(),
            refresh_token.to_owned(),
        ));
    }

    /// Accepts the client credentials grant of this app in this tenant.
    pub fn add_entra_client(&self, tenant: &str, client_id: &str, client_secret: &str) {
        self.shared.authority().entra_clients.push((
            tenant.to_owned(),
            client_id.to_owned(),
            client_secret.to_owned(),
        ));
    }

    /// The `Authorization` header the container credentials endpoint requires.
    pub fn set_container_authorization(&self, token: Option<&str>) {
        self.shared.authority().container_token = token.map(str::to_owned);
    }

    /// Revokes every token and AWS key issued so far; they are refused from now on.
    pub fn revoke_issued_credentials(&self) {
        let mut a = self.shared.authority();
        a.bearer.values_mut().for_each(|t| t.revoked = true);
        a.aws.values_mut().for_each(|c| c.revoked = true);
    }

    /// How many credentials each endpoint issued.
    pub fn tokens_issued(&self) -> TokensIssued {
        self.shared.authority().issued
    }
}

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/token", post(google_token))
        .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
        .route(
            "/computeMetadata/v1/instance/service-accounts/default/token",
            get(metadata_token),
        )
        .route("/sts", post(sts))
        .route("/sts/", post(sts))
        .route("/ecs/credentials", get(container_credentials))
        .route("/_sim/auth", get(auth_status).post(auth_control))
}

/// The value of `name` in an `application/x-www-form-urlencoded` body.
fn form_value(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(&k.replace('+', " ")) == name).then(|| percent_decode(&v.replace('+', " ")))
    })
}

/// Google's OAuth2 error answer.
fn google_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn bearer_answer(token: String, expires_in: u64) -> Response {
    Json(json!({
        "access_token": token,
        "expires_in": expires_in,
        "token_type": "Bearer",
    }))
    .into_response()
}

#[derive(Deserialize)]
struct JwtClaims {
    iss: String,
    scope: Option<String>,
    aud: String,
    iat: u64,
    exp: u64,
}

/// `POST /token`: Google's OAuth2 token endpoint.
async fn google_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = String::from_utf8_lossy(&body);
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    match form_value(&form, "grant_type").as_deref() {
        Some(JWT_BEARER) => {
            let Some(assertion) = form_value(&form, "assertion") else {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Missing required parameter: assertion",
                );
            };
            let hex = unique_hex(&shared);
            let mut a = shared.authority();
            if let Err(why) = verify_assertion(&a, &assertion, host) {
                return google_error(StatusCode::BAD_REQUEST, "invalid_grant", &why);
            }
            a.issued.google_jwt_bearer += 1;
            let (token, secs) = a.issue_bearer(format!("ya29.sim-sa-{hex}"));
            bearer_answer(token, secs)
        }
        Some("refresh_token") => {
            let field = |n: &str| form_value(&form, n).unwrap_or_default();
            let (id, secret, refresh) = (
                field("client_id"),
                field("client_secret"),
                field("refresh_token"),
            );
            let hex = unique_hex(&shared);
            let mut a = shared.authority();
            if !a.google_users.iter().any(|(i, _, _)| *i == id) {
                return google_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "The OAuth client was not found.",
                );
            }
            let known = a
                .google_users
                .iter()
                .any(|(i, s, r)| *i == id && *s == secret && *r == refresh);
            if !known {
                return google_error(StatusCode::BAD_REQUEST, "invalid_grant", "Bad Request");
            }
            a.issued.google_refresh_token += 1;
            let (token, secs) = a.issue_bearer(format!("ya29.sim-user-{hex}"));
            bearer_answer(token, secs)
        }
        other => google_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("Invalid grant_type: {}", other.unwrap_or("")),
        ),
    }
}

/// Checks a service account's assertion as Google does: RS256 signed by a known
/// account's key, `aud` the token endpoint, the cloud-platform scope, at most an hour.
fn verify_assertion(a: &Authority, assertion: &str, host: &str) -> Result<(), String> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.".to_owned())?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err("Invalid JWT Signature.".into());
    }
    let claims: JwtClaims = jsonwebtoken::dangerous::insecure_decode(assertion)
        .map_err(|_| "Invalid JWT: the claims are not readable.".to_owned())?
        .claims;
    let Some(key) = a.google_accounts.get(&claims.iss) else {
        return Err("Invalid grant: account not found".into());
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    validation.leeway = 60;
    jsonwebtoken::decode::<serde_json::Value>(assertion, key, &validation)
        .map_err(|_| "Invalid JWT Signature.".to_owned())?;
    if !claims.aud.ends_with("/token") || (!host.is_empty() && !claims.aud.contains(host)) {
        return Err(format!(
            "Invalid JWT: audience `{}` is not this token endpoint.",
            claims.aud
        ));
    }
    let scopes = claims.scope.unwrap_or_default();
    if !scopes.split(' ').any(|s| s == CLOUD_PLATFORM) {
        return Err("Invalid OAuth scope or ID token audience provided.".into());
    }
    let now = unix_now();
    if claims.exp <= claims.iat
        || claims.exp - claims.iat > 3600
        || claims.iat > now + 60
        || claims.exp + 60 < now
    {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".into());
    }
    Ok(())
}

/// `GET /computeMetadata/v1/instance/service-accounts/default/token`.
async fn metadata_token(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let flavor = headers.get("metadata-flavor").and_then(|v| v.to_str().ok());
    if flavor != Some("Google") {
        return (
            StatusCode::FORBIDDEN,
            "Missing required header \"Metadata-Flavor\": \"Google\"",
        )
            .into_response();
    }
    let hex = unique_hex(&shared);
    let mut a = shared.authority();
    a.issued.google_metadata += 1;
    let (token, secs) = a.issue_bearer(format!("ya29.sim-gce-{hex}"));
    bearer_answer(token, secs)
}

/// `POST /{tenant}/oauth2/v2.0/token`: Entra ID's v2 token endpoint.
async fn entra_token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let form = String::from_utf8_lossy(&body);
    let field = |n: &str| form_value(&form, n).unwrap_or_default();
    let entra_error = |status: StatusCode, error: &str, code: u32, text: &str| {
        (
            status,
            Json(json!({
                "error": error,
                "error_description": format!("AADSTS{code}: {text}"),
                "error_codes": [code],
                "timestamp": rfc3339(unix_now()).replace('T', " ").replace('Z', ""),
            })),
        )
            .into_response()
    };
    if field("grant_type") != "client_credentials" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let (id, secret, scope) = (field("client_id"), field("client_secret"), field("scope"));
    if !scope.ends_with("/.default") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
        );
    }
    let hex = unique_hex(&shared);
    let mut a = shared.authority();
    let Some((_, _, expected)) = a
        .entra_clients
        .iter()
        .find(|(t, i, _)| *t == tenant && *i == id)
    else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{id}' was not found in the directory '{tenant}'."
            ),
        );
    };
    if *expected != secret {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        );
    }
    a.issued.entra_client_credentials += 1;
    let (token, secs) = a.issue_bearer(format!("eyJ0eXAiOiJKV1QifQ.sim-entra-{hex}"));
    Json(json!({
        "token_type": "Bearer",
        "expires_in": secs,
        "ext_expires_in": secs,
        "access_token": token,
    }))
    .into_response()
}

fn sts_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n  <RequestId>00000000-0000-4000-8000-000000000000</RequestId>\n</ErrorResponse>\n"
    );
    (status, [("content-type", "text/xml")], body).into_response()
}

/// `POST /sts`: STS, `AssumeRoleWithWebIdentity` only (an unsigned call).
async fn sts(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let form = String::from_utf8_lossy(&body);
    let field = |n: &str| form_value(&form, n).unwrap_or_default();
    if field("Action") != "AssumeRoleWithWebIdentity" {
        return sts_error(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "Could not find operation for this action.",
        );
    }
    let (role, session, token) = (
        field("RoleArn"),
        field("RoleSessionName"),
        field("WebIdentityToken"),
    );
    if !role.starts_with("arn:aws:iam::") || !role.contains(":role/") {
        return sts_error(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "Request ARN is invalid",
        );
    }
    if token.trim().is_empty() || token.len() < 4 {
        return sts_error(
            StatusCode::BAD_REQUEST,
            "InvalidIdentityToken",
            "The web identity token that was passed could not be validated by AWS.",
        );
    }
    let hex = unique_hex(&shared);
    let mut a = shared.authority();
    a.issued.sts_web_identity += 1;
    let (id, secret, session_token, expiration) = a.issue_aws(&hex);
    let role_name = role.rsplit('/').next().unwrap_or("role");
    let account = role.split(':').nth(4).unwrap_or("000000000000");
    let body = format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:sim</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{session}</Arn>
      <AssumedRoleId>AROASIMULATOR:{session}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{id}</AccessKeyId>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <SessionToken>{session_token}</SessionToken>
      <Expiration>{expiration}</Expiration>
    </Credentials>
    <Provider>sim</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>{}</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
",
        crate::plumbing::new_request_id(&shared)
    );
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}

/// `GET /ecs/credentials`: the container credentials endpoint (JSON).
async fn container_credentials(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let hex = unique_hex(&shared);
    let mut a = shared.authority();
    if let Some(expected) = &a.container_token {
        let given = headers.get("authorization").and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"code": "Unauthorized", "message": "invalid authorization token"})),
            )
                .into_response();
        }
    }
    a.issued.container += 1;
    let (id, secret, token, expiration) = a.issue_aws(&hex);
    Json(json!({
        "AccessKeyId": id,
        "SecretAccessKey": secret,
        "Token": token,
        "Expiration": expiration,
        "RoleArn": "arn:aws:iam::000000000000:role/sim-task-role",
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthControl {
    token_lifetime_ms: Option<u64>,
    require_issued_credentials: Option<bool>,
    #[serde(default)]
    revoke: bool,
}

async fn auth_status(State(shared): State<Arc<Shared>>) -> Response {
    let a = shared.authority();
    Json(json!({
        "issued": a.issued,
        "token_lifetime_ms": u64::try_from(a.lifetime.as_millis()).unwrap_or(u64::MAX),
        "require_issued_credentials": a.require_issued,
    }))
    .into_response()
}

/// `POST /_sim/auth`: `{"token_lifetime_ms", "require_issued_credentials", "revoke"}`.
async fn auth_control(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let c: AuthControl = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": format!("Invalid control body: {e}"), "type": "invalid_request_error"}})),
            )
                .into_response()
        }
    };
    let sim = crate::Simulator { shared };
    if let Some(ms) = c.token_lifetime_ms {
        sim.set_token_lifetime(Duration::from_millis(ms));
    }
    if let Some(on) = c.require_issued_credentials {
        sim.require_issued_credentials(on);
    }
    if c.revoke {
        sim.revoke_issued_credentials();
    }
    Json(json!({"ok": true})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        let body = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&scope=a+b&x";
        assert_eq!(form_value(body, "grant_type").as_deref(), Some(JWT_BEARER));
        assert_eq!(form_value(body, "scope").as_deref(), Some("a b"));
        assert_eq!(form_value(body, "x").as_deref(), Some(""));
        assert_eq!(form_value(body, "missing"), None);
    }

    #[test]
    fn issued_tokens_expire_and_can_be_revoked() {
        let mut a = Authority {
            lifetime: Duration::from_millis(0),
            ..Authority::default()
        };
        let (expired, _) = a.issue_bearer("t1".into());
        assert_eq!(a.check_bearer(&expired), BearerCheck::Expired);
        a.lifetime = Duration::from_secs(60);
        let (live, secs) = a.issue_bearer("t2".into());
        assert_eq!(secs, 60);
        assert_eq!(a.check_bearer(&live), BearerCheck::Valid);
        assert_eq!(a.check_bearer("other"), BearerCheck::NotOurs);
        a.require_issued = true;
        assert_eq!(a.check_bearer("other"), BearerCheck::Unknown);
        a.bearer.values_mut().for_each(|t| t.revoked = true);
        assert_eq!(a.check_bearer(&live), BearerCheck::Revoked);
        let (id, ..) = a.issue_aws("0123456789abcdef0123");
        assert!(matches!(a.aws_secret(&id), AwsKey::Valid { .. }));
        assert!(matches!(a.aws_secret("AKIDOTHER"), AwsKey::Invalid));
    }
}
