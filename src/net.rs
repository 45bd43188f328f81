//! Upstream byte streams: plain TCP or client-side TLS behind one type, and a
//! connection that keeps the bytes read from it but not consumed yet. A leaf
//! below `body` and `upstream`: an HTTP/1.1 response body reads from a
//! [`Conn`] and hands it back through [`Recycle`] without knowing the pool.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// An upstream byte stream, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An upstream connection and the bytes read from it but not yet consumed.
#[derive(Debug)]
pub struct Conn {
    pub stream: Stream,
    pub buf: BytesMut,
    /// Which pool it belongs to.
    pub pool_key: Arc<str>,
    /// Whether it came from the pool (and so may have gone stale).
    pub reused: bool,
}

/// Where a connection goes once a body read from it ended cleanly.
pub trait Recycle: Send + Sync + std::fmt::Debug {
    fn recycle(&self, conn: Conn);
}

impl Stream {
    /// Whether TLS negotiated HTTP/2 by ALPN.
    pub fn is_h2(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The two directions of a [`Stream`], borrowed, so a request body can be
/// written while the response head is read. Plain TCP splits for free; TLS
/// shares one state for both and goes through tokio's locked split.
pub enum ReadPart<'a> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>),
}

pub enum WritePart<'a> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>),
}

impl Stream {
    pub fn split(&mut self) -> (ReadPart<'_>, WritePart<'_>) {
        match self {
            Stream::Plain(s) => {
                let (rd, wr) = s.split();
                (ReadPart::Plain(rd), WritePart::Plain(wr))
            }
            Stream::Tls(s) => {
                let (rd, wr) = tokio::io::split(s.as_mut());
                (ReadPart::Tls(rd), WritePart::Tls(wr))
            }
        }
    }
}

impl AsyncRead for ReadPart<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadPart::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadPart::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WritePart<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WritePart::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WritePart::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WritePart::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WritePart::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WritePart::Plain(s) => s.is_write_vectored(),
            WritePart::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WritePart::Plain(s) => Pin::new(s).poll_flush(cx),
            WritePart::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WritePart::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WritePart::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// How many bytes sent on the TCP socket `fd` its peer has acknowledged
/// (Linux's `TCP_INFO`): what a client actually took, which the kernel's
/// socket buffer hides from a writer (it takes bytes in bursts, a third of
/// a buffer of up to 4 MiB at a time). `None` where the kernel does not say.
pub fn bytes_acked(fd: std::os::fd::RawFd) -> Option<u64> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a live, writable buffer of exactly `len` bytes, and
    // `len` is what the kernel is told it may write (it writes at most that
    // and stores how much it wrote). A bad or reused descriptor only makes
    // the call fail or describe another socket; it never touches our memory.
    let failed =
        unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len) != 0 };
    let wanted = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + std::mem::size_of::<u64>();
    if failed || (len as usize) < wanted {
        return None;
    }
    // SAFETY: the buffer was zeroed, and a tcp_info is integers only, so any
    // bytes the kernel wrote over the zeroes leave a valid value.
    let info = unsafe { info.assume_init() };
    Some(info.tcpi_bytes_acked)
}
