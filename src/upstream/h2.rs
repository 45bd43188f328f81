//! One HTTP/2 exchange with an upstream over a shared, multiplexed connection:
//! the head goes out at once, the body uploads in a task of its own (HTTP/2
//! streams are full duplex), and the response body is read as the client takes it.

use bytes::Bytes;
use h2::client::SendRequest;
use http::header::{CONTENT_LENGTH, HOST};
use http::HeaderValue;

use super::connect::Stream;
use super::h1::{UpstreamRequest, UpstreamResponse};
use super::{Endpoint, UpstreamError};
use crate::body::Body;
use crate::http2::{send_body, H2Body, SendError};

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
        .map_err(|e| UpstreamError::H2(format!("HTTP/2 handshake with {} failed: {e}", endpoint.key)))?;
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
) -> Result<UpstreamResponse, UpstreamError> {
    // A connection that cannot take a stream has sent nothing of ours.
    let mut send = send.ready().await.map_err(|e| UpstreamError::H2Refused(e.to_string()))?;
    let authority = endpoint.host_header.to_str().unwrap_or(&endpoint.host);
    let uri = http::Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(req.target)
        .build()
        .map_err(|e| UpstreamError::BadResponse(format!("cannot build the upstream URI: {e}")))?;
    let mut request = http::Request::new(());
    *request.method_mut() = req.method.clone();
    *request.uri_mut() = uri;
    let mut headers = req.headers.clone();
    // :authority carries the host (RFC 9113 §8.3.1).
    headers.remove(HOST);
    if let Some(len) = body.exact_len().filter(|n| *n > 0) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    *request.headers_mut() = headers;
    let end = body.is_empty();
    let (response, mut stream) =
        send.send_request(request, end).map_err(|e| UpstreamError::H2Refused(e.to_string()))?;
    let upload = (!end).then(|| {
        tokio::spawn(async move {
            let result = send_body(&mut stream, body).await;
            if let Err(SendError::Source(_)) = &result {
                stream.send_reset(h2::Reason::CANCEL);
            }
            result
        })
    });
    let response = match response.await {
        Ok(response) => response,
        Err(e) => {
            // If the client's body broke, that is the real cause of the reset.
            if let Some(upload) = upload {
                if let Ok(Err(SendError::Source(body_err))) = upload.await {
                    return Err(UpstreamError::ClientBody(body_err));
                }
            }
            return Err(h2_error(e));
        }
    };
    let (parts, recv) = response.into_parts();
    let body = Body::H2(Box::new(H2Body::new(recv, &parts.headers)));
    Ok(UpstreamResponse { status: parts.status, headers: parts.headers, body })
}

/// A refused stream was not processed (RFC 9113 §8.7); any other connection
/// failure may have come after the upstream acted on the request.
fn h2_error(e: h2::Error) -> UpstreamError {
    if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        UpstreamError::H2Refused(e.to_string())
    } else if e.is_go_away() || e.is_io() {
        UpstreamError::H2Gone(e.to_string())
    } else {
        UpstreamError::H2(e.to_string())
    }
}
