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
}

impl Proxy {
    /// Forwards connections to `target` (`HOST:PORT`).
    pub async fn start(target: String) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (cut, _) = watch::channel(0u64);
        let blocked = Arc::new(AtomicBool::new(false));
        let (cut_tx, blocked2) = (cut.clone(), blocked.clone());
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
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Ok(Proxy { url, cut, blocked })
    }

    /// Cuts every connection open through the proxy.
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
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
