//! A hand-rolled HTTP/1.1 peer for either end of the proxy: it parses exactly
//! what arrives on the socket (heads, Content-Length, chunked with trailers,
//! read-to-close), so the assertions are about bytes, not a library's view.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a single read may wait before the test fails.
pub const READ_LIMIT: Duration = Duration::from_secs(10);

/// One parsed message (request or response) exactly as it was on the wire.
#[derive(Debug, Default, Clone)]
pub struct Msg {
    /// The head, start line through the blank line, verbatim.
    pub raw_head: String,
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// Whether the body came chunk-encoded.
    pub chunked: bool,
    /// Whether the body was delimited by the peer closing.
    pub close_delimited: bool,
}

impl Msg {
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {:?}", self.start))
    }

    pub fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or_default()
    }

    pub fn target(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or_default()
    }

    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `connection: close` is present.
    pub fn says_close(&self) -> bool {
        self.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("connection") && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    }
}

fn fields(lines: &[&str]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|line| {
            let (k, v) = line.split_once(':').unwrap_or_else(|| panic!("not a field line: {line:?}"));
            (k.to_string(), v.trim().to_string())
        })
        .collect()
}

/// A socket with its read buffer.
pub struct Wire {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    /// How long one read may wait before the test fails.
    pub limit: Duration,
}

impl Wire {
    pub fn new(stream: TcpStream) -> Wire {
        Wire { stream, buf: Vec::new(), limit: READ_LIMIT }
    }

    /// For an upstream script: waits for requests as long as it takes.
    pub fn patient(stream: TcpStream) -> Wire {
        Wire { limit: Duration::from_secs(3600), ..Wire::new(stream) }
    }

    pub async fn connect(addr: SocketAddr) -> Wire {
        Wire::new(TcpStream::connect(addr).await.unwrap())
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more into the buffer; false on EOF (or reset). Panics after READ_LIMIT.
    pub async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match tokio::time::timeout(self.limit, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => {
                panic!("no bytes within {:?}; buffered so far: {:?}", self.limit, String::from_utf8_lossy(&self.buf))
            }
        }
    }

    async fn need(&mut self, n: usize) {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "peer closed with {} of {n} bytes: {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// One CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return line;
            }
            assert!(self.fill().await, "peer closed inside a line: {:?}", String::from_utf8_lossy(&self.buf));
        }
    }

    /// The next head, or None when the peer closed before sending a byte of it.
    pub async fn head(&mut self) -> Option<Msg> {
        loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..at + 4).collect();
                let raw_head = String::from_utf8_lossy(&raw).into_owned();
                let text = &raw_head[..raw_head.len() - 4];
                let lines: Vec<&str> = text.split("\r\n").collect();
                return Some(Msg {
                    raw_head: raw_head.clone(),
                    start: lines[0].to_string(),
                    headers: fields(&lines[1..]),
                    ..Msg::default()
                });
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "peer closed inside a head: {:?}", String::from_utf8_lossy(&self.buf));
                return None;
            }
        }
    }

    /// Reads one chunk: Some(data), or None after the last chunk (its
    /// trailers are returned through `trailers`).
    pub async fn chunk(&mut self, trailers: &mut Vec<(String, String)>) -> Option<Vec<u8>> {
        let line = self.line().await;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("bad chunk-size line {line:?}"));
        if size == 0 {
            loop {
                let line = self.line().await;
                if line.is_empty() {
                    return None;
                }
                trailers.extend(fields(&[line.as_str()]));
            }
        }
        self.need(size + 2).await;
        let data: Vec<u8> = self.buf.drain(..size).collect();
        assert_eq!(&self.buf[..2], b"\r\n", "chunk data not followed by CRLF");
        self.buf.drain(..2);
        Some(data)
    }

    /// Reads the body `msg`'s head announces. `bodiless` for responses to
    /// HEAD and 1xx/204/304; `request` when no framing means no body.
    pub async fn body(&mut self, msg: &mut Msg, bodiless: bool, request: bool) {
        if bodiless {
            return;
        }
        let te = msg.header("transfer-encoding").map(str::to_ascii_lowercase);
        if let Some(te) = te {
            assert_eq!(te, "chunked", "unexpected transfer-encoding");
            msg.chunked = true;
            let mut trailers = Vec::new();
            while let Some(data) = self.chunk(&mut trailers).await {
                msg.body.extend_from_slice(&data);
            }
            msg.trailers = trailers;
        } else if let Some(cl) = msg.header("content-length") {
            let n: usize = cl.parse().expect("content-length");
            self.need(n).await;
            msg.body = self.buf.drain(..n).collect();
        } else if !request {
            msg.close_delimited = true;
            while self.fill().await {}
            msg.body = std::mem::take(&mut self.buf);
        }
    }

    /// The next response to a request made with `method`, body included.
    pub async fn response(&mut self, method: &str) -> Msg {
        let mut msg = self.head().await.expect("connection closed, no response");
        let status = msg.status();
        let bodiless = method == "HEAD" || status < 200 || status == 204 || status == 304;
        self.body(&mut msg, bodiless, false).await;
        msg
    }

    /// The next request with its body, or None when the peer closed.
    pub async fn request(&mut self) -> Option<Msg> {
        let mut msg = self.head().await?;
        self.body(&mut msg, false, true).await;
        Some(msg)
    }

    /// Whether the peer closes (EOF or reset) within `limit`; bytes that
    /// arrive meanwhile stay in `buf`.
    pub async fn closes_within(&mut self, limit: Duration) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        }
    }
}
