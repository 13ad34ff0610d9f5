//! Loopback networking for the processes a test starts: free ports to give
//! them, and plain HTTP GETs to ask them.

use anyhow::Result;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0); returns (status code, body).
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    crate::api::http_get_auth(port, path, None).await
}
