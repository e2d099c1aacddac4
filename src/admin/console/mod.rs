//! The web console the admin port serves at `/`: one page whose HTML, script and
//! style sheet are compiled into the binary (no bundler, nothing from another
//! origin), its sign-in ([`session`]) and its live feed ([`events`]). The page
//! calls the ordinary `/api/*` endpoints to publish and disconnect.
//!
//! Every response here carries a Content-Security-Policy allowing this origin only
//! (so no inline script: the script is its own file), `X-Frame-Options: DENY` and
//! `Cache-Control: no-store`.

pub mod events;
pub mod session;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, REFERRER_POLICY, RETRY_AFTER,
    SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use shardcast_proto::ErrorCode;

pub use session::SessionStore;
use session::SignIn;

use super::api::{bearer_key_matches, error_reply, json_reply, key_matches, AdminBody, AdminContext};

const INDEX_HTML: &str = include_str!("index.html");
const CONSOLE_JS: &str = include_str!("console.js");
const CONSOLE_CSS: &str = include_str!("console.css");

/// The policy every console response carries: this origin only, no inline code,
/// never in a frame.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The longest sign-in body.
const MAX_LOGIN_BODY: usize = 4096;

/// Whether a path is the console's.
pub fn owns(path: &str) -> bool {
    path == "/" || path.starts_with("/console/")
}

/// Answers a console request.
pub async fn handle(ctx: Arc<AdminContext>, req: Request<Incoming>, peer: IpAddr) -> Response<AdminBody> {
    let cookie = req
        .headers()
        .get(COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = req.uri().path().to_owned();
    let mut resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/") => asset(INDEX_HTML, "text/html; charset=utf-8"),
        (&Method::GET, "/console/console.js") => asset(CONSOLE_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/console/console.css") => asset(CONSOLE_CSS, "text/css; charset=utf-8"),
        (&Method::GET, "/console/session") => whole(session_state(&ctx, cookie.as_deref())),
        (&Method::POST, "/console/login") => whole(login(&ctx, req, peer).await),
        (&Method::POST, "/console/logout") => whole(logout(&ctx, &req, cookie.as_deref())),
        (&Method::GET, "/console/events") => {
            let bearer = bearer_key_matches(&ctx, &req);
            events(ctx.clone(), cookie, bearer)
        }
        (
            _,
            "/"
            | "/console/console.js"
            | "/console/console.css"
            | "/console/session"
            | "/console/events"
            | "/console/login"
            | "/console/logout",
        ) => whole(error_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadRequest,
            "method not allowed",
        )),
        _ => whole(error_reply(
            StatusCode::NOT_FOUND,
            ErrorCode::BadRequest,
            "no such page",
        )),
    };
    let headers = resp.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The 403 for a signed-in browser's state-changing request without its token.
pub(in crate::admin) fn csrf_refusal() -> Response<Full<Bytes>> {
    error_reply(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        "missing or wrong CSRF token (X-CSRF-Token)",
    )
}

fn whole(resp: Response<Full<Bytes>>) -> Response<AdminBody> {
    resp.map(|body| body.boxed_unsync())
}

fn asset(text: &'static str, content_type: &'static str) -> Response<AdminBody> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn auth_required(ctx: &AdminContext) -> bool {
    !ctx.api_keys.is_empty()
}

/// `GET /console/session`: whether a key is needed, whether this browser is
/// signed in and, if so, its CSRF token (readable by this origin only).
fn session_state(ctx: &AdminContext, cookie: Option<&str>) -> Response<Full<Bytes>> {
    let grant = ctx.sessions.session(cookie);
    json_reply(
        StatusCode::OK,
        json!({
            "node": ctx.state.node_id,
            "auth_required": auth_required(ctx),
            "authenticated": !auth_required(ctx) || grant.is_some(),
            "csrf": grant.map(|g| g.csrf),
        }),
    )
}

/// `POST /console/login {"key"}`: a session cookie for a right key.
async fn login(ctx: &AdminContext, req: Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
    // A JSON content type cannot be sent cross-site without a CORS preflight,
    // which this port never grants: no other site can sign a browser in.
    let json_body = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return error_reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadRequest,
            "send {\"key\": ...} as application/json",
        );
    }
    #[derive(Deserialize)]
    struct Body {
        key: String,
    }
    let body = match Limited::new(req.into_body(), MAX_LOGIN_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error_reply(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, "body too large"),
    };
    let Ok(Body { key }) = serde_json::from_slice(&body) else {
        return error_reply(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "expected {\"key\": ...}",
        );
    };
    if !auth_required(ctx) {
        return json_reply(StatusCode::OK, json!({"ok": true, "auth_required": false}));
    }
    match ctx.sessions.sign_in(peer, || key_matches(ctx, &key)) {
        SignIn::Opened(id) => {
            let mut resp = json_reply(StatusCode::OK, json!({"ok": true}));
            if let Ok(value) = HeaderValue::from_str(&session::session_cookie(&id)) {
                resp.headers_mut().insert(SET_COOKIE, value);
            }
            resp
        }
        SignIn::WrongKey => error_reply(StatusCode::UNAUTHORIZED, ErrorCode::Forbidden, "wrong API key"),
        SignIn::RateLimited { retry_after } => {
            let mut resp = error_reply(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many wrong keys from this address; try again later",
            );
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after));
            resp
        }
    }
}

/// `POST /console/logout`: ends the session (CSRF token required, so another
/// site cannot sign an operator out).
fn logout(ctx: &AdminContext, req: &Request<Incoming>, cookie: Option<&str>) -> Response<Full<Bytes>> {
    if let Some(grant) = ctx.sessions.session(cookie) {
        if !session::csrf_matches(&grant, req.headers()) {
            return csrf_refusal();
        }
        ctx.sessions.sign_out(cookie);
    }
    let mut resp = json_reply(StatusCode::OK, json!({"ok": true}));
    if let Ok(value) = HeaderValue::from_str(&session::cleared_cookie()) {
        resp.headers_mut().insert(SET_COOKIE, value);
    }
    resp
}

/// `GET /console/events`: the live feed, for a signed-in browser, a script with the
/// Bearer key, or anyone when no key is configured; a session's feed ends with it.
fn events(ctx: Arc<AdminContext>, cookie: Option<String>, bearer: bool) -> Response<AdminBody> {
    let open = !auth_required(&ctx) || bearer;
    if !open && ctx.sessions.session(cookie.as_deref()).is_none() {
        return whole(error_reply(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden,
            "sign in first, or send the API key as a Bearer token",
        ));
    }
    let watched = ctx.clone();
    let still_allowed = move || open || watched.sessions.session(cookie.as_deref()).is_some();
    let mut resp = Response::new(events::stream(ctx, still_allowed).boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp
}
