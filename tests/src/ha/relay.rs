//! A TCP relay on 127.0.0.1 in front of one etcd member, so a test can cut
//! one Patroni node off etcd (a network partition) without root network
//! namespaces or firewall rules: the node is configured with the relays'
//! addresses (`use_proxies`), and [`Relay::cut`] closes every connection
//! through the relay and refuses new ones until [`Relay::heal`].

use anyhow::{Context, Result};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One relay: `127.0.0.1:port` → `target`.
pub struct Relay {
    /// The relay's port on 127.0.0.1: the address its Patroni node is given
    /// for the etcd member.
    pub port: u16,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listen on a free loopback port and forward each connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a relay port")?;
        let port = listener.local_addr()?.port();
        let (cut, _) = watch::channel(false);
        let rx = cut.subscribe();
        let task = tokio::spawn(serve(listener, target, rx));
        Ok(Relay { port, cut, task })
    }

    /// Cut the link: open connections are closed, new ones closed at once.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Restore the link.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// The address clients connect to.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, target: SocketAddr, cut: watch::Receiver<bool>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *cut.borrow() {
            drop(client);
            continue;
        }
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.wait_for(|c| *c) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_cut_relay_closes_connections_and_a_healed_one_forwards() -> Result<()> {
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let target = echo.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let relay = Relay::start(target).await?;
        let mut c = TcpStream::connect(relay.addr()).await?;
        c.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        relay.cut();
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut buf)).await??;
        assert_eq!(n, 0, "a cut relay closes open connections");
        let mut c = TcpStream::connect(relay.addr()).await?;
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut buf)).await??;
        assert_eq!(n, 0, "a cut relay closes new connections");
        relay.heal();
        let mut c = TcpStream::connect(relay.addr()).await?;
        c.write_all(b"pong").await?;
        c.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok(())
    }
}
