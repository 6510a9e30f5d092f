//! A real browser for the field app's end-to-end tests: Debian's
//! `chromium`, headless, driven over the Chrome DevTools Protocol (CDP).
//!
//! CDP is JSON over one WebSocket: a command `{id, method, params,
//! sessionId}` gets an answer with the same id; everything else on the
//! socket is an event, skipped here. The few commands a test needs
//! (navigate, evaluate a script, type, size the window, take a screenshot)
//! are a page of code over `tungstenite`, already in the tree; a CDP client
//! crate generates bindings for the whole protocol and would double the
//! tests' build time on these two-core machines.
//!
//! Chromium listens on a port it picks (`--remote-debugging-port=0`) and
//! prints its address, so parallel tests never collide. Its profile is a
//! fresh temporary directory per browser: no cookies carry over.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Where the browser is expected (Debian's package `chromium`).
pub const CHROMIUM: &str = "chromium";

/// How long [`Browser::wait_for`] waits before failing the test.
pub const WAIT: Duration = Duration::from_secs(15);

/// One headless Chromium with one page.
pub struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    /// The page's CDP session.
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// Where a test saves its screenshots: `target/tmp/screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("target")
        .join("tmp")
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

impl Browser {
    /// Starts Chromium and opens a blank page. A machine without Chromium
    /// fails the test saying how to install it (CI installs it).
    pub fn start() -> Self {
        let profile = tempfile::tempdir().expect("profile directory");
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                // Without these, Chromium reaches for Google's hosts at
                // start, and this machine's closed network refuses them.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {CHROMIUM} ({e}): the browser tests need Debian's Chromium; \
                     install it with `apt-get install -y chromium` (.ci/run does)"
                )
            });
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("{CHROMIUM} did not print its DevTools address within 30 s");
            }
        };
        let (socket, _) = tungstenite::connect(url.as_str()).expect("connecting to Chromium's DevTools");
        let mut browser = Self {
            child,
            socket,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser.command("Target.createTarget", json!({"url": "about:blank"}), None);
        let target = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = browser.command(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
            None,
        );
        browser.session = attached["sessionId"].as_str().expect("sessionId").to_owned();
        browser.call("Page.enable", json!({}));
        browser
    }

    /// Sends one command (to the page's session, or the browser's) and
    /// returns its result; a CDP error fails the test.
    fn command(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        loop {
            let frame = self.socket.read().unwrap_or_else(|e| panic!("{method}: {e}"));
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(text.as_str()).expect("CDP sends JSON");
            if answer["id"] != json!(id) {
                continue; // an event
            }
            if let Some(e) = answer.get("error") {
                panic!("{method} failed: {e}");
            }
            return answer["result"].clone();
        }
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.command(method, params, Some(&session))
    }

    /// Opens `url` and waits until the page has loaded.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for("the page to load", "document.readyState === 'complete'");
    }

    /// Evaluates `script` in the page (awaiting a promise) and returns its
    /// value; a script that throws fails the test.
    pub fn eval(&mut self, script: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": script, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("script failed: {script}\n{e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `script` until it gives something truthy (not null, false,
    /// 0 or ""), and returns that; fails the test after [`WAIT`].
    pub fn wait_for(&mut self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.eval(script);
            let truthy = !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!(
                    "timed out waiting for {what}; the page shows:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The visible text of the page.
    pub fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Clicks the element `selector` finds (it must exist).
    pub fn click(&mut self, selector: &str) {
        let s = serde_json::to_string(selector).unwrap();
        self.wait_for(
            &format!("{selector} to be clickable"),
            &format!("(() => {{ const e = document.querySelector({s}); if (!e || e.disabled) return false; e.click(); return true; }})()"),
        );
    }

    /// Focuses `selector` and types `text` as a keyboard would.
    pub fn type_into(&mut self, selector: &str, text: &str) {
        let s = serde_json::to_string(selector).unwrap();
        self.wait_for(
            &format!("{selector} to take input"),
            &format!("(() => {{ const e = document.querySelector({s}); if (!e) return false; e.focus(); return true; }})()"),
        );
        self.call("Input.insertText", json!({"text": text}));
    }

    /// Presses Enter in the focused element (what a barcode scanner ends with).
    pub fn press_enter(&mut self) {
        self.press("Enter", 13, "\r");
    }

    /// Presses Tab: focus moves to the next control, as from a keyboard.
    pub fn press_tab(&mut self) {
        self.press("Tab", 9, "");
    }

    /// A key pressed and released, as the keyboard sends it.
    fn press(&mut self, key: &str, code: u32, text: &str) {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code, "text": if kind == "keyDown" { text } else { "" }}),
            );
        }
    }

    /// Chooses `file` in the file input `selector`, as a person picking it
    /// in the file dialog would (the page sees a real `File`).
    pub fn upload(&mut self, selector: &str, file: &std::path::Path) {
        let s = serde_json::to_string(selector).unwrap();
        self.wait_for(
            &format!("{selector} to exist"),
            &format!("document.querySelector({s}) !== null"),
        );
        let found = self.call(
            "Runtime.evaluate",
            json!({"expression": format!("document.querySelector({s})")}),
        );
        let object = found["result"]["objectId"]
            .as_str()
            .expect("the input's object id")
            .to_owned();
        self.call(
            "DOM.setFileInputFiles",
            json!({"files": [file.to_str().expect("a UTF-8 path")], "objectId": object}),
        );
    }

    /// Saves what the page downloads into `dir`.
    pub fn downloads_to(&mut self, dir: &std::path::Path) {
        self.command(
            "Browser.setDownloadBehavior",
            json!({"behavior": "allow", "downloadPath": dir.to_str().expect("a UTF-8 path")}),
            None,
        );
    }

    /// What keeps the screen shown from being usable by touch or by a
    /// screen reader: every visible control (link, button, field, select,
    /// summary) needs an accessible name and a target at least 48×48 px
    /// (a checkbox's target is its label; a link inside running text is
    /// exempt); every image needs `alt`. Empty when none.
    pub fn audit(&mut self) -> Vec<String> {
        let found = self.eval(include_str!("audit.js"));
        found
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_else(|| vec![format!("the audit failed: {found}")])
    }

    /// Sizes the page as a phone (`mobile`) or a laptop screen.
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    /// Saves the page as `<screenshot_dir>/<name>.png` (the whole page,
    /// not only what fits the window); returns its path.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png data"))
            .expect("CDP sends base64");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.socket.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
