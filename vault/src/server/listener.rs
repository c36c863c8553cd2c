//! Accepting connections with caps: in all, and per peer address.
//!
//! Without a cap, one peer can open connections until the process runs out
//! of file descriptors or memory, and then nobody is served. A connection over
//! either cap is accepted and closed at once (so the kernel's backlog does not
//! fill with it), and the refusal is counted in the log at most once a
//! second.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Open connections by peer address, and in all.
#[derive(Default)]
struct Open {
    by_peer: HashMap<IpAddr, usize>,
    total: usize,
}

/// The caps and what is open now.
struct Caps {
    total: usize,
    per_peer: usize,
    open: Mutex<Open>,
}

impl Caps {
    /// Takes a slot for `peer`, or says which cap is reached.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, &'static str> {
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

/// An accepted connection that holds its slot until it is closed.
pub(crate) struct Admitted {
    stream: TcpStream,
    _slot: Slot,
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
        Pin::new(&mut self.stream).poll_read(cx, buf)
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
/// stream tonic serves. (Dead peers are found by HTTP/2 keepalive pings,
/// which also cross proxies, rather than TCP keepalive.) Accept errors (a peer gone before it was accepted,
/// out of descriptors) are logged and skipped after a short pause, as an
/// accept loop must not end on them.
pub(crate) fn admitted(
    listener: TcpListener,
    total: usize,
    per_peer: usize,
) -> impl Stream<Item = Result<Admitted, io::Error>> {
    let caps = Arc::new(Caps {
        total,
        per_peer,
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
