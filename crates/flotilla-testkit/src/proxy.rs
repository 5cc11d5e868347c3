//! A TCP proxy on loopback that can cut every connection through it and refuse new ones: a
//! network partition between two processes, without privileges.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    /// `http://127.0.0.1:PORT`: what to give the process that should go through the proxy.
    pub url: String,
    cut: watch::Sender<u64>,
    blocked: Arc<AtomicBool>,
    /// For the next connection only: the bytes it carries each way before it is cut.
    limits: Arc<std::sync::Mutex<Option<ByteLimits>>>,
}

/// How many bytes a connection carries before the proxy cuts it: `up` from the client to the
/// server, `down` back (`None`: no limit that way).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteLimits {
    pub up: Option<u64>,
    pub down: Option<u64>,
}

/// Copies at most `limit` bytes from `from` to `to` (all of them without a limit).
async fn copy_limited(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    limit: Option<u64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut left = limit.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; 16 * 1024];
    while left > 0 {
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        match from.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                left -= n as u64;
            }
        }
    }
    let _ = to.shutdown().await;
}

impl Proxy {
    /// Forwards connections to `target` (`HOST:PORT`).
    pub async fn start(target: String) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (cut, _) = watch::channel(0u64);
        let blocked = Arc::new(AtomicBool::new(false));
        let limits: Arc<std::sync::Mutex<Option<ByteLimits>>> = Default::default();
        let (cut_tx, blocked2, limits2) = (cut.clone(), blocked.clone(), limits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if blocked2.load(Ordering::Relaxed) {
                    continue; // dropped: the peer sees the connection reset
                }
                let target = target.clone();
                let mut cut_rx = cut_tx.subscribe();
                let limit = limits2.lock().unwrap_or_else(|p| p.into_inner()).take();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(&target).await else {
                        return;
                    };
                    match limit {
                        None => {
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                                _ = cut_rx.changed() => {}
                            }
                        }
                        Some(l) => {
                            // Either way stops at its limit, and the connection is dropped
                            // whole as soon as one way has stopped: a cut mid-message.
                            let (mut dr, mut dw) = down.into_split();
                            let (mut ur, mut uw) = up.into_split();
                            tokio::select! {
                                _ = copy_limited(&mut dr, &mut uw, l.up) => {}
                                _ = copy_limited(&mut ur, &mut dw, l.down) => {}
                                _ = cut_rx.changed() => {}
                            }
                        }
                    }
                });
            }
        });
        Ok(Proxy {
            url,
            cut,
            blocked,
            limits,
        })
    }

    /// Cuts every connection open through the proxy.
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// The next connection through the proxy is cut after these many bytes (each way).
    pub fn limit_next(&self, limits: ByteLimits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = Some(limits);
    }

    /// Refuses (`true`) or lets through (`false`) new connections.
    pub fn block(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Relaxed);
    }

    /// Cuts what is open and refuses what comes: a partition, until [`Proxy::heal`].
    pub fn partition(&self) {
        self.block(true);
        self.cut_all();
    }

    pub fn heal(&self) {
        self.block(false);
    }
}
