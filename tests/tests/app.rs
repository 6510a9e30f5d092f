//! The field app as a browser meets it, over raw HTTP against the real
//! daemon: the page and its assets are served from the binary with a
//! strict content policy; a one-time sign-in code becomes an HttpOnly,
//! SameSite=Strict session cookie, once; the cookie reads and writes like
//! the token, but a write it carries must come from the daemon's own page;
//! sign-out ends it; `sitesync-daemon open` gives a new code.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sitesync_tests::{Daemon, binary};

/// An answer: status, head (status line and headers), JSON body or Null.
struct Answer {
    status: u16,
    head: String,
    body: Value,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// One request as a browser would send it: no token unless in `headers`.
fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, text) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_owned(),
        body: serde_json::from_str(text).unwrap_or(Value::Null),
        text: text.to_owned(),
    }
}

/// The code of a sign-in URL (`http://host/#login=<code>`).
fn code_of(url: &str) -> String {
    url.split("#login=")
        .nth(1)
        .expect("a #login= fragment")
        .to_owned()
}

#[test]
fn the_app_is_served_from_the_binary_with_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &[]);
    let page = send(d.addr, "GET", "/", &[], None);
    assert_eq!(page.status, 200, "{}", page.head);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.text.contains("/app/app.js"));
    let csp = page.header("content-security-policy").expect("a content policy");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    for (asset, kind) in [
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let a = send(d.addr, "GET", &format!("/app/{asset}"), &[], None);
        assert_eq!(a.status, 200, "{asset}");
        assert!(a.header("content-type").unwrap().starts_with(kind), "{asset}");
        assert!(!a.text.is_empty());
    }
    let missing = send(d.addr, "GET", "/app/../api-token", &[], None);
    assert_ne!(missing.status, 200);
    assert_eq!(send(d.addr, "GET", "/app/nope.js", &[], None).status, 404);
    // The page holds no data: the API still needs a credential.
    assert_eq!(send(d.addr, "GET", "/v1/projects", &[], None).status, 401);
}

#[test]
fn a_sign_in_code_opens_one_cookie_session_that_writes_only_from_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let d = Daemon::start(&data, &[]);
    let url = d.login_url.clone().expect("the daemon prints a sign-in URL");
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{}/#login=", d.addr.port())),
        "{url}"
    );
    assert!(!url.contains(&d.token), "the token is never printed");
    let own = format!("http://127.0.0.1:{}", d.addr.port());
    let code = format!(r#"{{"code":"{}"}}"#, code_of(&url));

    let signed = send(d.addr, "POST", "/v1/session", &[("Origin", &own)], Some(&code));
    assert_eq!(signed.status, 201, "{}", signed.text);
    let set = signed.header("set-cookie").expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!("sitesync_session_{}=", d.addr.port())),
        "{cookie}"
    );

    let again = send(d.addr, "POST", "/v1/session", &[("Origin", &own)], Some(&code));
    assert_eq!(
        (again.status, again.code()),
        (401, "login_code_used"),
        "{}",
        again.text
    );
    let forged = send(d.addr, "POST", "/v1/session", &[], Some(r#"{"code":"00"}"#));
    assert_eq!((forged.status, forged.code()), (401, "login_code_unknown"));
    // A malformed body gets the API's own error, naming what is wrong.
    let garbled = send(d.addr, "POST", "/v1/session", &[], Some(r#"{"cod":"00"}"#));
    assert_eq!(
        (garbled.status, garbled.code()),
        (400, "invalid_field"),
        "{}",
        garbled.text
    );

    // The cookie reads like the token...
    let list = send(d.addr, "GET", "/v1/projects", &[("Cookie", &cookie)], None);
    assert_eq!(list.status, 200, "{}", list.text);
    // ...and writes from the app's own page.
    let project = r#"{"name":"From the app"}"#;
    let made = send(
        d.addr,
        "POST",
        "/v1/projects",
        &[("Cookie", &cookie), ("Origin", &own)],
        Some(project),
    );
    assert_eq!(made.status, 201, "{}", made.text);
    // A write with no Origin, or another site's, is refused and changes nothing.
    let bare = send(
        d.addr,
        "POST",
        "/v1/projects",
        &[("Cookie", &cookie)],
        Some(project),
    );
    assert_eq!(
        (bare.status, bare.code()),
        (403, "forbidden_origin"),
        "{}",
        bare.text
    );
    let other = send(
        d.addr,
        "POST",
        "/v1/projects",
        &[("Cookie", &cookie), ("Origin", "http://127.0.0.1:1")],
        Some(project),
    );
    assert_eq!((other.status, other.code()), (403, "forbidden_origin"));
    let (_, projects) = d.call("GET", "/v1/projects", None);
    assert_eq!(projects["items"].as_array().unwrap().len(), 1, "{projects}");

    // Sign-out ends the session and clears the cookie.
    let out = send(
        d.addr,
        "DELETE",
        "/v1/session",
        &[("Cookie", &cookie), ("Origin", &own)],
        None,
    );
    assert_eq!(out.status, 204, "{}", out.text);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(
        send(d.addr, "GET", "/v1/projects", &[("Cookie", &cookie)], None).status,
        401
    );

    // `sitesync-daemon open` asks the running daemon for a new code.
    let out = Command::new(binary("sitesync-daemon"))
        .args(["open", "--no-browser", "--data-dir"])
        .arg(&data)
        .output()
        .expect("sitesync-daemon open");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fresh = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_ne!(code_of(&fresh), code_of(&url));
    let code = format!(r#"{{"code":"{}"}}"#, code_of(&fresh));
    assert_eq!(send(d.addr, "POST", "/v1/session", &[], Some(&code)).status, 201);
}

#[test]
fn open_without_a_running_daemon_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("sitesync-daemon"))
        .args(["open", "--no-browser", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("sitesync-daemon open");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("start `sitesync-daemon` first"), "{err}");
}
