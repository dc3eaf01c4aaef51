//! Who may read and act, and the headers every response carries.
//!
//! The rules are those of `POST /shutdown`: without a console token only loopback callers may
//! read; with one, every caller presents it (an `Authorization: Bearer` header, or the cookie
//! `POST /login` sets). Every action is a POST that must also carry this process's CSRF token,
//! which only a page of the console reveals. Responses forbid inline script and framing.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::{html, Shared};
use crate::http::constant_time_eq;
use crate::redact::Secret;

/// The cookie a successful login sets.
const COOKIE: &str = "embq_console";

/// The Content-Security-Policy of every response: scripts and styles only from the console.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The console's access rules.
#[derive(Clone)]
pub struct Access {
    /// `CONSOLE_TOKEN`: when set, every caller must present it.
    pub token: Option<Secret>,
    /// Required in every action's form; random per process.
    pub csrf: String,
}

impl Access {
    /// Rules with a fresh random CSRF token.
    pub fn new(token: Option<Secret>) -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self { token, csrf: hex::encode(bytes) }
    }

    /// Whether this caller may read: the token when one is configured, else loopback only.
    fn may_read(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), &'static str> {
        let given = presented(headers);
        match (&self.token, given) {
            (Some(t), Some(g)) if constant_time_eq(g.as_bytes(), t.expose().as_bytes()) => Ok(()),
            (Some(_), _) => Err("this console needs its token: log in at /login"),
            (None, _) if peer.to_canonical().is_loopback() => Ok(()),
            (None, _) => Err("without CONSOLE_TOKEN the console answers loopback callers only"),
        }
    }

    /// Whether a form's CSRF field is this process's token.
    pub fn csrf_ok(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.csrf.as_bytes())
    }
}

/// The token a request presents, from the Authorization header or the login cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE).then(|| v.to_string())
    })
}

/// Refuses callers the rules do not admit (the login page excepted) and adds the security headers.
pub async fn check(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let open = req.uri().path() == "/login" || req.uri().path().starts_with("/assets/");
    let mut resp = match s.access.may_read(peer.ip(), req.headers()) {
        Err(why) if !open => {
            tracing::warn!(%peer, path = req.uri().path(), "console refused: {why}");
            let body = html::layout("Refused", "", &format!("<p class=\"error\">{}</p>", html::esc(why)));
            let code = if s.access.token.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN };
            (code, body).into_response()
        }
        _ => {
            let is_post = req.method() == Method::POST;
            let resp = next.run(req).await;
            if is_post {
                tracing::info!(%peer, status = resp.status().as_u16(), "console action");
            }
            resp
        }
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The refusal of an action whose form lacks the CSRF token.
pub fn csrf_refused() -> Response {
    let body = html::layout(
        "Refused",
        "",
        "<p class=\"error\">This action needs the console's CSRF token: reload the page and try again.</p>",
    );
    (StatusCode::FORBIDDEN, body).into_response()
}

/// `GET /login`: a form for the token.
pub async fn login_page() -> Response {
    html::layout(
        "Log in",
        "",
        "<form method=\"post\" action=\"/login\"><label>Console token <input type=\"password\" name=\"token\" \
         autocomplete=\"current-password\"></label> <button>Log in</button></form>",
    )
    .into_response()
}

/// `POST /login`: a correct token is kept in an HttpOnly, same-site cookie.
pub async fn login(State(s): State<Shared>, body: Bytes) -> Response {
    let f = super::form::Fields::parse(&body);
    let given = f.one("token").unwrap_or("");
    let Some(t) = &s.access.token else {
        return Redirect::to("/").into_response();
    };
    if !constant_time_eq(given.as_bytes(), t.expose().as_bytes()) {
        return (StatusCode::UNAUTHORIZED, html::layout("Log in", "", "<p class=\"error\">Wrong token.</p>"))
            .into_response();
    }
    let cookie = format!("{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/");
    match HeaderValue::from_str(&cookie) {
        Ok(v) => ([(header::SET_COOKIE, v)], Redirect::to("/")).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "a token must be printable ASCII").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).expect("header"));
        }
        h
    }

    #[test]
    fn reading_follows_the_shutdown_rules() {
        let local: IpAddr = [127, 0, 0, 1].into();
        let remote: IpAddr = [10, 0, 0, 7].into();
        let open = Access::new(None);
        assert!(open.may_read(local, &headers(None)).is_ok());
        assert!(open.may_read(remote, &headers(None)).is_err());
        let locked = Access::new(Some(Secret::new("s3cret")));
        assert!(locked.may_read(local, &headers(None)).is_err());
        assert!(locked.may_read(remote, &headers(Some("Bearer wrong"))).is_err());
        assert!(locked.may_read(remote, &headers(Some("Bearer s3cret"))).is_ok());
        let mut cookie = HeaderMap::new();
        cookie.insert(header::COOKIE, HeaderValue::from_static("a=b; embq_console=s3cret"));
        assert!(locked.may_read(remote, &cookie).is_ok());
    }

    #[test]
    fn csrf_tokens_are_random_and_checked() {
        let a = Access::new(None);
        assert_ne!(a.csrf, Access::new(None).csrf);
        assert!(a.csrf_ok(&a.csrf.clone()));
        assert!(!a.csrf_ok(""));
    }
}
