//! End-to-end test helpers: start the real `sitesync-daemon` binary as a
//! user would (its own data directory, port 0, the token from its file),
//! talk to it over HTTP, and kill it — gracefully or with SIGKILL. Every
//! process started is killed when its guard drops, even when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub mod browser;
pub mod proxy;

/// The path of a workspace binary, freshly built.
///
/// A dev-dependency only builds a package's library, and Cargo gives
/// `CARGO_BIN_EXE_*` only to the binary's own package, so the first call in
/// each test process runs `cargo build` for the binaries (a no-op when they
/// are up to date) in the profile the tests were built with.
///
/// A program that is not a test (the benchmark) lives beside the binaries:
/// it uses them as they are, and says how to build them when they are
/// missing.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let exe = std::env::current_exe().expect("current exe");
    let own_dir = exe.parent().expect("exe dir");
    if own_dir.file_name().is_none_or(|d| d != "deps") {
        let path = own_dir.join(name);
        assert!(
            path.exists(),
            "{} is missing: build the binaries first (cargo build --release --locked --workspace --bins)",
            path.display()
        );
        return path;
    }
    // Test executables live in target/<profile>/deps; binaries one level up.
    let dir = own_dir.parent().expect("target dir").to_owned();
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // Exactly the command .ci/run pre-builds with: the same feature set,
        // so in CI this is a no-op rather than a rebuild of dependencies.
        cmd.args(["build", "--locked", "--workspace", "--bins"]);
        // Cargo runs tests with variables describing the test's own package
        // (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...). Build scripts such as
        // ring's rerun when those change, so passing them on would rebuild
        // half the dependency tree here, and again at the next `cargo test`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let per_package = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"]
                .iter()
                .any(|p| name.starts_with(p))
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&name.as_ref());
            if per_package {
                cmd.env_remove(name.as_ref());
            }
        }
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    dir.join(name)
}

/// A running daemon. Killed (SIGKILL) when dropped. Derefs to its
/// [`Client`].
pub struct Daemon {
    child: Option<Child>,
    pub data_dir: PathBuf,
    client: Client,
    /// `wss://` address of its `--peer-listen`, when given.
    pub peer_url: Option<String>,
    /// The one-time sign-in URL it printed at start.
    pub login_url: Option<String>,
}

impl std::ops::Deref for Daemon {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Talks to one daemon over HTTP with its token; cheap to clone into threads.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub token: String,
    agent: ureq::Agent,
}

impl Daemon {
    /// Starts a daemon on `data_dir` listening on a free loopback port.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("log file");
        let mut child = Command::new(binary("sitesync-daemon"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--user", "tester"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting sitesync-daemon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let (login_tx, login_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(url) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
                if let Some(url) = line.split("open the app: ").nth(1) {
                    let _ = login_tx.send(url.trim().to_owned());
                }
                if let Some(url) = line.split("LAN peers: ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let wait = |rx: &mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(30));
        let wants_peer_url = extra.contains(&"--peer-listen");
        let addr = match wait(&rx) {
            Ok(a) => a.parse().expect("address"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "daemon did not report its address; see {}",
                    data_dir.with_extension("log").display()
                );
            }
        };
        let peer_url = wants_peer_url.then(|| wait(&rx).expect("the daemon reports its LAN peer address"));
        let login_url = login_rx.recv_timeout(Duration::from_secs(10)).ok();
        let token = std::fs::read_to_string(data_dir.join("api-token")).expect("token file");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Self {
            child: Some(child),
            data_dir: data_dir.to_owned(),
            peer_url,
            login_url,
            client: Client {
                addr,
                token: token.trim().to_owned(),
                agent,
            },
        }
    }

    /// The socket address of its `--peer-listen` (from its `wss://` URL).
    pub fn lan_addr(&self) -> Option<SocketAddr> {
        let url = self.peer_url.as_deref()?;
        url.strip_prefix("wss://")?.parse().ok()
    }

    /// The process id (for resident-memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A handle for other threads.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .expect("kill -TERM");
        c.wait().expect("wait")
    }
}

impl Client {
    /// The same client with another per-request time limit (the default is
    /// 30 s; a benchmark's first query on a large project can take longer).
    pub fn patient(&self, limit: Duration) -> Client {
        Client {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(limit))
                .build()
                .into(),
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a request with the token; returns status and JSON body (Null
    /// when empty).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call_with(method, path, body.map(|b| b.to_string().into_bytes()), &[])
    }

    /// Like [`call`](Self::call) with a raw body and extra headers.
    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        self.try_call(method, path, body, headers)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Like [`call_with`](Self::call_with), but a failed connection is an
    /// `Err` (the daemon may have been killed mid-request).
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value), String> {
        let url = self.url(path);
        let auth = format!("Bearer {}", self.token);
        let mut has_auth = false;
        macro_rules! with_headers {
            ($req:expr) => {{
                let mut r = $req;
                for (k, v) in headers {
                    if k.eq_ignore_ascii_case("authorization") {
                        has_auth = true;
                    }
                    r = r.header(*k, *v);
                }
                if !has_auth {
                    r = r.header("Authorization", &auth);
                }
                r
            }};
        }
        let result = match (method, body) {
            ("GET", _) => with_headers!(self.agent.get(&url)).call(),
            ("DELETE", _) => with_headers!(self.agent.delete(&url)).call(),
            (m, body) => {
                let body = body.unwrap_or_default();
                let req = match m {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    "PATCH" => self.agent.patch(&url),
                    other => panic!("method {other}"),
                };
                let typed = headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
                let req = if typed {
                    req
                } else {
                    req.header("Content-Type", "application/json")
                };
                with_headers!(req).send(&body[..])
            }
        };
        let mut resp = result.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        // A finished import's job lists every row: ~30 MB at 500,000 rows,
        // past ureq's default limit of 10 MB.
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, json))
    }

    /// Sends raw HTTP/1.1 bytes (for headers a client library will not
    /// forge, like a foreign Host) and returns the status code.
    pub fn raw_status(&self, request: &str) -> u16 {
        self.raw_head(request)
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// Sends raw HTTP/1.1 bytes and returns the answer's status line and
    /// headers, as text (for headers the other helpers do not show).
    pub fn raw_head(&self, request: &str) -> String {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(request.as_bytes()).expect("write");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&head);
        text.split("\r\n\r\n").next().unwrap_or("").to_owned()
    }

    /// GETs raw bytes (a download): status, Content-Type, body.
    pub fn download(&self, path: &str) -> (u16, String, Vec<u8>) {
        let mut resp = self
            .agent
            .get(&self.url(path))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (status, ct, body)
    }

    /// POSTs a file with its Content-Type (an import).
    pub fn upload(&self, path: &str, body: &[u8], content_type: &str) -> (u16, Value) {
        self.call_with(
            "POST",
            path,
            Some(body.to_vec()),
            &[("Content-Type", content_type)],
        )
    }

    /// Polls a job until it is completed, failed or interrupted.
    pub fn wait_job(&self, id: &str) -> Value {
        eventually("the job to finish", Duration::from_secs(120), || {
            let job = ok(self.call("GET", &format!("/v1/jobs/{id}"), None), "job");
            matches!(
                job["state"].as_str(),
                Some("completed" | "failed" | "interrupted")
            )
            .then_some(job)
        })
    }

    /// Opens the event stream and returns the first `n` events as
    /// (id, type, data), waiting at most `timeout`.
    pub fn events(
        &self,
        query: &str,
        last_event_id: Option<&str>,
        n: usize,
        timeout: Duration,
    ) -> Vec<(Option<String>, String, Value)> {
        self.events_until(query, last_event_id, timeout, |seen| seen.len() >= n)
    }

    /// Opens the event stream and collects events as (id, type, data) until
    /// `done(collected)` holds, the stream ends, or no event comes for
    /// `timeout`.
    pub fn events_until(
        &self,
        query: &str,
        last_event_id: Option<&str>,
        timeout: Duration,
        done: impl Fn(&[(Option<String>, String, Value)]) -> bool,
    ) -> Vec<(Option<String>, String, Value)> {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(timeout)).ok();
        let last = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET /v1/events{query} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n{last}\r\n",
            self.addr, self.token
        )
        .expect("write");
        let mut reader = BufReader::new(s);
        let mut out = Vec::new();
        let (mut id, mut kind, mut data) = (None, String::new(), String::new());
        let mut line = String::new();
        while !done(&out) {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // Chunked framing lines (hex sizes) carry no "field:" and are skipped.
            let l = line.trim_end();
            if let Some(v) = l.strip_prefix("id:") {
                id = Some(v.trim().to_owned());
            } else if let Some(v) = l.strip_prefix("event:") {
                kind = v.trim().to_owned();
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push_str(v.trim());
            } else if l.is_empty() && !kind.is_empty() {
                let value = serde_json::from_str(&data).unwrap_or(Value::String(data.clone()));
                out.push((id.take(), std::mem::take(&mut kind), value));
                data.clear();
            }
        }
        out
    }
}

/// A running `sitesync-relay serve`. Killed (SIGKILL) when dropped.
pub struct Relay {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
}

/// Runs a `sitesync-relay` subcommand to completion; returns stdout.
pub fn relay_cmd(args: &[&str]) -> String {
    let out = Command::new(binary("sitesync-relay"))
        .args(args)
        .output()
        .expect("running sitesync-relay");
    assert!(
        out.status.success(),
        "sitesync-relay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

impl Relay {
    /// Creates an organisation in the relay data directory `dir`.
    pub fn create_org(dir: &Path, org: &str) {
        relay_cmd(&["org", "create", org, "--data-dir", dir.to_str().unwrap()]);
    }

    /// Issues a token (the last line of `token create`).
    pub fn token(dir: &Path, org: &str, projects: &[&str]) -> String {
        Self::issue(dir, org, projects).1
    }

    /// Issues a token; returns its id (from the first line) and the token.
    pub fn issue(dir: &Path, org: &str, projects: &[&str]) -> (String, String) {
        let mut args = vec![
            "token",
            "create",
            "--org",
            org,
            "--data-dir",
            dir.to_str().unwrap(),
        ];
        for p in projects {
            args.extend(["--project", p]);
        }
        let out = relay_cmd(&args);
        let id = out
            .split_whitespace()
            .nth(1)
            .expect("`token <id> for organization ...`")
            .to_owned();
        (id, out.lines().last().expect("a token line").trim().to_owned())
    }

    /// GET on the relay's HTTP side (`/healthz`, `/metrics`): status and body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut resp = agent
            .get(format!("http://{}{path}", self.addr))
            .call()
            .expect("relay HTTP");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    }

    /// Serves on a free loopback port with a short ping interval.
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, "127.0.0.1:0")
    }

    pub fn start_on(dir: &Path, listen: &str) -> Self {
        Self::start_with(dir, listen, &[])
    }

    /// Serves on a free loopback port pinging every `ping_ms` (the relay
    /// drops a device silent for six pings): the benchmark uses the
    /// production default, since a daemon busy with a large project must
    /// not look dead.
    pub fn start_paced(dir: &Path, ping_ms: u64) -> Self {
        Self::start_with(dir, "127.0.0.1:0", &["--ping-interval-ms", &ping_ms.to_string()])
    }

    /// Serves wss:// with the test certificate in `tests/fixtures/tls`
    /// (`localhost`, signed by `ca.pem`).
    pub fn start_tls(dir: &Path) -> Self {
        let cert = fixture("tls/relay.pem");
        let key = fixture("tls/relay.key");
        Self::start_with(
            dir,
            "127.0.0.1:0",
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
        )
    }

    pub fn start_with(dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .expect("log file");
        let mut child = Command::new(binary("sitesync-relay"))
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            .args(if extra.contains(&"--ping-interval-ms") {
                &[][..]
            } else {
                &["--ping-interval-ms", "200"][..]
            })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting sitesync-relay");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.split("listening on ws://").nth(1) {
                    let _ = tx.send(a.trim().to_owned());
                }
                if let Some(a) = line.split("listening on wss://").nth(1) {
                    let _ = tx.send(a.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("relay did not start; see {}", dir.with_extension("log").display()))
            .parse()
            .expect("address");
        Self {
            child: Some(child),
            data_dir: dir.to_owned(),
            addr,
        }
    }

    /// The process id (for resident-memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A file under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// Sync flags for a daemon: its token, short ping and reconnect intervals.
pub fn sync_args(token: &str) -> Vec<String> {
    vec![
        "--token".into(),
        token.into(),
        "--sync-ping-ms".into(),
        "200".into(),
        "--reconnect-min-ms".into(),
        "100".into(),
    ]
}

/// A syncing daemon on `dir` with `token` and short sync intervals
/// ([`sync_args`]), plus `extra` flags.
pub fn start_syncing(dir: &Path, token: &str, extra: &[&str]) -> Daemon {
    let mut args = sync_args(token);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(dir, &args)
}

/// A daemon named `name` under `root` with a new all-projects token of
/// organisation `acme` in the relay data directory `rdir`.
pub fn device(root: &Path, rdir: &Path, name: &str, extra: &[&str]) -> Daemon {
    start_syncing(&root.join(name), &Relay::token(rdir, "acme", &[]), extra)
}

/// Milestone `key` of a component as the API returns it; a component
/// without it fails the test.
pub fn milestone(c: &Value, key: &str) -> Value {
    c["milestones"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["key"] == key))
        .cloned()
        .unwrap_or_else(|| panic!("no milestone {key:?} in {c}"))
}

/// A relay data directory under `root` with the organisation `acme`.
pub fn acme_relay_dir(root: &Path) -> PathBuf {
    let dir = root.join("relay");
    Relay::create_org(&dir, "acme");
    dir
}

/// A GET's body when it answered 200.
pub fn get_ok(d: &Daemon, path: &str) -> Option<Value> {
    match d.call("GET", path, None) {
        (200, v) => Some(v),
        _ => None,
    }
}

/// The RNG of a randomized test: seeded from `SITESYNC_RANDOM_SEED` when
/// set, else at random; the seed is printed, so a failure can be replayed.
pub fn seeded_rng() -> (u64, rand::rngs::StdRng) {
    use rand::SeedableRng as _;
    let seed: u64 = std::env::var("SITESYNC_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("SITESYNC_RANDOM_SEED={seed}");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The body of a 2xx answer; panics naming the step otherwise.
pub fn ok((status, body): (u16, Value), what: &str) -> Value {
    assert!((200..300).contains(&status), "{what}: {status} {body}");
    body
}

/// A project with one template of each workflow type, a drawing and a
/// quantity component; returns their ids.
pub struct Seeded {
    pub project: String,
    pub drawing: String,
    pub discrete: String,
    pub percentage: String,
    pub quantity: String,
    pub pipe: String,
    pub spool: String,
}

impl Seeded {
    /// Completes the spool's `erect` milestone (40% of its credit).
    pub fn erect_spool(&self, d: &Daemon) {
        let path = format!(
            "/v1/projects/{}/components/{}/milestones/erect",
            self.project, self.spool
        );
        let (status, body) = d.call("PUT", &path, Some(&serde_json::json!({"completed": true})));
        assert_eq!(status, 200, "{body}");
    }
}

pub fn seed(d: &Daemon) -> Seeded {
    let project = ok(
        d.call(
            "POST",
            "/v1/projects",
            Some(&serde_json::json!({"name": "Plant", "code": "P1"})),
        ),
        "project",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let template = |name: &str, wf: &str, ms: Value| -> String {
        let body = serde_json::json!({"name": name, "workflow_type": wf, "milestones": ms});
        ok(
            d.call("POST", &format!("/v1/projects/{project}/templates"), Some(&body)),
            name,
        )["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let discrete = template(
        "Spool",
        "discrete",
        serde_json::json!([{"key": "erect", "name": "Erect", "weight": 40}, {"key": "weld", "name": "Weld", "weight": 60}]),
    );
    let percentage = template(
        "Coating",
        "percentage",
        serde_json::json!([{"key": "paint", "name": "Paint", "weight": 1}]),
    );
    let quantity = template(
        "Pipe",
        "quantity",
        serde_json::json!([{"key": "install", "name": "Install", "weight": 1}]),
    );
    let drawing = ok(
        d.call(
            "POST",
            &format!("/v1/projects/{project}/drawings"),
            Some(&serde_json::json!({"number": "ISO-1", "area": "A1"})),
        ),
        "drawing",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let comps = format!("/v1/projects/{project}/drawings/{drawing}/components");
    let pipe = ok(
        d.call(
            "POST",
            &comps,
            Some(&serde_json::json!({"tag": "PIPE-1", "kind": "pipe", "template_id": quantity, "quantity_total": 100000, "unit": "m"})),
        ),
        "pipe",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let spool = ok(
        d.call("POST", &comps, Some(&serde_json::json!({"tag": "SP-1", "kind": "spool", "template_id": discrete, "budget_hours": 10}))),
        "spool",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    Seeded {
        project,
        drawing,
        discrete,
        percentage,
        quantity,
        pipe,
        spool,
    }
}
