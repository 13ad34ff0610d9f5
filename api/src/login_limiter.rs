//! Failed log-ins: logged, and limited per client address (issue 16).
//!
//! A bearer token is 32 random bytes, so guessing one is hopeless — but each
//! guess costs a database round trip, and an operator must see someone
//! trying. Every failed bearer-token authentication (a 401) is logged at
//! warn with the client's address and the reason (never the token), and
//! counted per address. Once an address has failed
//! `api.login_failures_per_minute` times within a minute (counted from its
//! first failure), every request from it — with a good token too — answers
//! 429 with `Retry-After` until that minute has passed, before any database
//! work.
//!
//! The address is the TCP peer's (`ConnectInfo<SocketAddr>`), the only one
//! the API can trust: `X-Forwarded-For` and the like are ignored. Behind a
//! reverse proxy every client therefore shares the proxy's budget — raise the
//! limit there, or limit at the proxy. IPv6 clients are counted by their /64
//! (what one host is usually given), IPv4-mapped IPv6 as IPv4.
//!
//! Memory is bounded: at most [`TRACKED_ADDRESSES`] addresses are tracked,
//! least recently failed forgotten first. Requests already under way when an
//! address reaches its limit still finish (at most
//! `api.max_concurrent_requests` more failures).

use super::{ApiError, LoginFailure};
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lru::LruCache;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Addresses tracked at once (≈ 40 bytes each).
pub const TRACKED_ADDRESSES: usize = 10_000;
/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Failures of one address since the start of its window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
}

/// Failed log-ins per client address.
pub struct LoginLimiter {
    per_window: u32,
    seen: Mutex<LruCache<IpAddr, Failures>>,
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// `d` rounded up to whole seconds (at least one), as `Retry-After` says it.
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(Duration::from_secs(1))
}

impl LoginLimiter {
    /// Allow `per_window` failures per address per [`WINDOW`].
    pub fn new(per_window: u32) -> LoginLimiter {
        let cap = NonZeroUsize::new(TRACKED_ADDRESSES).unwrap_or(NonZeroUsize::MIN);
        LoginLimiter {
            per_window: per_window.max(1),
            seen: Mutex::new(LruCache::new(cap)),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, LruCache<IpAddr, Failures>> {
        // A panic while holding the lock leaves plain counters: still usable.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `ip` must still wait, if it has used up its failures.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let key = client_key(ip);
        let mut seen = self.table();
        let f = *seen.peek(&key)?;
        let end = f.since + WINDOW;
        if now >= end {
            seen.pop(&key);
            return None;
        }
        (f.count >= self.per_window).then(|| whole_seconds(end - now))
    }

    /// Count a failure of `ip`; true when it has just used up its failures.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> bool {
        let mut seen = self.table();
        let f = seen.get_or_insert_mut(client_key(ip), || Failures {
            since: now,
            count: 0,
        });
        if now >= f.since + WINDOW {
            *f = Failures {
                since: now,
                count: 0,
            };
        }
        f.count = f.count.saturating_add(1);
        f.count == self.per_window
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.table().len()
    }
}

/// Refuse a client that has used up its failed log-ins (429, before any
/// database work); log and count each failed log-in (a 401 marked with
/// [`LoginFailure`]). Without a peer address (a router served without
/// connect info) nothing is limited, but failures are still logged.
pub async fn guard(State(limiter): State<Arc<LoginLimiter>>, req: Request, next: Next) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let path = req.uri().path().to_owned();
    if let Some(ip) = client
        && let Some(retry_after) = limiter.blocked(ip, Instant::now())
    {
        tracing::debug!(client = %ip, path, "refused: too many failed log-ins");
        return ApiError::TooManyFailedLogins { retry_after }.into_response();
    }
    let resp = next.run(req).await;
    if let Some(LoginFailure(reason)) = resp.extensions().get::<LoginFailure>().copied() {
        let client_text = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        tracing::warn!(client = %client_text, reason, path, "failed bearer-token authentication");
        if let Some(ip) = client
            && limiter.record_failure(ip, Instant::now())
        {
            tracing::warn!(
                client = %ip,
                limit = limiter.per_window,
                "too many failed log-ins from this address: refusing it for a minute"
            );
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_minute_passes() {
        let l = LoginLimiter::new(3);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for k in 0..2 {
            assert!(!l.record_failure(a, t0), "failure {k}");
            assert_eq!(l.blocked(a, t0), None);
        }
        assert!(l.record_failure(a, t0 + Duration::from_secs(10)));
        assert_eq!(
            l.blocked(a, t0 + Duration::from_millis(10_500)),
            Some(Duration::from_secs(50)),
            "until the minute that began with the first failure is over, rounded up"
        );
        assert_eq!(l.blocked(ip("192.0.2.2"), t0), None, "another address");
        assert_eq!(l.blocked(a, t0 + WINDOW), None, "the minute has passed");
        assert!(!l.record_failure(a, t0 + WINDOW), "a new window");
    }

    #[test]
    fn ipv6_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let l = LoginLimiter::new(2);
        let t = Instant::now();
        l.record_failure(ip("2001:db8:1:2::1"), t);
        assert!(l.record_failure(ip("2001:db8:1:2:ffff::9"), t));
        assert!(l.blocked(ip("2001:db8:1:2::77"), t).is_some());
        assert_eq!(l.blocked(ip("2001:db8:1:3::1"), t), None);
        l.record_failure(ip("::ffff:198.51.100.7"), t);
        assert!(l.record_failure(ip("198.51.100.7"), t));
    }

    #[test]
    fn memory_is_bounded() {
        let l = LoginLimiter::new(1);
        let t = Instant::now();
        for k in 0..(TRACKED_ADDRESSES as u32 + 500) {
            l.record_failure(IpAddr::V4(std::net::Ipv4Addr::from(k)), t);
        }
        assert_eq!(l.tracked(), TRACKED_ADDRESSES);
    }
}
