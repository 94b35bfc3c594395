//! AWS Signature Version 4 verification, as AWS does it for a non-S3 service: the
//! canonical URI is the path *as sent* (already percent-encoded), normalised and encoded
//! once more, so `%3A` in a model id is `%253A` in the canonical request.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::plumbing::{days_from_civil, percent_decode, rfc3339};

type HmacSha256 = Hmac<Sha256>;

/// The service name Bedrock Runtime requests are signed for.
pub(crate) const SERVICE: &str = "bedrock";
/// How far the request time may be from the server's clock.
pub(crate) const MAX_SKEW_S: u64 = 5 * 60;

/// The credentials the simulator accepts.
pub(crate) struct Credentials<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) secret_access_key: &'a str,
    /// When set, `x-amz-security-token` must equal it.
    pub(crate) session_token: Option<&'a str>,
}

/// A request as needed for its signature.
pub(crate) struct SignedRequest<'a> {
    pub(crate) method: &'a str,
    /// The path exactly as received, still percent-encoded.
    pub(crate) raw_path: &'a str,
    pub(crate) raw_query: Option<&'a str>,
    /// Header names lower-case; repeated headers appear several times.
    pub(crate) headers: Vec<(String, String)>,
    /// `Host` as sent (or the URI authority for HTTP/2).
    pub(crate) host: Option<String>,
    pub(crate) body: &'a [u8],
}

/// Why a signature is refused, with the error type AWS answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SigError {
    /// No `Authorization` header.
    Missing,
    /// The header is not a complete SigV4 authorization.
    Incomplete(String),
    /// Unknown access key id, or a wrong security token.
    UnknownClient,
    /// Wrong service or date in the scope, expired, or a signature that does not match.
    Invalid(String),
}

impl SigError {
    /// The `x-amzn-ErrorType` name and the message.
    pub(crate) fn describe(&self) -> (&'static str, String) {
        match self {
            SigError::Missing => (
                "MissingAuthenticationTokenException",
                "Missing Authentication Token".to_string(),
            ),
            SigError::Incomplete(m) => ("IncompleteSignatureException", m.clone()),
            SigError::UnknownClient => (
                "UnrecognizedClientException",
                "The security token included in the request is invalid.".to_string(),
            ),
            SigError::Invalid(m) => ("InvalidSignatureException", m.clone()),
        }
    }
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Authorization {
    pub(crate) access_key_id: String,
    pub(crate) date: String,
    pub(crate) region: String,
    pub(crate) service: String,
    pub(crate) signed_headers: Vec<String>,
    pub(crate) signature: String,
}

pub(crate) fn parse_authorization(value: &str) -> Result<Authorization, SigError> {
    let Some(rest) = value.trim().strip_prefix("AWS4-HMAC-SHA256") else {
        return Err(SigError::Incomplete(
            "Authorization header requires the AWS4-HMAC-SHA256 algorithm.".to_string(),
        ));
    };
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let missing = |what: &str| {
        SigError::Incomplete(format!(
            "Authorization header requires '{what}' parameter. Authorization={}",
            value.trim()
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, terminator] = scope.as_slice() else {
        return Err(SigError::Incomplete(format!(
            "Credential should have 5 slash-separated parts: {credential}"
        )));
    };
    if *terminator != "aws4_request" {
        return Err(SigError::Invalid(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not \
             '{terminator}'."
        )));
    }
    Ok(Authorization {
        access_key_id: key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: signed.split(';').map(str::to_string).collect(),
        signature: signature.to_string(),
    })
}

/// `20150830T123600Z` → Unix seconds.
pub(crate) fn parse_amz_date(value: &str) -> Option<u64> {
    let b = value.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = value.get(range)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()
}

fn amz_date(secs: u64) -> String {
    // rfc3339 without the punctuation: 2015-08-30T12:36:00Z → 20150830T123600Z
    rfc3339(secs).replace(['-', ':'], "")
}

/// URI-encodes every byte but the unreserved ones (and `/` when `keep_slash`).
fn uri_encode(input: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    for b in input.bytes() {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
        if unreserved || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Removes `.` and `..` segments and empty segments (as AWS does for non-S3 services).
fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = path.ends_with('/') && !out.is_empty();
    let mut joined = format!("/{}", out.join("/"));
    if trailing {
        joined.push('/');
    }
    joined
}

/// The canonical URI: the path as sent, normalised, then encoded once more.
pub(crate) fn canonical_uri(raw_path: &str) -> String {
    uri_encode(&normalize_path(raw_path), true)
}

/// The canonical query: every pair decoded and re-encoded strictly, sorted.
pub(crate) fn canonical_query(raw_query: Option<&str>) -> String {
    let Some(query) = raw_query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// The canonical request for the signed headers, and the payload hash used.
pub(crate) fn canonical_request(
    req: &SignedRequest<'_>,
    signed_headers: &[String],
) -> Result<String, SigError> {
    let mut lines = Vec::with_capacity(signed_headers.len());
    for name in signed_headers {
        let values: Vec<String> = if name == "host" {
            req.host.iter().cloned().collect()
        } else {
            req.headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect()
        };
        if values.is_empty() {
            return Err(SigError::Invalid(format!(
                "The request signature we calculated does not match the signature you provided: \
                 the signed header '{name}' is not in the request."
            )));
        }
        lines.push(format!("{name}:{}", values.join(",")));
    }
    let payload_hash = match req
        .headers
        .iter()
        .find(|(k, _)| k == "x-amz-content-sha256")
        .map(|(_, v)| v.as_str())
    {
        Some("UNSIGNED-PAYLOAD") => "UNSIGNED-PAYLOAD".to_string(),
        Some(claimed) => {
            let actual = sha256_hex(req.body);
            if !claimed.eq_ignore_ascii_case(&actual) {
                return Err(SigError::Invalid(
                    "The provided 'x-amz-content-sha256' header does not match what was computed."
                        .to_string(),
                ));
            }
            actual
        }
        None => sha256_hex(req.body),
    };
    Ok(format!(
        "{}\n{}\n{}\n{}\n\n{}\n{}",
        req.method,
        canonical_uri(req.raw_path),
        canonical_query(req.raw_query),
        lines.join("\n"),
        signed_headers.join(";"),
        payload_hash
    ))
}

/// The string to sign for a canonical request.
pub(crate) fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    )
}

/// The hex signature of `string_to_sign` with the key derived from the secret and scope.
pub(crate) fn signature(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
    sts: &str,
) -> String {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hmac(&k_signing, sts.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Verifies the request's SigV4 signature against `creds` at time `now` (Unix seconds).
pub(crate) fn verify(
    req: &SignedRequest<'_>,
    creds: &Credentials<'_>,
    now: u64,
) -> Result<(), SigError> {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(value) = header("authorization") else {
        return Err(SigError::Missing);
    };
    let auth = parse_authorization(value)?;
    if auth.access_key_id != creds.access_key_id {
        return Err(SigError::UnknownClient);
    }
    if let Some(expected) = creds.session_token {
        if header("x-amz-security-token") != Some(expected) {
            return Err(SigError::UnknownClient);
        }
    }
    if auth.service != SERVICE {
        return Err(SigError::Invalid(format!(
            "Credential should be scoped to correct service: '{SERVICE}'. "
        )));
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(SigError::Invalid(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".to_string(),
        ));
    }
    let Some(date_header) = header("x-amz-date") else {
        return Err(SigError::Incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .to_string(),
        ));
    };
    let Some(when) = parse_amz_date(date_header) else {
        return Err(SigError::Incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{date_header}'."
        )));
    };
    if !date_header.starts_with(&auth.date) || auth.date.len() != 8 {
        return Err(SigError::Invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from \
             HTTP: '{}' != '{}', from '{date_header}'.",
            auth.date,
            &date_header[..8]
        )));
    }
    if now > when + MAX_SKEW_S {
        return Err(SigError::Invalid(format!(
            "Signature expired: {date_header} is now earlier than {} ({} - 5 min.)",
            amz_date(now - MAX_SKEW_S),
            amz_date(now)
        )));
    }
    if when > now + MAX_SKEW_S {
        return Err(SigError::Invalid(format!(
            "Signature not yet current: {date_header} is still later than {} ({} + 5 min.)",
            amz_date(now + MAX_SKEW_S),
            amz_date(now)
        )));
    }
    let canonical = canonical_request(req, &auth.signed_headers)?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let sts = string_to_sign(date_header, &scope, &canonical);
    let expected = signature(
        creds.secret_access_key,
        &auth.date,
        &auth.region,
        &auth.service,
        &sts,
    );
    if same(&expected, &auth.signature.to_ascii_lowercase()) {
        Ok(())
    } else {
        Err(SigError::Invalid(format!(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.\n\nThe Canonical String for this request should have \
             been\n'{canonical}'\n\nThe String-to-Sign should have been\n'{sts}'\n"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uri_double_encodes() {
        assert_eq!(
            canonical_uri("/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse"),
            "/model/us.anthropic.claude-3-5-sonnet-20241022-v2%253A0/converse"
        );
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/a//b/./c/../d/"), "/a/b/d/");
        assert_eq!(canonical_uri("/a b"), "/a%20b");
    }

    #[test]
    fn canonical_query_sorts_and_encodes() {
        assert_eq!(canonical_query(None), "");
        assert_eq!(canonical_query(Some("b=2&a=x%2Fy&a=1")), "a=1&a=x%2Fy&b=2");
        assert_eq!(canonical_query(Some("flag")), "flag=");
    }

    #[test]
    fn amz_dates() {
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(parse_amz_date("2015-08-30"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }

    #[test]
    fn authorization_header() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature=abc",
        )
        .expect("parses");
        assert_eq!(a.access_key_id, "AKID");
        assert_eq!(a.region, "us-east-1");
        assert_eq!(a.signed_headers, ["content-type", "host", "x-amz-date"]);
        assert!(matches!(
            parse_authorization(
                "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/bedrock/aws4_request"
            ),
            Err(SigError::Incomplete(_))
        ));
    }

    /// The signature example of the AWS documentation (IAM ListUsers), whose published
    /// signature pins the key derivation and the string to sign.
    #[test]
    fn aws_documentation_example() {
        let canonical = "GET\n/\nAction=ListUsers&Version=2010-05-08\ncontent-type:application/x-www-form-urlencoded; charset=utf-8\nhost:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let req = SignedRequest {
            method: "GET",
            raw_path: "/",
            raw_query: Some("Version=2010-05-08&Action=ListUsers"),
            headers: vec![
                (
                    "content-type".into(),
                    "application/x-www-form-urlencoded; charset=utf-8".into(),
                ),
                ("x-amz-date".into(), "20150830T123600Z".into()),
            ],
            host: Some("iam.amazonaws.com".into()),
            body: b"",
        };
        let signed: Vec<String> = ["content-type", "host", "x-amz-date"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(canonical_request(&req, &signed), Ok(canonical.to_string()));
        let sts = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/iam/aws4_request",
            canonical,
        );
        assert!(sts.ends_with("f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"));
        assert_eq!(
            signature(
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "20150830",
                "us-east-1",
                "iam",
                &sts
            ),
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    /// A request signed by botocore (boto3's signer) for a model id with a `:` under an
    /// instance prefix: the golden signature pins the double encoding of the path.
    #[test]
    fn botocore_signed_request_verifies() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let signed = |signature: &str| {
            SignedRequest {
            method: "POST",
            raw_path: "/primary/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse",
            raw_query: None,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-amz-date".into(), "20261126T043504Z".into()),
                ("x-amz-security-token".into(), "session-tok".into()),
                (
                    "authorization".into(),
                    format!(
                        "AWS4-HMAC-SHA256 Credential=AKIDSIMULATOR/20261126/us-east-1/bedrock/aws4_request, \
                         SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature={signature}"
                    ),
                ),
            ],
            host: Some("127.0.0.1:9099".into()),
            body,
        }
        };
        let good = "767ed21fddc06eb085720e13bff6896fa2c44a13c2042fea9141697457a52050";
        let creds = Credentials {
            access_key_id: "AKIDSIMULATOR",
            secret_access_key: "sim-secret-key",
            session_token: Some("session-tok"),
        };
        let now = parse_amz_date("20261126T043504Z").unwrap_or(0) + 60;
        assert_eq!(verify(&signed(good), &creds, now), Ok(()));
        let wrong = good.replace('7', "8");
        match verify(&signed(&wrong), &creds, now) {
            Err(SigError::Invalid(m)) => {
                assert!(m.contains("%253A0/converse"), "{m}");
                assert!(m.starts_with("The request signature we calculated does not match"));
            }
            other => panic!("{other:?}"),
        }
        // Another secret, an unknown key, a wrong token, an old date.
        let other_secret = Credentials {
            secret_access_key: "other",
            ..creds
        };
        assert!(matches!(
            verify(&signed(good), &other_secret, now),
            Err(SigError::Invalid(_))
        ));
        let other_key = Credentials {
            access_key_id: "AKIDOTHER",
            ..other_secret
        };
        assert_eq!(
            verify(&signed(good), &other_key, now),
            Err(SigError::UnknownClient)
        );
        let token = Credentials {
            access_key_id: "AKIDSIMULATOR",
            secret_access_key: "sim-secret-key",
            session_token: Some("another"),
        };
        assert_eq!(
            verify(&signed(good), &token, now),
            Err(SigError::UnknownClient)
        );
        let creds = Credentials {
            access_key_id: "AKIDSIMULATOR",
            secret_access_key: "sim-secret-key",
            session_token: None,
        };
        match verify(&signed(good), &creds, now + 3600) {
            Err(SigError::Invalid(m)) => assert!(m.starts_with("Signature expired"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
