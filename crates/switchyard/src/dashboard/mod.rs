//! `GET /dashboard`: the operators' web UI, served by the binary with its assets
//! embedded (no CDN, no web font: it works offline).
//!
//! This module serves pages and sessions only. The page's script reads and changes
//! everything through the admin API (`/admin/…`, JSON), authenticated by the session
//! cookie this module sets at login; state-changing calls repeat the session's CSRF
//! token in a header, which the page reads from a `<meta>` tag. The Content Security
//! Policy allows scripts and styles from this origin only (no inline script).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderMap, HeaderValue, StatusCode};

use crate::api::AppState;
use crate::governance::session::{NewSession, CSRF_HEADER, SESSION_COOKIE};
use crate::types::time;

const APP_HTML: &str = include_str!("assets/app.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/login", post(login))
        .route("/dashboard/login/{code}", get(login_link))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/app.css", get(style))
}

/// An HTML answer with the headers every page gets.
fn html(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    res
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The one-time login link is in a URL: never send it on.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let notice = if message.is_empty() {
        String::new()
    } else {
        format!(r#"<p class="notice" id="login-error">{message}</p>"#)
    };
    html(status, LOGIN_HTML.replace("{{NOTICE}}", &notice))
}

/// The app for an open session, else the login form.
async fn page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let gov = &state.governance;
    if !gov.admin_enabled() {
        return login_page(
            StatusCode::FORBIDDEN,
            "The dashboard is disabled: set [admin] token in the configuration.",
        );
    }
    match gov.session(&headers, time::now_ms()) {
        // The token is hex: nothing to escape.
        Some(s) => html(StatusCode::OK, APP_HTML.replace("{{CSRF}}", &s.csrf)),
        None => login_page(StatusCode::OK, ""),
    }
}

/// The `Set-Cookie` value of a new session. `Secure`: browsers keep it on
/// `http://127.0.0.1` and `http://localhost` too.
fn session_cookie(s: &NewSession, now_ms: i64) -> String {
    let max_age = (s.expires_at_ms - now_ms).max(0) / 1000;
    format!(
        "{SESSION_COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict",
        s.id
    )
}

fn logged_in(s: &NewSession, now_ms: i64) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    let h = res.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
    if let Ok(v) = HeaderValue::from_str(&session_cookie(s, now_ms)) {
        h.insert(header::SET_COOKIE, v);
    }
    secure_headers(h);
    res
}

/// `POST /dashboard/login`, form field `token`: the admin token opens a session.
async fn login(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let now = time::now_ms();
    match state.governance.login(token.trim(), now) {
        Some(s) => logged_in(&s, now),
        None if !state.governance.admin_enabled() => login_page(
            StatusCode::FORBIDDEN,
            "The dashboard is disabled: set [admin] token in the configuration.",
        ),
        None => login_page(StatusCode::UNAUTHORIZED, "That is not the admin token."),
    }
}

/// `GET /dashboard/login/{code}`: a one-time login link (`switchyard demo` prints one).
async fn login_link(State(state): State<Arc<AppState>>, Path(code): Path<String>) -> Response {
    let now = time::now_ms();
    match state.governance.login_with_link(&code, now) {
        Some(s) => logged_in(&s, now),
        None => login_page(
            StatusCode::UNAUTHORIZED,
            "This login link was used already or has expired; log in with the admin token.",
        ),
    }
}

/// `POST /dashboard/logout`: ends the session (CSRF header required) and clears
/// the cookie.
async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let gov = &state.governance;
    let Some(s) = gov.session(&headers, time::now_ms()) else {
        return (StatusCode::UNAUTHORIZED, "no open session").into_response();
    };
    let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !given.is_some_and(|g| crate::governance::session::same_secret(g, &s.csrf)) {
        return (
            StatusCode::FORBIDDEN,
            format!("logging out needs the session's `{CSRF_HEADER}` header"),
        )
            .into_response();
    }
    gov.logout(&headers);
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
    )) {
        h.insert(header::SET_COOKIE, v);
    }
    secure_headers(h);
    res
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
