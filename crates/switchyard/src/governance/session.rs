//! Admin sessions: what lets a browser use the admin API (the dashboard) without
//! keeping the admin token in a page.
//!
//! Logging in with the admin token (compared as SHA-256 digests in constant time)
//! or with a one-time login link creates a session: a random 256-bit id sent as an
//! `HttpOnly; Secure; SameSite=Strict` cookie, kept here only as its SHA-256, with an
//! absolute expiry, and a random CSRF token that every state-changing request made
//! with the cookie must repeat in the [`CSRF_HEADER`] header. A session remembers the
//! admin token it was opened under: changing `[admin] token` (a reload) ends every
//! session at once.
//!
//! Sessions live in this process's memory: with several replicas, a browser logs in
//! to the replica it talks to (sticky routing), and a restart logs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;

use http::HeaderMap;
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "switchyard_session";
/// The header a cookie-authenticated state-changing request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-switchyard-csrf";
/// How long a session lasts after login, whatever is done with it.
pub const SESSION_TTL_MS: i64 = 8 * 3_600_000;
/// How long a one-time login link stays valid.
pub const LINK_TTL_MS: i64 = 15 * 60_000;
/// Open sessions beyond this evict the oldest (a flood of logins cannot grow memory).
const MAX_SESSIONS: usize = 1024;
const MAX_LINKS: usize = 64;

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    created_at_ms: i64,
    expires_at_ms: i64,
    /// SHA-256 of the admin token the session was opened under.
    token: [u8; 32],
}

#[derive(Debug, Default)]
struct Inner {
    /// By SHA-256 of the session id.
    sessions: HashMap<[u8; 32], Session>,
    /// One-time login codes by SHA-256, with their expiry.
    links: HashMap<[u8; 32], i64>,
}

/// An open session, as a request presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub csrf: String,
    pub expires_at_ms: i64,
}

/// A session just opened: the cookie value and the CSRF token.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub csrf: String,
    pub expires_at_ms: i64,
}

/// The session table.
#[derive(Debug, Default)]
pub struct AdminSessions {
    inner: Mutex<Inner>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Equal-length digests compared without an early exit.
pub(crate) fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl AdminSessions {
    pub fn new() -> AdminSessions {
        AdminSessions::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves a consistent map: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session under the admin token whose digest is `token`.
    pub fn open(&self, token: [u8; 32], now_ms: i64) -> NewSession {
        let id = random_hex();
        let csrf = random_hex();
        let expires_at_ms = now_ms.saturating_add(SESSION_TTL_MS);
        let mut inner = self.lock();
        inner.sessions.retain(|_, s| s.expires_at_ms > now_ms);
        if inner.sessions.len() >= MAX_SESSIONS {
            let oldest = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.created_at_ms)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                inner.sessions.remove(&k);
            }
        }
        inner.sessions.insert(
            digest(&id),
            Session {
                csrf: csrf.clone(),
                created_at_ms: now_ms,
                expires_at_ms,
                token,
            },
        );
        NewSession {
            id,
            csrf,
            expires_at_ms,
        }
    }

    /// The session of cookie value `id`, when it is open, unexpired and was opened
    /// under the admin token of digest `token`.
    pub fn get(&self, id: &str, token: &[u8; 32], now_ms: i64) -> Option<SessionInfo> {
        let key = digest(id);
        let mut inner = self.lock();
        let s = inner.sessions.get(&key)?;
        if s.expires_at_ms <= now_ms || !same(&s.token, token) {
            inner.sessions.remove(&key);
            return None;
        }
        Some(SessionInfo {
            csrf: s.csrf.clone(),
            expires_at_ms: s.expires_at_ms,
        })
    }

    /// Ends the session of cookie value `id` (nothing happens for an unknown one).
    pub fn close(&self, id: &str) {
        self.lock().sessions.remove(&digest(id));
    }

    /// How many sessions are open (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new one-time login code, valid for [`LINK_TTL_MS`].
    pub fn issue_link(&self, now_ms: i64) -> String {
        let code = random_hex();
        let mut inner = self.lock();
        inner.links.retain(|_, exp| *exp > now_ms);
        if inner.links.len() >= MAX_LINKS {
            let oldest = inner
                .links
                .iter()
                .min_by_key(|(_, exp)| **exp)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                inner.links.remove(&k);
            }
        }
        inner
            .links
            .insert(digest(&code), now_ms.saturating_add(LINK_TTL_MS));
        code
    }

    /// Whether `code` is a valid one-time code; it is spent either way.
    pub fn redeem_link(&self, code: &str, now_ms: i64) -> bool {
        self.lock()
            .links
            .remove(&digest(code))
            .is_some_and(|exp| exp > now_ms)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether `given` equals `want`, compared in constant time.
pub fn same_secret(given: &str, want: &str) -> bool {
    same(&digest(given), &digest(want))
}

/// What the admin API makes of a request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAccess {
    /// The admin token, or an open session (with its CSRF token when writing).
    Granted,
    /// No `[admin] token` is configured.
    Disabled,
    /// Neither a bearer token nor a session cookie.
    Missing,
    /// A wrong token, or a session that is unknown, expired or ended.
    Invalid,
    /// A session writing without its CSRF token.
    CsrfMissing,
}

impl super::Governance {
    fn admin_digest(&self) -> Option<[u8; 32]> {
        self.rules.load().admin_token
    }

    /// Whether `token` is the admin token (digests compared in constant time).
    pub fn admin_token_matches(&self, token: &str) -> bool {
        self.admin_digest()
            .is_some_and(|want| same(&digest(token), &want))
    }

    /// Opens a session when `token` is the admin token.
    pub fn login(&self, token: &str, now_ms: i64) -> Option<NewSession> {
        let want = self.admin_digest()?;
        same(&digest(token), &want).then(|| self.sessions.open(want, now_ms))
    }

    /// Opens a session for a one-time login code (spent by this call).
    pub fn login_with_link(&self, code: &str, now_ms: i64) -> Option<NewSession> {
        let want = self.admin_digest()?;
        self.sessions
            .redeem_link(code, now_ms)
            .then(|| self.sessions.open(want, now_ms))
    }

    /// A one-time login code for the dashboard; `None` without an admin token.
    pub fn issue_login_link(&self, now_ms: i64) -> Option<String> {
        self.admin_digest()?;
        Some(self.sessions.issue_link(now_ms))
    }

    /// The open session of the request's cookie.
    pub fn session(&self, headers: &HeaderMap, now_ms: i64) -> Option<SessionInfo> {
        let want = self.admin_digest()?;
        let id = cookie(headers, SESSION_COOKIE)?;
        self.sessions.get(id, &want, now_ms)
    }

    /// Ends the request's session, if it has one.
    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.sessions.close(id);
        }
    }

    /// The table itself (tests count its sessions).
    pub fn admin_sessions(&self) -> &AdminSessions {
        &self.sessions
    }

    /// Whether the request may use the admin API: the bearer admin token, or the
    /// session cookie, which for a `write` must come with the session's CSRF token.
    pub fn admin_access(&self, headers: &HeaderMap, write: bool, now_ms: i64) -> AdminAccess {
        if self.admin_digest().is_none() {
            return AdminAccess::Disabled;
        }
        if headers.contains_key(http::header::AUTHORIZATION) {
            return if self.is_admin(headers) {
                AdminAccess::Granted
            } else {
                AdminAccess::Invalid
            };
        }
        if cookie(headers, SESSION_COOKIE).is_none() {
            return AdminAccess::Missing;
        }
        let Some(s) = self.session(headers, now_ms) else {
            return AdminAccess::Invalid;
        };
        if !write {
            return AdminAccess::Granted;
        }
        let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        match given {
            Some(g) if same_secret(g, &s.csrf) => AdminAccess::Granted,
            _ => AdminAccess::CsrfMissing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_its_expiry_and_under_its_token_only() {
        let s = AdminSessions::new();
        let token = digest("admin");
        let new = s.open(token, 1_000);
        assert_eq!(new.id.len(), 64);
        let got = s.get(&new.id, &token, 1_001).expect("open");
        assert_eq!(got.csrf, new.csrf);
        assert!(s.get(&new.id, &digest("other"), 1_002).is_none());
        // The mismatch closed it.
        assert!(s.get(&new.id, &token, 1_003).is_none());
        let new = s.open(token, 1_000);
        assert!(s.get(&new.id, &token, 1_000 + SESSION_TTL_MS).is_none());
        let new = s.open(token, 1_000);
        s.close(&new.id);
        assert!(s.get(&new.id, &token, 1_001).is_none());
    }

    #[test]
    fn a_login_link_works_once_and_expires() {
        let s = AdminSessions::new();
        let code = s.issue_link(0);
        assert!(s.redeem_link(&code, 1));
        assert!(!s.redeem_link(&code, 2));
        let code = s.issue_link(0);
        assert!(!s.redeem_link(&code, LINK_TTL_MS));
        assert!(!s.redeem_link("nope", 0));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; switchyard_session=abc ; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
