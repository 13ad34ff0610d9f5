//! Waiting in tests: what they check happens in other processes, so they
//! poll a condition until it holds or a time limit passes.

use anyhow::Result;

/// Poll `probe` until it returns `Some`, or fail after `limit` with `what`.
pub async fn eventually<T, F, Fut>(
    limit: std::time::Duration,
    what: &str,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
