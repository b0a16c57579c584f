//! Sibling sites' load. Every controller serves its own [`LoadReport`] on `GET /load` of the
//! read-only `[admin] peer_listen`; every controller polls the `peer` address of each remote
//! site once per `[load] interval`, with a timeout and exponential backoff after failures.
//!
//! A report steers real traffic (a forged one could pull the shed share to one site, force
//! a de-preference or stop shedding with NaN), so the poller accepts one only if it is:
//! - **authentic**: an HMAC-SHA256 of the body under the deployment's shared key
//!   (`[admin] peer_key_file`), in the `x-anycast-signature` header. A shared key rather
//!   than mutual TLS: one secret file per deployment to distribute and rotate, no
//!   certificates to issue, renew and pin per site, and no TLS stack in the daemon; the
//!   reports are not secret, only their origin and freshness matter, and a MAC over the
//!   body (which carries the timestamp and sequence) gives both per message, whatever
//!   proxies sit between;
//! - **fresh**: measured within `[load] stale` of now (hosts keep NTP time), and with a
//!   sequence number (per reporter start, `epoch`) beyond the last accepted, so a replayed
//!   report is refused and a reporter that stopped measuring goes stale;
//! - **sane**: from the site polled, every number finite and in range; its capacity is
//!   capped at the one configured here for that site.
//!
//! A refused report is counted (`anycast_peer_reports_refused_total{site,reason}`) and
//! logged once until the peer is accepted again; it changes nothing: the site's load is
//! then "unknown", which the policy treats conservatively (`policy.rs`), never "down" (only
//! the data-path probe takes a site down).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::model::LoadReport;

/// The header that carries the report's MAC: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-anycast-signature";
/// A load report is a few hundred bytes: anything much larger is not one.
const MAX_BODY: u64 = 16 * 1024;
/// The shortest key accepted: 128 bits.
const MIN_KEY_BYTES: usize = 16;

/// The deployment's shared key.
#[derive(Clone)]
pub struct PeerKey(Vec<u8>);

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the peer key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "the peer key {path} has {len} bytes; at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32 > FILE`)"
    )]
    Short { path: PathBuf, len: usize },
}

impl PeerKey {
    /// The key file's contents, surrounding whitespace trimmed (a hex string from `openssl
    /// rand -hex 32` is used as is).
    pub fn load(path: &Path) -> Result<PeerKey, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        let key = bytes.trim_ascii().to_vec();
        if key.len() < MIN_KEY_BYTES {
            return Err(KeyError::Short { path: path.to_owned(), len: key.len() });
        }
        Ok(PeerKey(key))
    }

    pub fn from_bytes(key: &[u8]) -> PeerKey {
        PeerKey(key.to_vec())
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// The signature header's value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(body);
        let mut out = String::from("sha256=");
        for b in mac.finalize().into_bytes() {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Whether `signature` is this key's for `body` (compared in constant time).
    pub fn verify(&self, body: &[u8], signature: &str) -> bool {
        let Some(hex) = signature.strip_prefix("sha256=") else { return false };
        let Some(bytes) = decode_hex(hex) else { return false };
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(&bytes).is_ok()
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// This site's report as served: the exact bytes and their signature, made once per
/// measurement by the steering task, so that `GET /load` only copies them out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Published {
    pub report: Option<LoadReport>,
    pub body: String,
    pub signature: Option<String>,
}

impl Published {
    pub fn new(report: LoadReport, key: Option<&PeerKey>) -> Published {
        let body = serde_json::to_string(&report).expect("a load report serialises");
        let signature = key.map(|k| k.sign(body.as_bytes()));
        Published { report: Some(report), body, signature }
    }
}

/// Why a report was refused (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// No signature, or not the deployment key's.
    Signature,
    /// Its sequence goes back: a replay of an older report.
    Replay,
    /// Measured too long ago (or too far in the future).
    Stale,
    /// A number that is not finite or out of range.
    Invalid,
    /// The report names another site than the one polled.
    Site,
}

impl Refusal {
    pub const ALL: [Refusal; 5] =
        [Refusal::Signature, Refusal::Replay, Refusal::Stale, Refusal::Invalid, Refusal::Site];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Signature => "signature",
            Refusal::Replay => "replay",
            Refusal::Stale => "stale",
            Refusal::Invalid => "invalid",
            Refusal::Site => "site",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("GET http://{addr}/load: {reason}")]
    Http { addr: SocketAddr, reason: String },
    #[error("http://{addr}/load answered {status}")]
    Status { addr: SocketAddr, status: u16 },
    #[error("http://{addr}/load refused ({}): {why}", .refusal.name())]
    Refused { addr: SocketAddr, refusal: Refusal, why: String },
    /// The report accepted last, again: the peer has not measured since (a poll that came
    /// before its next tick). No news, neither a failure nor a refusal; it does not keep
    /// the report fresh either.
    #[error("http://{addr}/load: the same report as at the last poll")]
    Unchanged { addr: SocketAddr },
}

/// A body and its signature header, as fetched.
pub struct Fetched {
    pub addr: SocketAddr,
    pub body: String,
    pub signature: Option<String>,
}

/// `GET http://addr/load`, bounded by `timeout` and in size.
pub async fn fetch(addr: SocketAddr, timeout: Duration) -> Result<Fetched, PeerError> {
    let http = move |reason: String| PeerError::Http { addr, reason };
    tokio::task::spawn_blocking(move || {
        // No proxy: peers are reached directly over the backbone, whatever the environment
        // says (ureq reads HTTP_PROXY by default).
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .proxy(None)
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .build(),
        );
        let mut res = agent.get(&format!("http://{addr}/load")).call().map_err(|e| http(e.to_string()))?;
        let status = res.status().as_u16();
        if status != 200 {
            return Err(PeerError::Status { addr, status });
        }
        let signature = res.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body =
            res.body_mut().with_config().limit(MAX_BODY).read_to_string().map_err(|e| http(e.to_string()))?;
        Ok(Fetched { addr, body, signature })
    })
    .await
    .unwrap_or_else(|e| Err(http(e.to_string())))
}

/// What the poller checks a report against.
pub struct Expect<'a> {
    pub site: &'a str,
    /// For a host of a site of several: the host polled.
    pub host: Option<&'a str>,
    /// The site's capacity in our config: a report never claims more.
    pub capacity: f64,
    pub key: Option<&'a PeerKey>,
    /// Now, in ms since the Unix epoch, and how old (or early) a measurement may be.
    pub now_ms: u64,
    pub max_age: Duration,
}

/// The most packets/s a report may give for anything (capacity, served, a claim).
pub const MAX_RATE: f64 = 1e12;
/// The highest utilisation a report may give.
pub const MAX_UTILISATION: f64 = 1e3;

/// Checks and decodes one fetched report; `last` is the (epoch, seq) accepted last.
pub fn accept(f: &Fetched, expect: &Expect, last: Option<(u64, u64)>) -> Result<LoadReport, PeerError> {
    let refuse = |refusal, why: String| PeerError::Refused { addr: f.addr, refusal, why };
    if let Some(key) = expect.key {
        match &f.signature {
            Some(sig) if key.verify(f.body.as_bytes(), sig) => {}
            Some(_) => {
                return Err(refuse(Refusal::Signature, "the signature is not the deployment key's".into()));
            }
            None => return Err(refuse(Refusal::Signature, "the report is not signed".into())),
        }
    }
    // JSON has no NaN or infinity: a body with them (or with anything else that is not a
    // report) does not decode, and is refused like any invalid number.
    let mut r: LoadReport = serde_json::from_str(&f.body)
        .map_err(|e| refuse(Refusal::Invalid, format!("not a load report: {e}")))?;
    if r.site != expect.site {
        return Err(refuse(
            Refusal::Site,
            format!("it reports site `{}`, expected `{}`", r.site, expect.site),
        ));
    }
    if expect.host.is_some() && r.host.as_deref() != expect.host {
        return Err(refuse(
            Refusal::Site,
            format!("it reports host {:?} of `{}`, expected {:?}", r.host, r.site, expect.host),
        ));
    }
    if r.decisions.iter().any(|d| r.host.as_ref() != Some(&d.by)) {
        return Err(refuse(Refusal::Site, "it carries a decision of another host than itself".into()));
    }
    // Finite is not enough: a huge finite value (1e308) overflows to infinity in the
    // policy's sums and products and ends as NaN shares. No site serves 10^12 packets/s,
    // and no real utilisation is a thousand times its capacity.
    let rate = |x: f64| (0.0..=MAX_RATE).contains(&x);
    if let Some((site, c)) = r.claims.iter().find(|(_, c)| !(rate(c.wants) && rate(c.sends))) {
        return Err(refuse(
            Refusal::Invalid,
            format!("claims {} (sends {}) on `{site}`: need 0..={MAX_RATE:e}", c.wants, c.sends),
        ));
    }
    let host_valid = r.host_load.as_ref().is_none_or(|h| {
        [h.smoothed, h.recent].iter().all(|x| rate(x.offered) && rate(x.received) && rate(x.served))
            && rate(h.fixed)
            && h.cpu.is_none_or(|c| (0.0..=MAX_UTILISATION).contains(&c))
            && h.forwarded.values().all(|&f| rate(f))
    });
    if !host_valid {
        return Err(refuse(Refusal::Invalid, format!("host figures out of range: {:?}", r.host_load)));
    }
    let valid = rate(r.capacity)
        && r.capacity > 0.0
        && rate(r.served)
        && (0.0..=MAX_UTILISATION).contains(&r.utilisation)
        && r.target > 0.0
        && r.target <= 1.0;
    if !valid {
        return Err(refuse(
            Refusal::Invalid,
            format!(
                "capacity {} served {} utilisation {} target {}: need 0 < capacity <= {MAX_RATE:e}, \
                 0 <= served <= {MAX_RATE:e}, 0 <= utilisation <= {MAX_UTILISATION}, 0 < target <= 1",
                r.capacity, r.served, r.utilisation, r.target
            ),
        ));
    }
    let age = expect.now_ms.abs_diff(r.measured_at);
    if age > expect.max_age.as_millis() as u64 {
        return Err(refuse(
            Refusal::Stale,
            format!(
                "measured {age} ms from now (more than {:?}; are both clocks synchronised?)",
                expect.max_age
            ),
        ));
    }
    if last == Some((r.epoch, r.seq)) {
        return Err(PeerError::Unchanged { addr: f.addr });
    }
    if let Some((epoch, seq)) = last
        && (r.epoch, r.seq) < (epoch, seq)
    {
        return Err(refuse(
            Refusal::Replay,
            format!("sequence {}:{} goes back from {epoch}:{seq}", r.epoch, r.seq),
        ));
    }
    r.capacity = r.capacity.min(expect.capacity);
    Ok(r)
}

/// What we know of one peer.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The last good report and when it came.
    pub last: Option<(Instant, LoadReport)>,
    /// Consecutive failed polls.
    pub failures: u32,
    pub next_poll: Option<Instant>,
    pub last_error: Option<String>,
    /// Refused reports by reason since the start.
    pub refused: BTreeMap<Refusal, u64>,
}

/// Backoff after failures: the interval doubles per failure, up to 8 intervals.
const MAX_BACKOFF_DOUBLINGS: u32 = 3;

impl Peer {
    pub fn due(&self, now: Instant) -> bool {
        self.next_poll.is_none_or(|t| now >= t)
    }

    /// The (epoch, seq) of the last report accepted.
    pub fn sequence(&self) -> Option<(u64, u64)> {
        self.last.as_ref().map(|(_, r)| (r.epoch, r.seq))
    }

    pub fn record(
        &mut self,
        name: &str,
        now: Instant,
        interval: Duration,
        result: Result<LoadReport, PeerError>,
    ) {
        match result {
            // The last report stands, as fresh as it was.
            Err(PeerError::Unchanged { .. }) => {
                self.failures = 0;
                self.next_poll = Some(now + interval);
            }
            Ok(report) => {
                if self.failures > 0 {
                    log::info!("peer {name}: answering again after {} failed polls", self.failures);
                }
                self.last = Some((now, report));
                self.failures = 0;
                self.last_error = None;
                self.next_poll = Some(now + interval);
            }
            Err(e) => {
                let message = e.to_string();
                // Once per kind of failure (a refusal's reason, or the message), not once
                // per poll: a message may carry a figure that changes every time.
                let kind = |m: &str| m.split_once(": ").map_or(m.to_owned(), |(k, _)| k.to_owned());
                if self.last_error.as_deref().map(kind) != Some(kind(&message)) {
                    log::warn!("peer {name}: {message}");
                }
                if let PeerError::Refused { refusal, .. } = &e {
                    *self.refused.entry(*refusal).or_default() += 1;
                    // A refused report is an answer: poll again at the normal rate.
                    self.next_poll = Some(now + interval);
                } else {
                    self.next_poll =
                        Some(now + interval * (1 << (self.failures + 1).min(MAX_BACKOFF_DOUBLINGS)));
                }
                self.failures += 1;
                self.last_error = Some(message);
            }
        }
    }

    /// The last report if it is fresher than `stale`.
    pub fn fresh(&self, now: Instant, stale: Duration) -> Option<&LoadReport> {
        self.last.as_ref().filter(|(at, _)| now.duration_since(*at) <= stale).map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Claim, HostLoad, HostRates, SiteDecision};

    fn report() -> LoadReport {
        LoadReport {
            site: "b".into(),
            capacity: 1000.0,
            served: 100.0,
            utilisation: 0.1,
            target: 0.8,
            drained: false,
            attached: true,
            overloaded: false,
            no_headroom: false,
            epoch: 1,
            seq: 5,
            measured_at: 1_000_000,
            claims: Default::default(),
            host: None,
            host_load: None,
            decisions: Vec::new(),
            deciding_host: None,
        }
    }

    const ADDR: &str = "192.0.2.1:9101";

    fn fetched(r: &LoadReport, key: Option<&PeerKey>) -> Fetched {
        let p = Published::new(r.clone(), key);
        Fetched { addr: ADDR.parse().unwrap(), body: p.body, signature: p.signature }
    }

    fn expect(key: Option<&PeerKey>) -> Expect<'_> {
        Expect {
            site: "b",
            host: None,
            capacity: 500.0,
            key,
            now_ms: 1_000_500,
            max_age: Duration::from_secs(3),
        }
    }

    fn refusal(r: Result<LoadReport, PeerError>) -> Option<Refusal> {
        match r {
            Err(PeerError::Refused { refusal, .. }) => Some(refusal),
            _ => None,
        }
    }

    #[test]
    fn a_signed_fresh_report_is_accepted_with_its_capacity_capped() {
        let key = PeerKey::from_bytes(b"0123456789abcdef0123");
        let r = accept(&fetched(&report(), Some(&key)), &expect(Some(&key)), Some((1, 4))).unwrap();
        assert_eq!(r.capacity, 500.0, "capped at the configured capacity");
        assert_eq!(r.seq, 5);
    }

    #[test]
    fn forged_replayed_stale_invalid_and_misnamed_reports_are_refused() {
        let key = PeerKey::from_bytes(b"0123456789abcdef0123");
        let other = PeerKey::from_bytes(b"another key of twenty");
        let e = expect(Some(&key));
        assert_eq!(refusal(accept(&fetched(&report(), None), &e, None)), Some(Refusal::Signature));
        assert_eq!(refusal(accept(&fetched(&report(), Some(&other)), &e, None)), Some(Refusal::Signature));
        // A body changed after signing.
        let mut f = fetched(&report(), Some(&key));
        f.body = f.body.replace("\"served\":100.0", "\"served\":0.0");
        assert_eq!(refusal(accept(&f, &e, None)), Some(Refusal::Signature));
        // The same report twice is no news; an older one is a replay.
        assert!(matches!(
            accept(&fetched(&report(), Some(&key)), &e, Some((1, 5))),
            Err(PeerError::Unchanged { .. })
        ));
        assert_eq!(refusal(accept(&fetched(&report(), Some(&key)), &e, Some((2, 0)))), Some(Refusal::Replay));
        let old = LoadReport { measured_at: 990_000, ..report() };
        assert_eq!(refusal(accept(&fetched(&old, Some(&key)), &e, None)), Some(Refusal::Stale));
        for bad in [
            LoadReport { target: 10.0, ..report() },
            LoadReport { served: -1.0, ..report() },
            LoadReport { capacity: 0.0, ..report() },
            LoadReport { utilisation: -0.5, ..report() },
            // Finite but huge: would overflow the policy's sums to infinity, then NaN.
            LoadReport { served: 1e308, ..report() },
            LoadReport { capacity: 1e308, ..report() },
            LoadReport { utilisation: 1e308, ..report() },
            LoadReport { claims: [("a".to_owned(), Claim { wants: 1e308, sends: 0.0 })].into(), ..report() },
        ] {
            assert_eq!(
                refusal(accept(&fetched(&bad, Some(&key)), &e, None)),
                Some(Refusal::Invalid),
                "{bad:?}"
            );
        }
        // NaN, infinity and null, signed with the right key: JSON cannot carry the first
        // two, and none decodes as a number.
        for number in ["NaN", "1e999", "null"] {
            let body = fetched(&report(), None)
                .body
                .replace("\"utilisation\":0.1", &format!("\"utilisation\":{number}"));
            assert!(body.contains(number));
            let f = Fetched { addr: ADDR.parse().unwrap(), signature: Some(key.sign(body.as_bytes())), body };
            assert_eq!(refusal(accept(&f, &e, None)), Some(Refusal::Invalid), "{number}");
        }
        let misnamed = LoadReport { site: "c".into(), ..report() };
        assert_eq!(refusal(accept(&fetched(&misnamed, Some(&key)), &e, None)), Some(Refusal::Site));
    }

    #[test]
    fn a_host_report_must_come_from_the_host_polled_and_carry_only_its_own_decision() {
        let key = PeerKey::from_bytes(b"0123456789abcdef0123");
        let e = Expect { host: Some("b1"), ..expect(Some(&key)) };
        let own = LoadReport { host: Some("b1".into()), ..report() };
        assert!(accept(&fetched(&own, Some(&key)), &e, None).is_ok());
        let decision = |by: &str| vec![SiteDecision { by: by.into(), ..Default::default() }];
        let deciding = LoadReport { decisions: decision("b1"), ..own.clone() };
        assert!(accept(&fetched(&deciding, Some(&key)), &e, None).is_ok());
        for wrong in [
            LoadReport { host: Some("b2".into()), ..report() },
            report(),
            // A host relaying (or forging) another host's decision.
            LoadReport { decisions: decision("b2"), ..own.clone() },
        ] {
            assert_eq!(
                refusal(accept(&fetched(&wrong, Some(&key)), &e, None)),
                Some(Refusal::Site),
                "{wrong:?}"
            );
        }
        let rates = HostRates { offered: 1e308, ..Default::default() };
        let wild = LoadReport { host_load: Some(HostLoad { smoothed: rates, ..Default::default() }), ..own };
        assert_eq!(refusal(accept(&fetched(&wild, Some(&key)), &e, None)), Some(Refusal::Invalid));
    }

    #[test]
    fn keys_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(PeerKey::load(&path), Err(KeyError::Short { len: 5, .. })));
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let k = PeerKey::load(&path).unwrap();
        assert!(k.verify(b"x", &k.sign(b"x")));
        assert!(!k.verify(b"x", "sha256=00"));
    }

    #[test]
    fn backoff_doubles_up_to_eight_intervals_and_resets_on_success() {
        let (t0, i) = (Instant::now(), Duration::from_millis(100));
        let addr: SocketAddr = ADDR.parse().unwrap();
        let mut p = Peer::default();
        assert!(p.due(t0));
        let mut gaps = Vec::new();
        for _ in 0..5 {
            p.record("b", t0, i, Err(PeerError::Status { addr, status: 500 }));
            gaps.push(p.next_poll.unwrap() - t0);
        }
        assert_eq!(gaps, [200, 400, 800, 800, 800].map(Duration::from_millis));
        p.record("b", t0, i, Ok(report()));
        assert_eq!((p.failures, p.next_poll), (0, Some(t0 + i)));
    }

    #[test]
    fn refusals_are_counted_and_keep_the_normal_poll_rate() {
        let (t0, i) = (Instant::now(), Duration::from_millis(100));
        let mut p = Peer::default();
        let refused = || PeerError::Refused {
            addr: ADDR.parse().unwrap(),
            refusal: Refusal::Replay,
            why: "again".into(),
        };
        p.record("b", t0, i, Err(refused()));
        p.record("b", t0, i, Err(refused()));
        assert_eq!(p.refused.get(&Refusal::Replay), Some(&2));
        assert_eq!(p.next_poll, Some(t0 + i));
    }

    #[test]
    fn reports_go_stale() {
        let t0 = Instant::now();
        let mut p = Peer::default();
        p.record("b", t0, Duration::from_millis(100), Ok(report()));
        assert!(p.fresh(t0 + Duration::from_secs(1), Duration::from_secs(3)).is_some());
        assert!(p.fresh(t0 + Duration::from_secs(4), Duration::from_secs(3)).is_none());
    }
}
