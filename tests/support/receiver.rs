//! An HTTP receiver on loopback for notification tests: it records every
//! request (headers and body), answers as its [`Mode`] says (and the mode
//! can change while it runs), and verifies the webhook signature itself,
//! with its own HMAC, not runbox's code.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200.
    Ok,
    /// 500 for the next `n` requests, then 200.
    FailFirst(u32),
    /// 500 for about this share of requests (per mille), chosen by a seeded
    /// random draw, else 200.
    FailShare(u32),
    /// 200 after this many milliseconds (a receiver slow to take it).
    Slow(u64),
    /// Never answers (the client times out).
    Hang,
    /// Closes the connection without an answer.
    Close,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `Idempotency-Key`.
    pub key: Option<String>,
    /// `Runbox-Signature`.
    pub signature: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// What the receiver answered (0: none).
    pub answered: u16,
    /// When it arrived (ms since epoch).
    pub at_ms: u64,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

struct State {
    mode: Mode,
    rng: fastrand::Rng,
    received: Vec<Received>,
}

/// The receiver; it stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// A receiver on its own runtime (for tests that are not async).
    pub fn start(mode: Mode) -> Receiver {
        Self::start_at(mode, std::net::Ipv4Addr::LOCALHOST)
    }

    /// A receiver on its own runtime, listening on `ip` (in the network
    /// namespace of the calling thread).
    pub fn start_at(mode: Mode, ip: std::net::Ipv4Addr) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let mut r = runtime.block_on(async { Self::spawn_at(mode, ip).await });
        r._runtime = Some(runtime);
        r
    }

    /// A receiver on the current runtime.
    pub async fn spawn(mode: Mode) -> Receiver {
        Self::spawn_at(mode, std::net::Ipv4Addr::LOCALHOST).await
    }

    async fn spawn_at(mode: Mode, ip: std::net::Ipv4Addr) -> Receiver {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("a port on {ip}: {e}"));
        let addr = listener.local_addr().expect("an address");
        let state = Arc::new(Mutex::new(State {
            mode,
            rng: fastrand::Rng::with_seed(7),
            received: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move { serve(stream, state).await });
            }
        });
        Receiver {
            addr,
            state,
            task,
            _runtime: None,
        }
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers as `mode` from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits up to `timeout` until `pred` holds of the requests so far.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let got = self.received();
            if pred(&got) || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request (headers, then `Content-Length` bytes) and
/// answers it as the mode says; one request per connection.
async fn serve(mut stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length = header(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let lower = head.to_lowercase();
    let original = |name: &str| {
        header(&lower, name).map(|_| {
            head.lines()
                .find(|l| l.to_lowercase().starts_with(&format!("{name}:")))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        })
    };
    let mut received = Received {
        key: original("idempotency-key"),
        signature: original("runbox-signature"),
        body: buf[head_end..head_end + length].to_vec(),
        answered: 0,
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    let mode = {
        let mut s = state.lock().unwrap();
        let mode = s.mode;
        let answer = match mode {
            Mode::Ok | Mode::Slow(_) => 200,
            Mode::FailFirst(0) => 200,
            Mode::FailFirst(n) => {
                s.mode = Mode::FailFirst(n - 1);
                500
            }
            Mode::FailShare(per_mille) => {
                if s.rng.u32(0..1000) < per_mille {
                    500
                } else {
                    200
                }
            }
            Mode::Hang | Mode::Close => 0,
        };
        received.answered = answer;
        s.received.push(received.clone());
        mode
    };
    match mode {
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Mode::Close => {}
        _ => {
            if let Mode::Slow(ms) = mode {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let status = if received.answered == 200 {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            let reply =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(lower_head: &'a str, name: &str) -> Option<&'a str> {
    lower_head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// What a receiver does with `Runbox-Signature: t=…,v1=…`: HMAC-SHA256
/// with `secret` over `"{t}.{body}"`, compared in constant time; a
/// timestamp more than `tolerance_s` from now is refused.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    tolerance_s: u64,
) -> Result<(), String> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (t, v1) = t
        .zip(v1)
        .ok_or_else(|| format!("malformed signature header {header:?}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(t) > tolerance_s {
        return Err(format!("stale timestamp {t} (now {now})"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1)
        .map_err(|_| "the signature does not match".to_string())
}
