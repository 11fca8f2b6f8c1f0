//! A fault-injecting HTTP/1.1 proxy, put between one test's worker and a test service
//! (DynamoDB Local, the KMS emulator, the OpenSearch server).
//!
//! Why a proxy rather than stopping the service: DynamoDB Local and moto keep their state in
//! memory, so a real stop would wipe the table or the keys, and the services are shared by
//! the tests running alongside. Switching this test's proxy to [`DROP`] makes the service
//! unreachable for this test's worker only; to the client that is what a stopped service is,
//! and switching back to [`PASS`] brings it back with its state intact.
//!
//! One request per connection: the request goes upstream with `Connection: close`, and the
//! whole answer comes back before the connection closes. Bodies framed by `Content-Length`
//! (what the AWS SDK and the OpenSearch client send, gzipped or not) and chunked bodies are
//! both forwarded as they came.

use super::services::host_port;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Requests go through.
pub const PASS: u8 = 0;
/// Requests are answered `400 ProvisionedThroughputExceededException` (DynamoDB throttling).
pub const THROTTLE: u8 = 1;
/// Requests are answered `500 InternalServerError`.
pub const SERVER_ERROR: u8 = 2;
/// Connections are closed without an answer.
pub const DROP: u8 = 3;
/// Writes (POST, PUT, DELETE) are answered `500`; reads go through, so a worker starts.
pub const WRITES_FAIL: u8 = 4;
const MODES: usize = 5;

pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: give it to the worker instead of the service's address.
    pub endpoint: String,
    mode: Arc<AtomicU8>,
    /// Requests answered with a fault, by mode (indexed by the mode's number).
    faults: Arc<[AtomicU64; MODES]>,
    /// Requests forwarded upstream, by AWS operation (`X-Amz-Target`, e.g.
    /// `TrentService.GenerateDataKey`) or, without one, by method.
    forwarded: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl FaultProxy {
    /// Listens on a free port in front of `upstream` (a URL or `host:port`), passing requests.
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = host_port(upstream);
        let mode = Arc::new(AtomicU8::new(PASS));
        let faults = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let forwarded = Arc::new(Mutex::new(BTreeMap::new()));
        let (m, f, w) = (mode.clone(), faults.clone(), forwarded.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (m, f, w, up) = (m.clone(), f.clone(), w.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, &m, &f, &w);
                });
            }
        });
        FaultProxy {
            endpoint,
            mode,
            faults,
            forwarded,
        }
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Requests answered with a fault so far.
    pub fn faults(&self) -> u64 {
        self.faults.iter().map(|n| n.load(Ordering::SeqCst)).sum()
    }

    /// Requests answered with `mode`'s fault so far.
    pub fn faults_of(&self, mode: u8) -> u64 {
        self.faults[mode as usize].load(Ordering::SeqCst)
    }

    /// Requests forwarded upstream so far, of every operation.
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.lock().unwrap().values().sum()
    }

    /// Waits until `done` holds, the observable state a test moves on with (rather than a
    /// sleep); fails naming `what` after `within`, or when `worker` has exited meanwhile.
    pub fn wait_until(
        &self,
        what: &str,
        within: std::time::Duration,
        worker: &mut std::process::Child,
        done: impl Fn(&Self) -> bool,
    ) {
        let started = std::time::Instant::now();
        while !done(self) {
            assert!(
                worker.try_wait().unwrap().is_none(),
                "the worker exited before {what}"
            );
            assert!(started.elapsed() < within, "not within {within:?}: {what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Requests forwarded upstream and answered, by operation.
    pub fn forwarded(&self) -> BTreeMap<String, u64> {
        self.forwarded.lock().unwrap().clone()
    }
}

/// One request: read it whole, then answer it as the mode says.
fn serve(
    conn: TcpStream,
    upstream: &str,
    mode: &AtomicU8,
    faults: &[AtomicU64; MODES],
    forwarded: &Mutex<BTreeMap<String, u64>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let mut head = Vec::new();
    let mut length = 0usize;
    let mut chunked = false;
    let mut expects_continue = false;
    let mut operation = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-amz-target:") {
            operation = Some(line["x-amz-target:".len()..].trim().to_string());
        }
        if let Some(v) = lower.strip_prefix("transfer-encoding:") {
            chunked = v.contains("chunked");
        }
        if lower.starts_with("connection:") {
            continue;
        }
        // Answered here, so that the client sends its body to the proxy.
        if lower.starts_with("expect:") && lower.contains("100-continue") {
            expects_continue = true;
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    if expects_continue {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = if chunked {
        read_chunked(&mut reader)?
    } else {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        body
    };
    let error = |status: &str, kind: &str| {
        let body = format!("{{\"__type\":\"com.amazonaws.dynamodb.v20120810#{kind}\",\"message\":\"injected by the test proxy\"}}");
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let is_write = ["POST ", "PUT ", "DELETE "]
        .iter()
        .any(|m| head.starts_with(m.as_bytes()));
    let mode = mode.load(Ordering::SeqCst);
    let count_fault = || faults[mode as usize].fetch_add(1, Ordering::SeqCst);
    match mode {
        WRITES_FAIL if is_write => {
            count_fault();
            conn.write_all(error("500 Internal Server Error", "InternalServerError").as_bytes())
        }
        THROTTLE => {
            count_fault();
            conn.write_all(
                error("400 Bad Request", "ProvisionedThroughputExceededException").as_bytes(),
            )
        }
        SERVER_ERROR => {
            count_fault();
            conn.write_all(error("500 Internal Server Error", "InternalServerError").as_bytes())
        }
        DROP => {
            count_fault();
            conn.shutdown(std::net::Shutdown::Both)
        }
        _ => {
            let mut up = TcpStream::connect(upstream)?;
            up.write_all(&head)?;
            up.write_all(&body)?;
            let mut response = Vec::new();
            up.read_to_end(&mut response)?;
            let operation = operation.unwrap_or_else(|| {
                String::from_utf8_lossy(&head)
                    .split(' ')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            });
            *forwarded.lock().unwrap().entry(operation).or_default() += 1;
            conn.write_all(&response)
        }
    }
}

/// A chunked body as it came (sizes, data, the last chunk and any trailers), to forward with
/// its `Transfer-Encoding: chunked` header.
fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        body.extend_from_slice(size_line.as_bytes());
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                    body.extend_from_slice(b"\r\n");
                    return Ok(body);
                }
                body.extend_from_slice(line.as_bytes());
            }
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        body.extend_from_slice(&chunk);
    }
}
