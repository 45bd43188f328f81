//! A client connection split into its read and write sides, so a response can
//! be written while the request body is read and the client watched for
//! hanging up. Plain TCP splits without a lock and can wait for bytes without
//! a read buffer, so an idle connection holds none; a TLS stream shares one
//! state for both directions and goes through tokio's locked split.

use std::future::Future;
use std::io;

use bytes::BytesMut;
#[cfg(test)]
use tokio::io::DuplexStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A transport the HTTP/1.1 driver can serve.
pub trait Split: Send + 'static {
    type Read: ReadSide;
    type Write: AsyncWrite + Send + Unpin + 'static;
    fn split_io(self) -> (Self::Read, Self::Write);

    /// The client's TCP socket, to ask the kernel what the client took.
    fn tcp_fd(&self) -> Option<std::os::fd::RawFd>;
}

/// The read side of a client connection.
pub trait ReadSide: AsyncRead + Send + Unpin + 'static {
    /// Reads into `buf`, first making room for `room` bytes: where the
    /// transport allows and `buf` holds no allocation, only once bytes are
    /// there to read.
    ///
    /// # Cancel safety
    /// Cancel safe: like `read_buf`, it reads nothing until it can complete.
    fn read_into<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
        room: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
}

impl Split for TcpStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;
    fn split_io(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }

    fn tcp_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}

impl ReadSide for OwnedReadHalf {
    async fn read_into(&mut self, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
        if buf.capacity() > 0 {
            // A buffer at hand: the plain read, which also learns from a short
            // read that the socket is drained (no extra EAGAIN round next time).
            buf.reserve(room);
            return self.read_buf(buf).await;
        }
        read_when_ready(|| self.readable(), |buf| self.try_read_buf(buf), buf, room).await
    }
}

/// Waits for a TCP read side to be readable, and only then reserves `room`
/// in the unallocated `buf` and reads.
///
/// # Cancel safety
/// Cancel safe: the wait reads nothing, and the read does not wait.
pub(super) async fn read_when_ready<F>(
    readable: impl Fn() -> F,
    try_read: impl Fn(&mut BytesMut) -> io::Result<usize>,
    buf: &mut BytesMut,
    room: usize,
) -> io::Result<usize>
where
    F: Future<Output = io::Result<()>>,
{
    loop {
        readable().await?;
        buf.reserve(room);
        match try_read(buf) {
            // Readiness can be stale (a new socket starts out "ready"):
            // give back what this wait allocated before waiting again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => *buf = BytesMut::new(),
            read => return read,
        }
    }
}

/// Tokio's split for the transports that cannot split otherwise.
macro_rules! locked_split {
    ($($ty:ty => $fd:expr),*) => {$(
        impl Split for $ty {
            type Read = ReadHalf<$ty>;
            type Write = WriteHalf<$ty>;
            fn split_io(self) -> (Self::Read, Self::Write) {
                tokio::io::split(self)
            }
            fn tcp_fd(&self) -> Option<std::os::fd::RawFd> {
                ($fd)(self)
            }
        }
    )*};
}

locked_split!(TlsStream<TcpStream> => |tls: &TlsStream<TcpStream>| Some(std::os::fd::AsRawFd::as_raw_fd(tls.get_ref().0)));
#[cfg(test)]
locked_split!(DuplexStream => |_: &DuplexStream| None);

impl<S: AsyncRead + Send + 'static> ReadSide for ReadHalf<S> {
    async fn read_into(&mut self, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
        buf.reserve(room);
        self.read_buf(buf).await
    }
}
