//! The benchmark's streaming upstream (built as the `bench-upstream` example
//! for `e2e/bench/bench.py`): SSE streams and large bodies, which nginx's
//! `return` cannot produce. Fixed JSON answers come from nginx itself.
//!
//!     bench-upstream PORT
//!
//! - `GET /sse?n=N&gap=MS`: an event stream of N events, MS milliseconds apart
//! - `GET /download?bytes=N`: N bytes
//! - `POST /upload`: reads the body, answers its length

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn param(query: &str, name: &str, default: u64) -> u64 {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

fn sse(events: u64, gap: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for i in 0..events {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            let event = format!("data: {{\"i\":{i},\"choices\":[{{\"delta\":{{\"content\":\"token\"}}}}]}}\n\n");
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))).await;
    });
    Channel(rx).boxed()
}

/// Frames from a channel as a body.
struct Channel(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl hyper::body::Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

async fn serve(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let query = req.uri().query().unwrap_or("").to_string();
    let response = match req.uri().path() {
        "/sse" => Response::builder()
            .header("content-type", "text/event-stream")
            .body(sse(param(&query, "n", 100), Duration::from_millis(param(&query, "gap", 10)))),
        "/download" => Response::builder()
            .header("content-type", "application/octet-stream")
            .body(full(vec![b'x'; param(&query, "bytes", 1 << 20) as usize])),
        _ => {
            let mut body = req.into_body();
            let mut len = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                len += frame.data_ref().map_or(0, Bytes::len);
            }
            Response::builder().header("content-type", "application/json").body(full(format!("{{\"received\":{len}}}")))
        }
    };
    Ok(response.unwrap_or_else(|_| Response::new(full("error"))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).expect("usage: bench-upstream PORT");
    // A deep accept queue: proxies open hundreds of connections at once here.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind(([127, 0, 0, 1], port).into()).expect("bind");
    let listener: TcpListener = socket.listen(4096).expect("listen");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(serve);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
