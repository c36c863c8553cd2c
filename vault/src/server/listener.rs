//! Accepting connections with caps: in all, and per peer address.
//!
//! Without a cap, one peer can open connections until the process runs out
//! of file descriptors or memory, and then nobody is served. A connection over
//! either cap is accepted and closed at once (so the kernel's backlog does not
//! fill with it), and the refusal is counted in the log at most once a
//! second.
//!
//! A slot is only worth holding for a peer that speaks: a connection must
//! send its first [`OPENING_BYTES`] within the handshake timeout, or it is
//! closed. Under TLS the handshake's own timeout then applies as well; in
//! plaintext, nothing else would ever close a connection that connects and
//! says nothing, and enough of them would fill the caps.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// What the per-peer cap counts as one peer: an IPv4 address, or an IPv6
/// prefix of `v6_prefix` bits (64 by default). A single IPv6 host is usually
/// handed a whole /64 and can connect from any of its 2^64 addresses, so
/// counting addresses would not cap it; where many clients share one /64 (a
/// cloud subnet, NAT64) a longer prefix separates them. An IPv4 address
/// mapped into IPv6 (a dual-stack socket) counts as itself.
fn peer_of(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(v6_prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
    }
}

/// Open connections by peer (see [`peer_of`]), and in all.
#[derive(Default)]
struct Open {
    by_peer: HashMap<IpAddr, usize>,
    total: usize,
}

/// The caps and what is open now.
struct Caps {
    total: usize,
    per_peer: usize,
    v6_prefix: u8,
    open: Mutex<Open>,
}

impl Caps {
    /// Takes a slot for `peer`, or says which cap is reached.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Slot, &'static str> {
        let peer = peer_of(address, self.v6_prefix);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.total {
            return Err("the server's connection limit");
        }
        let of_peer = open.by_peer.entry(peer).or_default();
        if *of_peer >= self.per_peer {
            return Err("the per-peer connection limit");
        }
        *of_peer += 1;
        open.total += 1;
        Ok(Slot {
            caps: Arc::clone(self),
            peer,
        })
    }
}

/// One admitted connection's place under the caps, given back on drop.
struct Slot {
    caps: Arc<Caps>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.by_peer.remove(&self.peer);
            }
        }
    }
}

/// Bytes a new connection must send before the handshake timeout: the
/// HTTP/2 client preface is exactly this long, and a TLS ClientHello longer.
const OPENING_BYTES: usize = 24;

/// An accepted connection that holds its slot until it is closed.
pub(crate) struct Admitted {
    stream: TcpStream,
    _slot: Slot,
    /// Until the opening bytes have arrived: how many have, and when the
    /// connection is closed if the rest have not.
    opening: Option<(usize, Pin<Box<Sleep>>)>,
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        let Some((seen, deadline)) = &mut self.opening else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                *seen += buf.filled().len() - before;
                if *seen >= OPENING_BYTES {
                    self.opening = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer did not open the connection in time",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The accepted connections of `listener` that fit under the caps, as the
/// stream tonic serves, each closed unless it opens within `handshake`. (Dead peers are found by HTTP/2 keepalive pings,
/// which also cross proxies, rather than TCP keepalive.) Accept errors (a peer gone before it was accepted,
/// out of descriptors) are logged and skipped after a short pause, as an
/// accept loop must not end on them.
pub(crate) fn admitted(
    listener: TcpListener,
    total: usize,
    per_peer: usize,
    v6_prefix: u8,
    handshake: Duration,
) -> impl Stream<Item = Result<Admitted, io::Error>> {
    let caps = Arc::new(Caps {
        total,
        per_peer,
        v6_prefix,
        open: Mutex::default(),
    });
    let state = (listener, caps, None::<Instant>, 0u64);
    futures_util::stream::unfold(
        state,
        move |(listener, caps, mut logged, mut refused)| async move {
            loop {
                let (stream, peer): (TcpStream, SocketAddr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                match caps.admit(peer.ip()) {
                    Ok(slot) => {
                        let _ = stream.set_nodelay(true);
                        let admitted = Admitted {
                            stream,
                            _slot: slot,
                            opening: Some((0, Box::pin(tokio::time::sleep(handshake)))),
                        };
                        return Some((Ok(admitted), (listener, caps, logged, refused)));
                    }
                    Err(cap) => {
                        drop(stream);
                        refused += 1;
                        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                            tracing::warn!(peer = %peer.ip(), cap, refused, "connections refused");
                            logged = Some(Instant::now());
                            refused = 0;
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_an_ipv4_address_or_an_ipv6_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let v4 = ip("192.0.2.7");
        assert_eq!(peer_of(v4, 64), v4);
        assert_eq!(peer_of(ip("::ffff:192.0.2.7"), 64), v4);
        let a = ip("2001:db8:1:2:aaaa::1");
        let b = ip("2001:db8:1:2:ffff:ffff:ffff:ffff");
        let other = ip("2001:db8:1:3::1");
        assert_eq!(peer_of(a, 64), ip("2001:db8:1:2::"));
        assert_eq!(peer_of(a, 64), peer_of(b, 64));
        assert_ne!(peer_of(a, 64), peer_of(other, 64));
        assert_eq!(peer_of(a, 48), peer_of(other, 48));
        assert_ne!(peer_of(a, 128), peer_of(b, 128));
        assert_eq!(peer_of(a, 128), a);
        assert_eq!(peer_of(a, 0), ip("::"));
    }

    #[test]
    fn one_ipv6_64_shares_one_per_peer_cap() {
        let caps = Arc::new(Caps {
            total: 100,
            per_peer: 2,
            v6_prefix: 64,
            open: Mutex::default(),
        });
        let first = caps
            .admit("2001:db8::1".parse().expect("ip"))
            .expect("first");
        let _second = caps
            .admit("2001:db8::2".parse().expect("ip"))
            .expect("second");
        assert!(caps.admit("2001:db8::3".parse().expect("ip")).is_err());
        assert!(caps.admit("2001:db8:0:1::3".parse().expect("ip")).is_ok());
        drop(first);
        assert!(caps.admit("2001:db8::3".parse().expect("ip")).is_ok());
    }
}
