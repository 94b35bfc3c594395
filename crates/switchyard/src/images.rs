//! Fetching image URLs for providers that take only image bytes (Bedrock).
//!
//! The gateway fetches on the client's behalf, so it guards against being used to
//! reach what the client cannot (DECISIONS.md, "Safety"): http(s) only, a size cap,
//! a timeout, and no private, loopback, link-local or otherwise non-public address
//! unless `[images] allow_hosts` names the host or the address. The host is resolved
//! once, every address is checked, and the connection goes to a checked address
//! (the client is pinned to it), so a second DNS answer cannot slip past the check.
//! Redirects are followed by hand, each hop checked the same way.

use base64::Engine;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::ImagesConfig;
use crate::types::chat::{ChatRequest, MessageContent};

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 3;

/// Why an image URL was not fetched; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

fn fail(message: impl Into<String>) -> FetchError {
    FetchError(message.into())
}

/// Whether an address is one the gateway must not reach for a client unless
/// allowed: loopback, private, link-local, unspecified, shared (CGNAT), multicast,
/// broadcast, documentation and reserved ranges, and their IPv6 forms (including
/// IPv4-mapped, IPv4-compatible and NAT64 addresses, judged by the IPv4 inside).
pub fn is_restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_restricted_v4(v4),
        IpAddr::V6(v6) => is_restricted_v6(v6),
    }
}

fn is_restricted_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn is_restricted_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_restricted_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`) IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new(
        (s[6] >> 8) as u8,
        (s[6] & 0xff) as u8,
        (s[7] >> 8) as u8,
        (s[7] & 0xff) as u8,
    );
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // `::` and `::1` are themselves, not IPv4-compatible addresses.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        _ => None,
    }
}

/// Whether the allowlist names this host (as written in the URL) or this address.
fn allowed(config: &ImagesConfig, host: &str, ip: Option<IpAddr>) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    config.allow_hosts.iter().any(|h| {
        h.eq_ignore_ascii_case(host)
            || ip.is_some_and(|ip| h.parse::<IpAddr>().is_ok_and(|a| a == ip))
    })
}

/// Whether the request has an http(s) image URL to fetch.
pub fn has_remote_images(req: &ChatRequest) -> bool {
    req.messages.iter().any(|m| match &m.content {
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .any(|p| p.image_url.as_ref().is_some_and(|i| is_remote(&i.url))),
        _ => false,
    })
}

fn is_remote(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// Replaces every http(s) image URL in `req` with a `data:` URL of the fetched
/// bytes, once per request (every attempt then renders the same bytes). The images
/// of one request share `images.max_total_bytes`: a fetch stops as soon as it would
/// pass what the earlier images left. On failure, the error names the part
/// (`messages[i].content[j].image_url.url`).
pub async fn inline_images(
    config: &ImagesConfig,
    req: &mut ChatRequest,
) -> Result<(), (String, FetchError)> {
    let mut left = config.max_total_bytes;
    for (i, m) in req.messages.iter_mut().enumerate() {
        let Some(MessageContent::Parts(parts)) = &mut m.content else {
            continue;
        };
        for (j, part) in parts.iter_mut().enumerate() {
            let Some(image) = &mut part.image_url else {
                continue;
            };
            if !is_remote(&image.url) {
                continue;
            }
            let at = format!("messages[{i}].content[{j}].image_url.url");
            let limit = if left < config.max_bytes {
                Limit::Total {
                    left,
                    total: config.max_total_bytes,
                }
            } else {
                Limit::Image(config.max_bytes)
            };
            let (data, fetched) = fetch_within(config, &image.url, limit)
                .await
                .map_err(|e| (at, e))?;
            left = left.saturating_sub(fetched);
            image.url = data;
        }
    }
    Ok(())
}

/// The most bytes one fetch may read, and which setting says so.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// `images.max_bytes`.
    Image(usize),
    /// What the request's earlier images left of `images.max_total_bytes`.
    Total { left: usize, total: usize },
}

impl Limit {
    fn bytes(self) -> usize {
        match self {
            Limit::Image(n) => n,
            Limit::Total { left, .. } => left,
        }
    }

    fn exceeded(self) -> FetchError {
        match self {
            Limit::Image(n) => fail(format!(
                "the image is larger than {n} bytes (`images.max_bytes`)"
            )),
            Limit::Total { total, .. } => fail(format!(
                "the request's images are larger than {total} bytes in all \
                 (`images.max_total_bytes`)"
            )),
        }
    }
}

/// Fetches one image under the rules and returns it as a `data:` URL.
pub async fn fetch(config: &ImagesConfig, url: &str) -> Result<String, FetchError> {
    fetch_within(config, url, Limit::Image(config.max_bytes))
        .await
        .map(|(data, _)| data)
}

/// Fetches one image of at most `limit` bytes: its `data:` URL and its size.
async fn fetch_within(
    config: &ImagesConfig,
    url: &str,
    limit: Limit,
) -> Result<(String, usize), FetchError> {
    match tokio::time::timeout(config.timeout, fetch_inner(config, url, limit)).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!(
            "fetching the image took longer than {} ms",
            config.timeout.as_millis()
        ))),
    }
}

async fn fetch_inner(
    config: &ImagesConfig,
    url: &str,
    limit: Limit,
) -> Result<(String, usize), FetchError> {
    let mut url = reqwest::Url::parse(url).map_err(|e| fail(format!("invalid URL: {e}")))?;
    for _ in 0..=MAX_REDIRECTS {
        let res = get_checked(config, &url).await?;
        if res.status().is_redirection() {
            let location = res
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| fail("redirect without a Location"))?;
            url = url
                .join(location)
                .map_err(|e| fail(format!("invalid redirect: {e}")))?;
            continue;
        }
        if !res.status().is_success() {
            return Err(fail(format!(
                "the image server answered {}",
                res.status().as_u16()
            )));
        }
        return read_image(limit, res).await;
    }
    Err(fail(format!("more than {MAX_REDIRECTS} redirects")))
}

/// One GET, to an address of the URL's host that passed the checks.
async fn get_checked(
    config: &ImagesConfig,
    url: &reqwest::Url,
) -> Result<reqwest::Response, FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(fail("only http and https image URLs are fetched"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(fail("image URLs with credentials are not fetched"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| fail("the URL has no host"))?
        .to_owned();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| fail("the URL has no port"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        // The resolver's own message is left out: it may describe the gateway's
        // network to the client.
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|_| fail("the image host could not be resolved"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(fail("the image host could not be resolved"));
    }
    // Every address must pass: a host with one public and one private address is
    // refused, so that no choice made later can reach the private one. The message
    // gives the reason only, never the address: which private address a name
    // resolves to is the gateway's network, not the client's business.
    for a in &addrs {
        if is_restricted(a.ip()) && !allowed(config, &host, Some(a.ip())) {
            return Err(fail(
                "the image host is a private, loopback or link-local address \
                 (allow it with `images.allow_hosts`)",
            ));
        }
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .resolve_to_addrs(bare, &addrs)
        .timeout(config.timeout)
        .build()
        .map_err(|e| fail(format!("cannot build the HTTP client: {e}")))?;
    client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| fail(fetch_failure(&e)))
}

/// What went wrong with a fetch, as a class: the error's own text may carry the
/// address the connection went to.
fn fetch_failure(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "the image server did not answer in time"
    } else if e.is_connect() {
        "the image server could not be reached"
    } else {
        "the image could not be fetched"
    }
}

async fn read_image(
    limit: Limit,
    mut res: reqwest::Response,
) -> Result<(String, usize), FetchError> {
    let max = limit.bytes();
    if res
        .content_length()
        .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
    {
        return Err(limit.exceeded());
    }
    let declared = res
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let mut bytes = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| fail(format!("reading the image failed: {}", fetch_failure(&e))))?
    {
        if bytes.len() + chunk.len() > max {
            return Err(limit.exceeded());
        }
        bytes.extend_from_slice(&chunk);
    }
    let mime = sniff(&bytes)
        .map(str::to_owned)
        .or(declared.filter(|m| m.starts_with("image/")))
        .ok_or_else(|| fail("the URL did not return an image"))?;
    let data = format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    Ok((data, bytes.len()))
}

/// The image type from the bytes' signature.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP".as_slice()) {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().expect("v4"))
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().expect("v6"))
    }

    #[test]
    fn ipv4_private_loopback_link_local_are_restricted() {
        for a in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
        ] {
            assert!(is_restricted(v4(a)), "{a}");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "93.184.216.34",
        ] {
            assert!(!is_restricted(v4(a)), "{a}");
        }
    }

    #[test]
    fn ipv6_private_loopback_link_local_are_restricted() {
        for a in [
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(is_restricted(v6(a)), "{a}");
        }
        for a in ["2606:4700:4700::1111", "2001:4860:4860::8888"] {
            assert!(!is_restricted(v6(a)), "{a}");
        }
    }

    #[test]
    fn mapped_and_embedded_ipv4_are_judged_by_the_ipv4() {
        for a in [
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:192.168.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(is_restricted(v6(a)), "{a}");
        }
        for a in ["::ffff:8.8.8.8", "64:ff9b::8.8.8.8"] {
            assert!(!is_restricted(v6(a)), "{a}");
        }
    }

    fn config(allow: &[&str]) -> ImagesConfig {
        ImagesConfig {
            max_bytes: 1024,
            max_total_bytes: 4096,
            timeout: Duration::from_secs(2),
            allow_hosts: allow.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn allowlist_names_hosts_or_addresses() {
        let c = config(&["127.0.0.1", "images.internal", "::1"]);
        assert!(allowed(&c, "127.0.0.1", Some(v4("127.0.0.1"))));
        assert!(allowed(&c, "Images.Internal", Some(v4("10.0.0.2"))));
        assert!(allowed(&c, "localhost", Some(v4("127.0.0.1"))));
        assert!(allowed(&c, "[::1]", Some(v6("::1"))));
        assert!(!allowed(&c, "10.0.0.1", Some(v4("10.0.0.1"))));
    }

    #[tokio::test]
    async fn refusals_name_the_reason() {
        let c = config(&[]);
        for (url, why) in [
            ("http://127.0.0.1:9/x.png", "loopback"),
            ("http://[::ffff:10.0.0.1]/x.png", "private"),
            ("http://169.254.169.254/latest", "link-local"),
            ("http://localhost:9/x.png", "loopback"),
            ("ftp://example.com/x.png", "only http"),
            ("http://user:pw@example.com/x.png", "credentials"),
            ("not a url", "invalid URL"),
        ] {
            let e = fetch(&c, url).await.expect_err(url);
            assert!(e.0.contains(why), "{url}: {}", e.0);
        }
    }

    #[test]
    fn sniffs_image_types() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a..."), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"<html>"), None);
    }
}
