//! A fault-injecting TCP proxy for end-to-end tests: it sits between a
//! daemon and a relay (or two daemons) and can cut every connection,
//! refuse new ones (a partition), blackhole traffic (connections stay open,
//! nothing arrives until it lifts), delay it, or be pointed at a new target (a restarted
//! relay on another port). Reconnecting after a cut is how the tests
//! reorder: what was in flight is lost and the peers resynchronise.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Refuse new connections (existing ones are cut when entering it).
    Down,
    /// Accept and keep connections, deliver nothing until the mode changes
    /// (bytes are held, as TCP holds them on a dead route, not dropped).
    Blackhole,
    /// Forward every chunk after this delay.
    Delay(Duration),
}

struct Shared {
    mode: Mutex<Mode>,
    /// Every byte passed in either direction, up to [`RECORD_LIMIT`]: what
    /// a device on the path sees.
    recorded: Mutex<Vec<u8>>,
    target: Mutex<SocketAddr>,
    conns: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// Most bytes a proxy records ([`Proxy::recorded`]).
pub const RECORD_LIMIT: usize = 16 * 1024 * 1024;

/// A running proxy; stops (and cuts everything) when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            recorded: Mutex::new(Vec::new()),
            target: Mutex::new(target),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for incoming in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = incoming else { continue };
                if *s.mode.lock().unwrap() == Mode::Down {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let target = *s.target.lock().unwrap();
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut conns = s.conns.lock().unwrap();
                    conns.push(client.try_clone().expect("clone"));
                    conns.push(server.try_clone().expect("clone"));
                }
                pump(
                    s.clone(),
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                pump(s.clone(), server, client);
            }
        });
        Self { addr, shared }
    }

    /// `ws://` URL of the proxy.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `wss://` URL of the proxy (in front of a `--peer-listen`).
    pub fn wss_url(&self) -> String {
        format!("wss://{}", self.addr)
    }

    /// The bytes passed so far, both directions interleaved by chunk.
    pub fn recorded(&self) -> Vec<u8> {
        self.shared.recorded.lock().unwrap().clone()
    }

    pub fn set_mode(&self, mode: Mode) {
        if mode == Mode::Down {
            *self.shared.mode.lock().unwrap() = mode;
            self.cut();
        } else {
            *self.shared.mode.lock().unwrap() = mode;
        }
    }

    /// Closes every current connection (the peers will reconnect).
    pub fn cut(&self) {
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Forwards new connections to `target` (e.g. a restarted relay).
    pub fn retarget(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap() = target;
        self.cut();
    }
}

fn pump(shared: Arc<Shared>, mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // A blackhole stalls the stream like a dead route does: TCP
            // never drops bytes mid-stream, it holds them (and the peers'
            // idle timeout may give up first).
            let mode = loop {
                match *shared.mode.lock().unwrap() {
                    Mode::Blackhole => {}
                    other => break other,
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            match mode {
                Mode::Pass | Mode::Blackhole => {}
                Mode::Down => break,
                Mode::Delay(d) => std::thread::sleep(d),
            }
            {
                let mut recorded = shared.recorded.lock().unwrap();
                let room = RECORD_LIMIT.saturating_sub(recorded.len());
                recorded.extend_from_slice(&buf[..n.min(room)]);
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        *self.shared.mode.lock().unwrap() = Mode::Down;
        self.cut();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}
