//! One HTTP/2 exchange with an upstream over a shared, multiplexed connection:
//! the head goes out at once, the body uploads in a task of its own (HTTP/2
//! streams are full duplex), and the response body is read as the client takes it.

use bytes::Bytes;
use h2::client::SendRequest;
use http::header::{CONTENT_LENGTH, HOST};
use http::HeaderValue;

use super::{Endpoint, Timeouts, UpstreamError, UpstreamRequest};
use crate::body::h2::send_body;
use crate::body::{Body, CopyError, H2Body, Progress};
use crate::http1::BodyFraming;
use crate::message::Response;
use crate::net::Stream;

/// Windows for responses: large enough to stream fast, small enough per stream.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Identifies one shared connection, so only its own failure removes it.
pub type SharedId = u64;

/// Starts HTTP/2 on a connection whose ALPN chose `h2`. `publish` runs with
/// the new handle before the connection's driver task starts, so the driver's
/// `on_close` (run when the connection ends) always comes after it.
pub async fn handshake(
    stream: Stream,
    endpoint: &Endpoint,
    publish: impl FnOnce(&SendRequest<Bytes>),
    on_close: impl FnOnce() + Send + 'static,
) -> Result<SendRequest<Bytes>, UpstreamError> {
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|source| UpstreamError::H2Handshake { peer: endpoint.peer.clone(), source })?;
    publish(&send);
    let key = endpoint.key.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(endpoint = %key, error = %e, "upstream HTTP/2 connection ended");
        }
        on_close();
    });
    Ok(send)
}

pub async fn exchange(
    send: SendRequest<Bytes>,
    endpoint: &Endpoint,
    req: UpstreamRequest<'_>,
    body: Body,
    timeouts: Timeouts,
) -> Result<Response, UpstreamError> {
    // A connection that cannot take a stream has sent nothing of ours.
    let mut send = send.ready().await.map_err(UpstreamError::H2Refused)?;
    let authority = endpoint.host_header.to_str().unwrap_or(&endpoint.host);
    let uri = http::Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(req.target)
        .build()
        .map_err(|_| UpstreamError::BadResponse("cannot build the upstream URI"))?;
    let mut request = http::Request::new(());
    *request.method_mut() = req.method.clone();
    *request.uri_mut() = uri;
    let mut headers = req.headers.clone();
    // :authority carries the host (RFC 9113 §8.3.1).
    headers.remove(HOST);
    let framing = body.request_framing();
    if let BodyFraming::Length(len) = framing {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    *request.headers_mut() = headers;
    let end = framing == BodyFraming::Empty;
    let (response, mut stream) = send.send_request(request, end).map_err(UpstreamError::H2Refused)?;
    // The first-byte timeout runs from the last request-body frame taken.
    let progress = Progress::new();
    let body = body.watched(progress.clone());
    let mut upload = Upload((!end).then(|| {
        tokio::spawn(async move {
            let result = send_body(&mut stream, body, None).await;
            if let Err(CopyError::Source(_)) = &result {
                stream.send_reset(h2::Reason::CANCEL);
            }
            result
        })
    }));
    let response = tokio::select! {
        response = response => response,
        _ = progress.quiet_for(timeouts.first_byte) => return Err(UpstreamError::FirstByteTimeout(timeouts.first_byte)),
    };
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            // If the client's body broke, that is the real cause of the reset.
            if let Some(upload) = upload.0.take() {
                // Whatever is left of it must not wait on the client.
                upload.abort();
                if let Ok(Err(CopyError::Source(body_err))) = upload.await {
                    return Err(UpstreamError::ClientBody(body_err));
                }
            }
            return Err(h2_error(e));
        }
    };
    // HTTP/2 is full duplex: the upload goes on while the answer streams, and
    // ends with the answer at the latest.
    let (parts, recv) = response.into_parts();
    let mut body = H2Body::new(recv, &parts.headers).with_idle(timeouts.stream_idle);
    if let Some(task) = upload.0.take() {
        body = body.with_upload(task.abort_handle());
    }
    let body = Body::H2(Box::new(body));
    Ok(Response { status: parts.status, headers: parts.headers, body })
}

/// The upload task of an exchange that has no answer yet: stopped if the
/// exchange is given up (timeout, client gone), released once the head arrives.
struct Upload(Option<tokio::task::JoinHandle<Result<(), CopyError>>>);

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A refused stream was not processed (RFC 9113 §8.7); any other connection
/// failure may have come after the upstream acted on the request.
fn h2_error(e: h2::Error) -> UpstreamError {
    if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        UpstreamError::H2Refused(e)
    } else if e.is_go_away() || e.is_io() {
        UpstreamError::H2Gone(e)
    } else {
        UpstreamError::H2(e)
    }
}
