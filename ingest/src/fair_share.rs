//! Fair share between gateways (config `[fair_share]`, ARCHITECTURE.md
//! "Fair share").
//!
//! Each gateway has two token buckets: MQTT messages and proof verification.
//! The consumer asks [`FairShare::admit`] once per received message (outside
//! the batch's retry loop, so a retried batch is not charged twice): over the
//! message limit, the message is quarantined as `rate_limited` — stored with
//! its raw payload and acknowledged, so the shared subscription never stalls
//! behind it and nothing is lost. Before planning a batch it takes an
//! [`Allowance`] (a snapshot: every retry of the batch plans with the same
//! one): the plan admits a gateway's proven messages while its proof budget
//! is positive and quarantines the rest as `rate_limited`. After the commit,
//! [`FairShare::charge`] takes what verification really cost, bad proofs
//! weighted by `bad_proof_cost`. A gateway with `suspect_after_bad_proofs`
//! bad proofs within the window is a *suspect*: its proofs are verified in a
//! batch of their own, so the bisection that finds its bad proofs costs no
//! other gateway anything.

use crate::config::FairShareConfig;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Label for gateways beyond `max_gateway_labels`.
pub const OTHER_LABEL: &str = "_other";

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + rate * dt).min(burst);
        self.at = now;
    }
}

#[derive(Debug, Clone)]
struct GatewayState {
    messages: Bucket,
    proofs: Bucket,
    /// Bad proofs seen since `window_start`.
    bad: u64,
    window_start: Instant,
    suspect_until: Option<Instant>,
}

/// What verifying one batch cost one gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProofUsage {
    /// Proven groups checked.
    pub checked: u64,
    /// Of those, the ones that failed (bad or malformed proofs).
    pub bad: u64,
}

/// The proof budget of the gateways in one batch, fixed before planning.
#[derive(Debug, Clone, Default)]
pub struct Allowance {
    /// No limits (replays, `fair_share.enabled = false`).
    unlimited: bool,
    proofs: HashMap<String, f64>,
    suspects: HashSet<String>,
}

impl Allowance {
    /// No limits and no suspects: every proof in one shared batch.
    pub fn unlimited() -> Allowance {
        Allowance {
            unlimited: true,
            ..Allowance::default()
        }
    }

    /// Proof budget left for `gateway` (infinite when unlimited or unknown).
    pub fn proofs_left(&self, gateway: &str) -> f64 {
        if self.unlimited {
            return f64::INFINITY;
        }
        self.proofs.get(gateway).copied().unwrap_or(f64::INFINITY)
    }

    /// Whether `gateway`'s proofs are verified apart.
    pub fn is_suspect(&self, gateway: &str) -> bool {
        self.suspects.contains(gateway)
    }
}

/// The per-gateway limiter of one consumer process.
pub struct FairShare {
    cfg: FairShareConfig,
    gateways: HashMap<String, GatewayState>,
    labels: HashSet<String>,
}

/// Above this many tracked gateways, idle ones (full buckets, not suspect)
/// are forgotten: they start again with full buckets, which is what they have.
const PRUNE_ABOVE: usize = 10_000;

impl FairShare {
    /// A limiter with `cfg`'s limits; every gateway starts with full buckets.
    pub fn new(cfg: FairShareConfig) -> FairShare {
        FairShare {
            cfg,
            gateways: HashMap::new(),
            labels: HashSet::new(),
        }
    }

    /// Whether limits apply (`fair_share.enabled`).
    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    fn state(&mut self, gateway: &str, now: Instant) -> &mut GatewayState {
        if !self.gateways.contains_key(gateway) {
            if self.gateways.len() >= PRUNE_ABOVE {
                self.prune(now);
            }
            self.gateways.insert(
                gateway.to_owned(),
                GatewayState {
                    messages: Bucket::full(self.cfg.message_burst, now),
                    proofs: Bucket::full(self.cfg.proof_burst, now),
                    bad: 0,
                    window_start: now,
                    suspect_until: None,
                },
            );
        }
        let c = &self.cfg;
        let s = self.gateways.get_mut(gateway).expect("inserted just above");
        s.messages
            .refill(c.messages_per_second, c.message_burst, now);
        s.proofs.refill(c.proofs_per_second, c.proof_burst, now);
        if s.suspect_until.is_some_and(|t| now >= t) {
            s.suspect_until = None;
        }
        s
    }

    fn prune(&mut self, now: Instant) {
        let c = self.cfg.clone();
        self.gateways.retain(|_, s| {
            let mut m = s.messages.clone();
            m.refill(c.messages_per_second, c.message_burst, now);
            let mut p = s.proofs.clone();
            p.refill(c.proofs_per_second, c.proof_burst, now);
            m.tokens < c.message_burst
                || p.tokens < c.proof_burst
                || s.suspect_until.is_some_and(|t| now < t)
        });
    }

    /// Take one message token for `gateway`; `Err(detail)` when it is over
    /// its message limit (the message goes to quarantine as `rate_limited`).
    pub fn admit(&mut self, gateway: &str, now: Instant) -> Result<(), String> {
        if !self.cfg.enabled {
            return Ok(());
        }
        let (rate, burst) = (self.cfg.messages_per_second, self.cfg.message_burst);
        let s = self.state(gateway, now);
        if s.messages.tokens >= 1.0 {
            s.messages.tokens -= 1.0;
            Ok(())
        } else {
            Err(format!(
                "message rate: gateway {gateway} is over {rate}/s (burst {burst})"
            ))
        }
    }

    /// The proof budget and suspects of `gateways`, for one batch.
    pub fn allowance<'a>(
        &mut self,
        gateways: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> Allowance {
        if !self.cfg.enabled {
            return Allowance::unlimited();
        }
        let mut a = Allowance::default();
        for g in gateways {
            if a.proofs.contains_key(g) {
                continue;
            }
            let s = self.state(g, now);
            let (tokens, suspect) = (s.proofs.tokens, s.suspect_until.is_some());
            a.proofs.insert(g.to_owned(), tokens);
            if suspect {
                a.suspects.insert(g.to_owned());
            }
        }
        a
    }

    /// Charge what a committed batch's verification cost.
    pub fn charge(&mut self, usage: &BTreeMap<String, ProofUsage>, now: Instant) {
        if !self.cfg.enabled {
            return;
        }
        let (cost, floor) = (self.cfg.bad_proof_cost, -self.cfg.proof_burst);
        let (limit, window) = (
            self.cfg.suspect_after_bad_proofs,
            Duration::from_secs(self.cfg.suspect_window_s),
        );
        for (g, u) in usage {
            let s = self.state(g, now);
            let spent = u.checked as f64 + u.bad as f64 * cost;
            s.proofs.tokens = (s.proofs.tokens - spent).max(floor);
            if now.saturating_duration_since(s.window_start) > window {
                s.window_start = now;
                s.bad = 0;
            }
            s.bad += u.bad;
            if u.bad > 0 && s.bad >= limit {
                if s.suspect_until.is_none() {
                    tracing::warn!(gateway = %g, bad_proofs = s.bad, "gateway keeps sending bad proofs: its proofs are verified apart");
                }
                s.suspect_until = Some(now + window);
            }
        }
    }

    /// The metric label for `gateway`: its id for the first
    /// `max_gateway_labels` gateways seen, then `_other`.
    pub fn label(&mut self, gateway: &str) -> String {
        if self.labels.contains(gateway) {
            return gateway.to_owned();
        }
        if self.labels.len() < self.cfg.max_gateway_labels {
            self.labels.insert(gateway.to_owned());
            return gateway.to_owned();
        }
        OTHER_LABEL.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FairShareConfig {
        FairShareConfig {
            messages_per_second: 10.0,
            message_burst: 5.0,
            proofs_per_second: 100.0,
            proof_burst: 50.0,
            bad_proof_cost: 4.0,
            suspect_after_bad_proofs: 3,
            suspect_window_s: 60,
            max_gateway_labels: 2,
            ..FairShareConfig::default()
        }
    }

    #[test]
    fn message_bucket_limits_one_gateway_only() {
        let mut f = FairShare::new(cfg());
        let t = Instant::now();
        for _ in 0..5 {
            assert!(f.admit("a", t).is_ok());
        }
        assert!(f.admit("a", t).is_err(), "burst spent");
        assert!(f.admit("b", t).is_ok(), "another gateway is not affected");
        // 10/s: one token back after 100 ms.
        let later = t + Duration::from_millis(110);
        assert!(f.admit("a", later).is_ok());
        assert!(f.admit("a", later).is_err());
    }

    #[test]
    fn proofs_are_charged_after_and_bad_ones_make_a_suspect() {
        let mut f = FairShare::new(cfg());
        let t = Instant::now();
        let a = f.allowance(["a", "b"], t);
        assert_eq!(a.proofs_left("a"), 50.0);
        assert!(!a.is_suspect("a"));
        let usage = BTreeMap::from([(
            "a".to_owned(),
            ProofUsage {
                checked: 40,
                bad: 3,
            },
        )]);
        f.charge(&usage, t);
        let a = f.allowance(["a", "b"], t);
        // 50 − 40 − 3·4 = −2: in debt, and a suspect (3 bad proofs).
        assert_eq!(a.proofs_left("a"), -2.0);
        assert!(a.is_suspect("a"));
        assert!(!a.is_suspect("b"));
        assert_eq!(a.proofs_left("b"), 50.0);
        // Debt is bounded by one burst.
        let usage = BTreeMap::from([(
            "a".to_owned(),
            ProofUsage {
                checked: 1000,
                bad: 0,
            },
        )]);
        f.charge(&usage, t);
        assert_eq!(f.allowance(["a"], t).proofs_left("a"), -50.0);
        // The window passes: no longer a suspect.
        let later = t + Duration::from_secs(61);
        assert!(!f.allowance(["a"], later).is_suspect("a"));
    }

    #[test]
    fn disabled_is_unlimited_and_labels_are_bounded() {
        let mut f = FairShare::new(FairShareConfig {
            enabled: false,
            ..cfg()
        });
        let t = Instant::now();
        for _ in 0..100 {
            assert!(f.admit("a", t).is_ok());
        }
        assert_eq!(f.allowance(["a"], t).proofs_left("a"), f64::INFINITY);
        assert_eq!(f.label("a"), "a");
        assert_eq!(f.label("b"), "b");
        assert_eq!(f.label("c"), OTHER_LABEL);
        assert_eq!(f.label("a"), "a");
    }
}
