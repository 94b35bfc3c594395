//! The token endpoints: what they accept, what they refuse, and what the provider
//! endpoints do with what they issued.

use std::time::Duration;

use serde_json::{json, Value};

use super::{read, start, Got};

const PRIVATE_PEM: &str =
    include_str!("../../../switchyard/tests/fixtures/credentials/test-only-rsa-private.pem");
const PUBLIC_PEM: &str =
    include_str!("../../../switchyard/tests/fixtures/credentials/test-only-rsa-public.pem");
const EMAIL: &str = "svc@p.iam.gserviceaccount.com";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn jwt(claims: Value, pem: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .expect("sign")
}

async fn form(env: &super::Env, path: &str, pairs: &[(&str, &str)]) -> Got {
    let resp = env
        .client
        .post(env.url(path))
        .form(pairs)
        .send()
        .await
        .expect("send");
    read(resp).await
}

async fn vertex(env: &super::Env, token: &str) -> Got {
    let resp = env
        .client
        .post(env.url(
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent",
        ))
        .bearer_auth(token)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .expect("send");
    read(resp).await
}

#[tokio::test]
async fn the_jwt_bearer_grant_checks_signature_audience_scope_and_lifetime() {
    let env = start().await;
    env.sim()
        .add_google_service_account(EMAIL, PUBLIC_PEM)
        .expect("public key");
    env.sim().require_issued_credentials(true);
    let aud = env.url("/token");
    let claims = |scope: &str, aud: &str, iat: u64, exp: u64| json!({"iss": EMAIL, "scope": scope, "aud": aud, "iat": iat, "exp": exp});
    let grant = "urn:ietf:params:oauth:grant-type:jwt-bearer";
    let good = jwt(claims(SCOPE, &aud, now(), now() + 3600), PRIVATE_PEM);
    let got = form(
        &env,
        "/token",
        &[("grant_type", grant), ("assertion", &good)],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let token = got.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(got.json()["token_type"], "Bearer");
    assert!(got.json()["expires_in"].as_u64().is_some_and(|s| s > 3000));
    assert_eq!(vertex(&env, &token).await.status, 200);

    // A signature that does not verify, a foreign audience, a missing scope, a lifetime
    // over an hour: each refused with invalid_grant.
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    for bad in [
        tampered,
        jwt(
            claims(SCOPE, "https://elsewhere/token", now(), now() + 3600),
            PRIVATE_PEM,
        ),
        jwt(claims("email", &aud, now(), now() + 3600), PRIVATE_PEM),
        jwt(claims(SCOPE, &aud, now(), now() + 7200), PRIVATE_PEM),
    ] {
        let got = form(
            &env,
            "/token",
            &[("grant_type", grant), ("assertion", &bad)],
        )
        .await;
        assert_eq!(got.status, 400, "{}", got.text);
        assert_eq!(got.json()["error"], "invalid_grant");
    }
    assert_eq!(env.sim().tokens_issued().google_jwt_bearer, 1);
    // Strict: a token not issued here is refused with Google's 401.
    let got = vertex(&env, "ya29.made-up").await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["error"]["status"], "UNAUTHENTICATED");
}

#[tokio::test]
async fn issued_tokens_expire_and_revoke() {
    let env = start().await;
    env.sim().add_google_authorized_user("c", "s", "r");
    env.sim().set_token_lifetime(Duration::from_millis(0));
    let pairs = [
        ("grant_type", "refresh_token"),
        ("client_id", "c"),
        ("client_secret", "s"),
        ("refresh_token", "r"),
    ];
    let got = form(&env, "/token", &pairs).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let expired = got.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(vertex(&env, &expired).await.status, 401);

    env.sim().set_token_lifetime(Duration::from_secs(60));
    let got = form(&env, "/token", &pairs).await;
    let live = got.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(vertex(&env, &live).await.status, 200);
    let revoke = env
        .client
        .post(env.url("/_sim/auth"))
        .json(&json!({"revoke": true}))
        .send()
        .await
        .expect("send");
    assert_eq!(revoke.status().as_u16(), 200);
    assert_eq!(vertex(&env, &live).await.status, 401);

    let bad = form(
        &env,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "c"),
            ("client_secret", "s"),
            ("refresh_token", "other"),
        ],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "invalid_grant");
    let status = env.get("/_sim/auth").await.json();
    assert_eq!(status["issued"]["google_refresh_token"], 2);
}

#[tokio::test]
async fn entra_id_checks_the_client_and_azure_takes_its_tokens() {
    let env = start().await;
    env.sim().add_entra_client("t1", "app", "secret");
    let pairs = |secret: &'static str| {
        [
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", secret),
            ("scope", "https://cognitiveservices.azure.com/.default"),
        ]
    };
    let bad = form(&env, "/t1/oauth2/v2.0/token", &pairs("wrong")).await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json()["error"], "invalid_client");
    assert!(bad.json()["error_description"]
        .as_str()
        .is_some_and(|d| d.starts_with("AADSTS7000215")));
    let other_tenant = form(&env, "/t2/oauth2/v2.0/token", &pairs("secret")).await;
    assert_eq!(other_tenant.status, 400);
    let got = form(&env, "/t1/oauth2/v2.0/token", &pairs("secret")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let token = got.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    env.sim().revoke_issued_credentials();
    let resp = env
        .client
        .post(env.url("/openai/deployments/d/chat/completions?api-version=2024-10-21"))
        .bearer_auth(&token)
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("send");
    let got = read(resp).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["error"]["code"], "401");
}

#[tokio::test]
async fn sts_and_the_container_endpoint_issue_temporary_aws_credentials() {
    let env = start().await;
    let got = form(
        &env,
        "/sts",
        &[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", "arn:aws:iam::123456789012:role/r"),
            ("RoleSessionName", "s"),
            ("WebIdentityToken", "eyJ.token.sig"),
        ],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert!(got.text.contains("<AccessKeyId>ASIASIM"), "{}", got.text);
    assert!(got.text.contains("<Expiration>"), "{}", got.text);
    let bad = form(
        &env,
        "/sts",
        &[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("RoleArn", "nope"),
            ("WebIdentityToken", "eyJ.token"),
        ],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.text.contains("<Code>ValidationError</Code>"));

    env.sim().set_container_authorization(Some("tok"));
    let denied = read(
        env.client
            .get(env.url("/ecs/credentials"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(denied.status, 401);
    let resp = env
        .client
        .get(env.url("/ecs/credentials"))
        .header("authorization", "tok")
        .send()
        .await
        .expect("send");
    let got = read(resp).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let c = got.json();
    assert!(c["AccessKeyId"]
        .as_str()
        .is_some_and(|k| k.starts_with("ASIASIM")));
    assert!(c["Token"].as_str().is_some());
    let issued = env.sim().tokens_issued();
    assert_eq!((issued.sts_web_identity, issued.container), (1, 1));
}
