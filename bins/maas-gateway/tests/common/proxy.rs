//! A TCP proxy whose connections a test can cut: a dependency that goes away (a crash, a
//! network fault) while the gateway keeps running.

use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Forwards every connection on a free loopback port to its target. Stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    /// A proxy to `target` (`host:port`).
    pub async fn to(target: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::clone(&connections);
        let target = target.to_owned();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _peer)) = listener.accept().await {
                let target = target.clone();
                let forward = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                if let Ok(mut held) = held.lock() {
                    held.push(forward);
                }
            }
        });
        Ok(Self {
            port,
            accept,
            connections,
        })
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every connection and stops accepting new ones.
    pub fn shut(&self) {
        self.accept.abort();
        if let Ok(mut held) = self.connections.lock() {
            for forward in held.drain(..) {
                forward.abort();
            }
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shut();
    }
}
