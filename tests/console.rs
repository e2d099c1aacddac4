//! The web console's HTTP surface on the admin port (src/admin/console/): the
//! page and its assets come with a Content-Security-Policy allowing this origin
//! only, `X-Frame-Options: DENY` and `no-store`; a right API key opens a session
//! whose cookie is HttpOnly, SameSite=Strict, expiring and random (never the key);
//! a signed-in browser's state-changing calls need the session's CSRF token,
//! while scripts' Bearer calls work as before; wrong keys are counted in
//! `shardcast_console_logins_total` and, past five a minute from one address,
//! refused before they are even checked, while other addresses still sign in.
//! The page weight the README states is checked against what is served.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use shardcast_testkit::http_head::{find_head_end, header_value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const KEY: &str = "console-test-key";

/// An answer: status, head (status line and headers) and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.head, name)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request on its own connection, from `from` when given; reads the whole
/// answer (or, for an event stream, up to its first event).
async fn request(
    admin: SocketAddr,
    from: Option<IpAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = match from {
        None => TcpStream::connect(admin).await.expect("connect admin"),
        Some(ip) => {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.bind(SocketAddr::new(ip, 0)).expect("bind source address");
            socket.connect(admin).await.expect("connect admin")
        }
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.expect("read answer");
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw);
            let event_seen = text.contains("text/event-stream") && text.contains("data: {") && text.contains("}\n\n");
            if n == 0 || event_seen {
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("answer in time");
    let end = find_head_end(&raw).expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = String::from_utf8_lossy(&raw[end..]).into_owned();
    if header_value(&head, "transfer-encoding") == Some("chunked") {
        body = dechunk(&body);
    }
    Answer { status, head, body }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            out.push_str(&after[..n.min(after.len())]);
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(gw.admin, None, "GET", path, headers, "").await
}

async fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    request(gw.admin, None, "POST", path, &all, body).await
}

fn login_body(key: &str) -> String {
    serde_json::json!({ "key": key }).to_string()
}

/// Signs in with the right key; returns the `Cookie` header value and the CSRF token.
async fn sign_in(gw: &Gateway) -> (String, String) {
    let answer = post(gw, "/console/login", &[], &login_body(KEY)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let set_cookie = answer.header("set-cookie").expect("a session cookie");
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    let session = get(gw, "/console/session", &[("Cookie", &cookie)]).await.json();
    assert_eq!(session["authenticated"], true, "{session}");
    let csrf = session["csrf"].as_str().expect("a CSRF token").to_owned();
    (cookie, csrf)
}

fn assert_console_headers(answer: &Answer, what: &str) {
    let csp = answer
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP"));
    assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}: {csp}"
    );
    assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{what}");
    assert_eq!(answer.header("cache-control"), Some("no-store"), "{what}");
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"), "{what}");
}

#[tokio::test]
async fn the_page_and_its_assets_come_from_this_origin_with_the_security_headers() {
    let gw = Gateway::start(&[]);
    let page = get(&gw, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert_console_headers(&page, "GET /");
    // Nothing from another origin and no inline script: every script names a file here.
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("//cdn") && !page.body.contains("src=\"//"),
        "{}",
        page.body
    );
    let scripts: Vec<&str> = page.body.split("<script").skip(1).collect();
    assert!(!scripts.is_empty());
    for script in scripts {
        assert!(
            script.trim_start().starts_with("src=\"/console/"),
            "inline script: <script{script}"
        );
    }
    for (path, content_type) in [
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
    ] {
        let asset = get(&gw, path, &[]).await;
        assert_eq!(asset.status, 200, "{path}");
        assert_eq!(asset.header("content-type"), Some(content_type), "{path}");
        assert_console_headers(&asset, path);
        // The SVG namespace is a name, not an address anything is fetched from.
        let addresses = asset.body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !addresses.contains("http://") && !addresses.contains("https://"),
            "{path} names another origin"
        );
    }
    // Without a key nobody needs to sign in, and the feed is open.
    let session = get(&gw, "/console/session", &[]).await.json();
    assert_eq!(session["auth_required"], false);
    assert_eq!(session["authenticated"], true);
    let feed = get(&gw, "/console/events", &[]).await;
    assert_eq!(feed.status, 200);
    assert_eq!(feed.header("content-type"), Some("text/event-stream"));
    assert_console_headers(&feed, "GET /console/events");
    let event = feed.body.split("data: ").nth(1).expect("an event").trim();
    let snapshot: serde_json::Value = serde_json::from_str(event).expect("a JSON snapshot");
    assert_eq!(snapshot["stats"]["node"], snapshot["cluster"]["instances"][0]["node"]);
    assert!(snapshot["fd"]["limit"].as_u64().unwrap_or(0) > 0, "{snapshot}");
    assert_eq!(get(&gw, "/console/nothing", &[]).await.status, 404);
    assert_eq!(request(gw.admin, None, "DELETE", "/", &[], "").await.status, 405);
    assert_eq!(get(&gw, "/console/login", &[]).await.status, 405);
}

#[tokio::test]
async fn the_readme_states_the_page_weight() {
    let gw = Gateway::start(&[]);
    let mut served = 0;
    for path in ["/", "/console/console.js", "/console/console.css"] {
        served += get(&gw, path, &[]).await.body.len();
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let stated: f64 = readme
        .split("The console page weighs ")
        .nth(1)
        .and_then(|rest| rest.split(" KB").next())
        .and_then(|n| n.parse().ok())
        .expect("README: \"The console page weighs N KB\"");
    let off = (stated * 1000.0 - served as f64).abs();
    assert!(
        off <= 1000.0,
        "README says {stated} KB, the page is {:.1} KB: update README.md",
        served as f64 / 1000.0
    );
}

#[tokio::test]
async fn a_right_key_opens_a_strict_expiring_random_session_cookie() {
    let gw = Gateway::start(&["--api-key", KEY]);
    let session = get(&gw, "/console/session", &[]).await.json();
    assert_eq!(session["auth_required"], true);
    assert_eq!(session["authenticated"], false);
    assert_eq!(session["csrf"], serde_json::Value::Null);
    assert_eq!(get(&gw, "/console/events", &[]).await.status, 401);
    // The page itself is public: it holds no figure, only the sign-in form.
    assert_eq!(get(&gw, "/", &[]).await.status, 200);

    let answer = post(&gw, "/console/login", &[], &login_body(KEY)).await;
    assert_eq!(answer.status, 200);
    assert_console_headers(&answer, "POST /console/login");
    let set_cookie = answer.header("set-cookie").expect("a session cookie");
    let attributes: Vec<&str> = set_cookie.split(';').map(str::trim).collect();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"] {
        assert!(attributes.contains(&flag), "{flag} missing: {set_cookie}");
    }
    let id = attributes[0]
        .strip_prefix("shardcast_console=")
        .expect("the session cookie");
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert!(!set_cookie.contains(KEY) && !answer.body.contains(KEY));
    let (cookie, csrf) = sign_in(&gw).await;
    assert_ne!(cookie, attributes[0], "two sign-ins, one id");
    assert_eq!(csrf.len(), 64);

    let feed = get(&gw, "/console/events", &[("Cookie", &cookie)]).await;
    assert_eq!(feed.status, 200);
    assert!(feed.body.contains("\"total_connections\""), "{}", feed.body);
    // Scripts may follow the feed with the Bearer key.
    let bearer = format!("Bearer {KEY}");
    let scripted = get(&gw, "/console/events", &[("Authorization", &bearer)]).await;
    assert_eq!(scripted.status, 200);
    assert!(scripted.body.contains("\"total_connections\""), "{}", scripted.body);
    let wrong = get(&gw, "/console/events", &[("Authorization", "Bearer wrong")]).await;
    assert_eq!(wrong.status, 401);
    let stats = get(&gw, "/api/stats", &[("Cookie", &cookie)]).await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.header("cache-control"), Some("no-store"));
    // A made-up session is no session.
    let forged = format!("shardcast_console={}", "0".repeat(64));
    assert_eq!(get(&gw, "/api/stats", &[("Cookie", &forged)]).await.status, 401);
}

#[tokio::test]
async fn a_sessions_state_changing_calls_need_its_csrf_token_and_bearer_calls_do_not() {
    let gw = Gateway::start(&["--api-key", KEY]);
    let (cookie, csrf) = sign_in(&gw).await;
    let publish = r#"{"channel": "news", "data": {"n": 1}}"#;
    let refused_before = gw.metric("shardcast_client_errors_total{code=\"forbidden\"}").await;
    for (path, body) in [("/api/publish", publish), ("/api/disconnect", r#"{"user": "u1"}"#)] {
        let bare = post(&gw, path, &[("Cookie", &cookie)], body).await;
        assert_eq!(bare.status, 403, "{path} without a token: {}", bare.body);
        assert!(bare.body.contains("CSRF"), "{}", bare.body);
        let wrong = post(
            &gw,
            path,
            &[("Cookie", &cookie), ("X-CSRF-Token", &"f".repeat(64))],
            body,
        )
        .await;
        assert_eq!(wrong.status, 403, "{path} with a wrong token");
        let right = post(&gw, path, &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], body).await;
        assert_eq!(right.status, 200, "{path}: {}", right.body);
    }
    assert_eq!(
        gw.metric("shardcast_client_errors_total{code=\"forbidden\"}").await,
        refused_before + 4.0
    );
    // Another session's token is not this one's.
    let (_, other_csrf) = sign_in(&gw).await;
    let crossed = post(
        &gw,
        "/api/publish",
        &[("Cookie", &cookie), ("X-CSRF-Token", &other_csrf)],
        publish,
    )
    .await;
    assert_eq!(crossed.status, 403);

    // Scripts: the Bearer key alone, as before; nothing at all is a 401.
    let bearer = format!("Bearer {KEY}");
    let scripted = post(&gw, "/api/publish", &[("Authorization", &bearer)], publish).await;
    assert_eq!(scripted.status, 200, "{}", scripted.body);
    let anonymous = post(&gw, "/api/publish", &[], publish).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));

    // Signing out needs the token too, and ends the session.
    assert_eq!(
        post(&gw, "/console/logout", &[("Cookie", &cookie)], "{}").await.status,
        403
    );
    let out = post(
        &gw,
        "/console/logout",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        "{}",
    )
    .await;
    assert_eq!(out.status, 200);
    assert!(out.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(get(&gw, "/api/stats", &[("Cookie", &cookie)]).await.status, 401);
    assert_eq!(get(&gw, "/console/events", &[("Cookie", &cookie)]).await.status, 401);
}

#[tokio::test]
async fn wrong_keys_are_counted_and_limited_per_source_address() {
    let gw = Gateway::start(&["--api-key", KEY]);
    let bad: IpAddr = [127, 0, 0, 1].into();
    // Not JSON: refused before the key is looked at (a cross-site form cannot sign in).
    let form = request(
        gw.admin,
        Some(bad),
        "POST",
        "/console/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("key={KEY}"),
    )
    .await;
    assert_eq!(form.status, 415);
    let json = [("Content-Type", "application/json")];
    for attempt in 1..=5 {
        let wrong = request(
            gw.admin,
            Some(bad),
            "POST",
            "/console/login",
            &json,
            &login_body("wrong"),
        )
        .await;
        assert_eq!(wrong.status, 401, "attempt {attempt}: {}", wrong.body);
        assert!(wrong.header("set-cookie").is_none());
    }
    // Now even the right key is refused from there, with the wait in Retry-After.
    let limited = request(gw.admin, Some(bad), "POST", "/console/login", &json, &login_body(KEY)).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    let retry: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(limited.header("set-cookie").is_none());
    assert_eq!(
        gw.metric("shardcast_console_logins_total{result=\"wrong_key\"}").await,
        5.0
    );
    assert_eq!(
        gw.metric("shardcast_console_logins_total{result=\"rate_limited\"}")
            .await,
        1.0
    );
    // Another address is not held back by this one's failures.
    let other = request(
        gw.admin,
        Some([127, 0, 0, 2].into()),
        "POST",
        "/console/login",
        &json,
        &login_body(KEY),
    )
    .await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(gw.metric("shardcast_console_logins_total{result=\"ok\"}").await, 1.0);
    // The Bearer API is not rate limited by console sign-ins: scripts keep working.
    let bearer = format!("Bearer {KEY}");
    let stats = request(
        gw.admin,
        Some(bad),
        "GET",
        "/api/stats",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(stats.status, 200);
}

/// `GET /api/channel`: a channel's subscribers here, and with `cluster=1` on every
/// instance of the cluster view, each asked on its advertised admin address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_subscribers_are_counted_on_every_instance() {
    let redis = RedisServer::start();
    let url = redis.url();
    let gws = ready_gateways(
        2,
        &[
            "--redis",
            url.as_str(),
            "--api-key",
            "k3y",
            "--heartbeat-interval",
            "200ms",
        ],
    )
    .await;
    let (a, b) = (gws[0].as_ref().expect("a"), gws[1].as_ref().expect("b"));
    let mut subs = Vec::new();
    for (gw, n) in [(a, 1), (b, 2)] {
        for _ in 0..n {
            let mut c = gw.connect(shardcast_proto::Encoding::Json).await;
            c.subscribe(1, "rooms:lobby").await;
            subs.push(c);
        }
    }
    let auth = [("authorization", "Bearer k3y")];
    let (status, body) = http(a.admin, "GET", "/api/channel?name=rooms:lobby", None, &auth).await;
    assert_eq!(status, 200, "{body}");
    let here: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(here["subscribers"], 1);
    let start = std::time::Instant::now();
    loop {
        let (_, body) = http(a.admin, "GET", "/api/channel?name=rooms:lobby&cluster=1", None, &auth).await;
        let all: serde_json::Value = serde_json::from_str(&body).expect("json");
        if all["total"] == 3 {
            let per: Vec<u64> = all["instances"]
                .as_array()
                .expect("instances")
                .iter()
                .filter_map(|i| i["subscribers"].as_u64())
                .collect();
            assert_eq!(per.len(), 2, "{all}");
            break;
        }
        assert!(start.elapsed() < WAIT, "never counted 3: {all}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        http(a.admin, "GET", "/api/channel?name=rooms:lobby", None, &[]).await.0,
        401
    );
    assert_eq!(http(a.admin, "GET", "/api/channel?name=", None, &auth).await.0, 400);
}
