//! The controller's config file (TOML): parsing and whole-file validation.
//!
//! A file is either entirely valid or refused with *every* problem found, each with its
//! line and column. To get more than serde's first error, the document is parsed into
//! toml's spanned tree first (`DeTable::parse_recoverable` reports every syntax error),
//! then each section and each `[[sites]]` / `[[vips]]` entry is deserialized on its own
//! (type errors, unknown and missing fields, one per entry), and finally the semantic
//! checks run over everything that deserialized, using `toml::Spanned` positions.
//! `deploy/anycast.toml` is a commented example.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use anycast_common::maps::{MAGLEV_DEFAULT_SIZE, MAGLEV_MAX_SIZE, MAX_SITES, MAX_VIPS};
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use toml::{
    Spanned,
    de::{DeTable, DeValue, ValueDeserializer},
};

/// Not 9100: that is node_exporter's, which nearly every host that Prometheus scrapes
/// runs; a clash would stop one of the two from starting.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9871";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/anycast";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/anycast";
/// Where the packaged unit and every CLI command look for the config.
pub const DEFAULT_CONFIG: &str = "/etc/anycast/anycast.toml";
pub const DEFAULT_SOCKET: &str = "/run/anycast/admin.sock";
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = anycast_common::maps::FLOW_TABLE_DEFAULT;
/// Flow table bounds: below 1024 the LRU thrashes; 2^24 entries are ~1.5 GiB of kernel memory.
pub const FLOW_TABLE_MIN: u32 = 1 << 10;
pub const FLOW_TABLE_MAX: u32 = 1 << 24;
/// Linux IFNAMSIZ is 16 including the terminating NUL.
const IFNAME_MAX: usize = 15;
const NAME_MAX: usize = 64;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub local: Local,
    pub datapath: Datapath,
    pub admin: Admin,
    pub sites: Vec<Site>,
    pub vips: Vec<Vip>,
    /// Load-aware steering; `None` keeps the static weights.
    pub load: Option<Load>,
    /// Health probes of the remote sites; `None` treats every site as up.
    pub health: Option<Health>,
    /// The BGP speaker (BIRD) the controller drives; `None` leaves BGP alone.
    pub bgp: Option<Bgp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    pub interfaces: Vec<String>,
    pub tunnel_v4: Option<Ipv4Addr>,
    pub tunnel_v6: Option<Ipv6Addr>,
    /// GUE decapsulation port; `None` turns GUE decap off.
    pub gue_port: Option<u16>,
    pub debug_log: bool,
    /// How the next hops towards the remote sites are kept resolved.
    pub neighbours: NeighbourMode,
    /// This host's name among the local site's `hosts`, when the site has several.
    pub host: Option<String>,
}

/// `[local] neighbours`: who keeps the next hops towards the remote sites resolved.
/// `bpf_fib_lookup` only reads the neighbour table; nothing in the host would ever resolve
/// a next hop that only XDP uses, so without this a neighbour expiry stops forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NeighbourMode {
    /// Managed entries (Linux ≥ 5.16): the kernel keeps them resolved; on older kernels
    /// the controller falls back to `refresh`.
    #[default]
    Managed,
    /// The controller asks the kernel to resolve or re-confirm every next hop each sweep.
    Refresh,
    /// Someone else does (static entries, a routing daemon): only reported.
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datapath {
    pub flow_table_size: u32,
    pub maglev_table_size: u32,
    pub pin_dir: PathBuf,
    pub hash_key: HashKeySource,
    /// ICMP too-big replies per second per CPU, and the burst allowed.
    pub icmp_rate: u32,
    pub icmp_burst: u32,
    /// Flow-table pins (completed handshakes, first packets of pinned UDP flows) per second
    /// per CPU, and the burst allowed.
    pub pin_rate: u32,
    pub pin_burst: u32,
    /// Network namespace (its id from the interfaces' namespace, as `ip netns set NAME ID`
    /// assigns it) of the local TCP services; `None`: the interfaces' own namespace.
    pub socket_netns_id: Option<u32>,
    /// Seconds a local bucket that was remote keeps `MAGLEV_CHECK` at least, and that a
    /// pinned TCP flow whose client sent FIN or RST must stay silent before it no longer
    /// keeps the flag (docs/datapath.md §6).
    pub check_grace: u32,
}

/// Where the flow hash's secret key comes from. Every host of a site must use the same key
/// (they must agree on each flow's site, or an ECMP change moves flows), which is why it
/// belongs in the config the site's hosts share; a single-host site may let the controller
/// generate one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKeySource {
    /// `hash_key = "<32 hex digits>"`.
    Inline([u8; 16]),
    /// `hash_key_file = "/path"`: a file holding the 32 hex digits (keeps the secret out of
    /// a config file that may be world-readable).
    File(PathBuf),
    /// Neither: generated once into `state_dir/hash_key` and kept there (a file lost while
    /// a data path runs gets the running key back, not a new one).
    Generated,
}

pub const DEFAULT_ICMP_RATE: u32 = 1000;
pub const DEFAULT_ICMP_BURST: u32 = 50;
pub const DEFAULT_PIN_RATE: u32 = 100_000;
pub const DEFAULT_PIN_BURST: u32 = 10_000;
/// Ten minutes: well above the longest a handshake whose SYN went to another site can take
/// to complete (Linux gives up retransmitting a SYN-ACK after 63 s, `tcp_synack_retries` 5;
/// a SYN cookie is accepted for at most ~3 min), and a long silence for a connection whose
/// client has closed.
pub const DEFAULT_CHECK_GRACE: u32 = 600;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    /// The TCP listener: `GET /metrics` only (read-only).
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// The admin commands' Unix socket (mode 0660).
    pub socket: PathBuf,
    /// The group that owns the socket (its members may run admin commands); the daemon's
    /// own group when `None`.
    pub socket_group: Option<String>,
    /// Read-only listener for the sibling sites' controllers (`GET /load` only).
    pub peer_listen: Option<SocketAddr>,
    /// The deployment's shared key that signs and checks the peer reports; required as soon
    /// as reports are served (`peer_listen`) or read (a site's `peer`).
    pub peer_key_file: Option<PathBuf>,
}

/// `[load]`: how measured load becomes steering weights (see `policy.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    /// Utilisation the policy steers the local site to when it sheds.
    pub target: f64,
    /// Shedding starts above this smoothed utilisation...
    pub high: f64,
    /// ...and flows come back only below this one.
    pub low: f64,
    /// Largest share of new flows moved (to or from any site) per interval...
    pub max_step: f64,
    /// ...and per minute.
    pub max_moved_per_minute: f64,
    /// Overloaded this long while shedding cannot bring the site down: escalate
    /// (`no_headroom`, which the BGP speaker acts on).
    pub escalate_after: Duration,
    pub interval: Duration,
    /// EWMA time constant of the load figures.
    pub smoothing: Duration,
    /// Whether CPU counts in the load (default no): the busiest core's softirq time
    /// (where XDP and the receive path run), steal excluded.
    pub cpu: bool,
    /// Peer `/load` polls time out after this; data older than `stale` is "unknown".
    pub peer_timeout: Duration,
    pub stale: Duration,
}

/// `[health]`: probes of every remote site through the data path and its peer API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes to come up, consecutive failures to go down.
    pub rise: u32,
    pub fall: u32,
}

/// `[bgp]`: how the controller drives BIRD (see `bgp.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bgp {
    /// BIRD's control socket (`bird -s`), given to `birdc -s`.
    pub socket: PathBuf,
    /// The file the controller writes and BIRD's config includes.
    pub include: PathBuf,
    /// The `birdc` program.
    pub birdc: PathBuf,
    pub interval: Duration,
    /// Consecutive intervals a better state (de-prefer → announce, withdraw → ...) must be
    /// wanted before it is entered; a worse one, `fall`.
    pub rise: u32,
    pub fall: u32,
    /// MED of a de-preferred VIP's route (none when announced).
    pub deprefer_med: Option<u32>,
    /// Times `local_as` is prepended to a de-preferred VIP's AS path.
    pub deprefer_prepend: u32,
    /// This speaker's AS number (needed to prepend).
    pub local_as: Option<u32>,
    /// De-prefer only after wanting it this long, and stay de-preferred at least
    /// `hold_down` (doubled for repeated entries): see `bgp::Pacing`.
    pub deprefer_after: Duration,
    pub hold_down: Duration,
    /// Before a withdraw, export the route this long with the GRACEFUL_SHUTDOWN community
    /// (RFC 8326); zero withdraws at once.
    pub graceful_shutdown: Duration,
}

pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
pub const DEFAULT_BIRD_INCLUDE: &str = "/run/bird/anycast.conf";
/// More prepends than this only make the path look broken (and some networks filter long
/// paths); 16 is far beyond what moves traffic.
pub const MAX_PREPEND: u32 = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    pub kind: SiteKind,
    pub capacity: u32,
    /// Static Maglev weight; `None` means "use the capacity".
    pub weight: Option<u32>,
    /// Its controller's peer API (`[admin] peer_listen` there), polled for its load.
    pub peer: Option<SocketAddr>,
    /// Its hosts, when it has several (behind its routers' ECMP): each serves the site's
    /// report; the local site's hosts also poll each other for their own figures.
    pub hosts: Vec<Host>,
    /// What sending this site flows costs (e.g. the round trip to it in ms): under `[load]`
    /// the cheapest room is filled first. Default 0: equal.
    pub cost: u32,
}

impl Site {
    /// The Maglev weight this site gets from the config alone.
    pub fn configured_weight(&self) -> u32 {
        self.weight.unwrap_or(self.capacity)
    }

    /// Where its report is served: its `peer`, or each of its hosts'.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peer.into_iter().chain(self.hosts.iter().map(|h| h.peer)).collect()
    }

    /// What one of its hosts serves at utilisation 1: the hosts of a site are alike.
    pub fn host_capacity(&self) -> f64 {
        self.capacity as f64 / self.hosts.len().max(1) as f64
    }
}

/// One host of a site of several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// Its controller's `[admin] peer_listen`; its address is also where this host's health
    /// probes are answered (the site's tunnel address is shared by its hosts).
    pub peer: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SiteKind {
    Local,
    Remote { endpoint: IpAddr, encap: Encap },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encap {
    Ip,
    Gue { port: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    /// Label in metrics and status; defaults to `address:port/protocol`.
    pub name: String,
    pub address: IpAddr,
    /// 0 = any port.
    pub port: u16,
    pub protocol: Protocol,
    /// Sites that serve this VIP, in config order.
    pub sites: Vec<String>,
    /// How UDP flows of this VIP keep their site (TCP always keeps it: by the host's
    /// sockets for local flows, by the flow table for forwarded ones).
    pub affinity: Affinity,
}

/// `affinity` of a UDP VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// Every flow pinned in the flow table on its first packet: QUIC and other long-lived
    /// UDP flows keep their site when the weights change.
    #[default]
    Flow,
    /// The Maglev table alone, no state: DNS and other one-datagram exchanges (a weight
    /// change moves only what was not going to continue anyway).
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }

    /// IP protocol number, which for ICMP depends on the address family.
    pub fn number(self, addr: &IpAddr) -> u8 {
        match (self, addr) {
            (Protocol::Tcp, _) => 6,
            (Protocol::Udp, _) => 17,
            (Protocol::Icmp, IpAddr::V4(_)) => 1,
            (Protocol::Icmp, IpAddr::V6(_)) => 58,
        }
    }
}

/// The span of a problem about the file as a whole (a missing section): no line to point at.
const WHOLE_FILE: Range<usize> = usize::MAX..usize::MAX;

/// One problem in a config file, located.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// 1-based; 0 (with column 0) for a problem about the file as a whole.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{}", render(path, problems))]
    Invalid { path: String, problems: Vec<Problem> },
}

fn render(path: &str, problems: &[Problem]) -> String {
    let mut lines: Vec<String> = problems
        .iter()
        .map(|p| match p.line {
            0 => format!("{path}: {}", p.message),
            line => format!("{path}:{line}:{}: {}", p.column, p.message),
        })
        .collect();
    lines.push(format!(
        "{path}: {} error{}, nothing applied",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    ));
    lines.join("\n")
}

impl Config {
    /// The site this host belongs to (validation makes sure there is exactly one).
    pub fn local_site(&self) -> Option<&Site> {
        self.sites.iter().find(|s| matches!(s.kind, SiteKind::Local))
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `path` only names the file in messages.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let mut v = Validator { text, errors: Vec::new() };
        let config = v.document();
        match config {
            Some(config) if v.errors.is_empty() => Ok(config),
            _ => {
                let mut spans = v.errors;
                spans.sort_by_key(|(span, _)| span.start);
                let problems = spans
                    .into_iter()
                    .map(|(span, message)| {
                        let (line, column) =
                            if span == WHOLE_FILE { (0, 0) } else { line_column(text, span.start) };
                        Problem { line, column, message }
                    })
                    .collect();
                Err(ConfigError::Invalid { path: path.to_owned(), problems })
            }
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

// ---- raw, spanned shapes as they appear in the file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    interfaces: Spanned<Vec<Spanned<String>>>,
    tunnel_v4: Option<Spanned<Ipv4Addr>>,
    tunnel_v6: Option<Spanned<Ipv6Addr>>,
    gue_port: Option<Spanned<u16>>,
    #[serde(default)]
    debug_log: bool,
    #[serde(default)]
    neighbours: NeighbourMode,
    host: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDatapath {
    flow_table_size: Option<Spanned<u32>>,
    maglev_table_size: Option<Spanned<u32>>,
    pin_dir: Option<Spanned<PathBuf>>,
    hash_key: Option<Spanned<String>>,
    hash_key_file: Option<Spanned<PathBuf>>,
    icmp_rate: Option<Spanned<u32>>,
    icmp_burst: Option<Spanned<u32>>,
    pin_rate: Option<Spanned<u32>>,
    pin_burst: Option<Spanned<u32>>,
    socket_netns_id: Option<Spanned<u32>>,
    check_grace: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<SocketAddr>>,
    state_dir: Option<Spanned<PathBuf>>,
    socket: Option<Spanned<PathBuf>>,
    socket_group: Option<Spanned<String>>,
    peer_listen: Option<Spanned<SocketAddr>>,
    peer_key_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    target: Option<Spanned<f64>>,
    high: Option<Spanned<f64>>,
    low: Option<Spanned<f64>>,
    max_step: Option<Spanned<f64>>,
    max_moved_per_minute: Option<Spanned<f64>>,
    escalate_after_ms: Option<Spanned<u64>>,
    interval_ms: Option<Spanned<u64>>,
    smoothing_ms: Option<Spanned<u64>>,
    cpu: Option<bool>,
    peer_timeout_ms: Option<Spanned<u64>>,
    stale_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBgp {
    socket: Option<Spanned<PathBuf>>,
    include: Option<Spanned<PathBuf>>,
    birdc: Option<PathBuf>,
    interval_ms: Option<Spanned<u64>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    deprefer_med: Option<u32>,
    deprefer_prepend: Option<Spanned<u32>>,
    local_as: Option<Spanned<u32>>,
    deprefer_after_ms: Option<Spanned<u64>>,
    hold_down_ms: Option<Spanned<u64>>,
    graceful_shutdown_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawEncap {
    Ip,
    Gue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: Spanned<String>,
    local: Option<Spanned<bool>>,
    endpoint: Option<Spanned<IpAddr>>,
    encap: Option<Spanned<RawEncap>>,
    gue_port: Option<Spanned<u16>>,
    capacity: Spanned<u32>,
    weight: Option<Spanned<u32>>,
    peer: Option<Spanned<SocketAddr>>,
    cost: Option<u32>,
    hosts: Option<Spanned<Vec<RawHost>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: Spanned<String>,
    peer: Spanned<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Option<Spanned<String>>,
    address: Spanned<IpAddr>,
    port: Spanned<Port>,
    protocol: Spanned<Protocol>,
    sites: Option<Spanned<Vec<Spanned<String>>>>,
    affinity: Option<Spanned<Affinity>>,
}

/// `port = 53` or `port = "any"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Port, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number 1..=65535 or \"any\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Port, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(Port(p)),
                    _ => Err(E::custom(format!(
                        "port {v} is out of range: use 1..=65535, or \"any\" for every port"
                    ))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Port, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Port, E> {
                if v == "any" {
                    Ok(Port(0))
                } else {
                    Err(E::custom(format!("port \"{v}\": expected a number 1..=65535 or \"any\"")))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

struct Validator<'t> {
    text: &'t str,
    errors: Vec<(Range<usize>, String)>,
}

const SECTIONS: [&str; 8] = ["local", "datapath", "admin", "sites", "vips", "load", "health", "bgp"];

impl<'t> Validator<'t> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push((span, message.into()));
    }

    fn decode<T: DeserializeOwned>(&mut self, value: &Spanned<DeValue<'t>>) -> Option<T> {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().unwrap_or_else(|| value.span());
                self.error(span, e.message().trim().to_owned());
                None
            }
        }
    }

    /// Each element of an array of tables, decoded on its own. `None` if any failed.
    fn decode_entries<T: DeserializeOwned>(
        &mut self,
        key: &str,
        value: &Spanned<DeValue<'t>>,
    ) -> Option<Vec<T>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.error(value.span(), format!("`{key}` must be an array of tables ([[{key}]])"));
            return None;
        };
        let mut out = Vec::new();
        let mut all = true;
        for item in items {
            match self.decode(item) {
                Some(v) => out.push(v),
                None => all = false,
            }
        }
        all.then_some(out)
    }

    fn document(&mut self) -> Option<Config> {
        let (root, syntax) = DeTable::parse_recoverable(self.text);
        if !syntax.is_empty() {
            // After a syntax error the tree is a guess; type and semantic messages about
            // it would mislead.
            for e in syntax {
                self.error(e.span().unwrap_or(WHOLE_FILE), e.message().trim().to_owned());
            }
            return None;
        }
        let root = root.into_inner();
        for (key, _) in root.iter() {
            if !SECTIONS.contains(&key.get_ref().as_ref()) {
                self.error(
                    key.span(),
                    format!("unknown section `{}`, expected one of {}", key.get_ref(), SECTIONS.join(", ")),
                );
            }
        }
        let local: Option<RawLocal> = match root.get("local") {
            Some(v) => self.decode(v),
            None => {
                self.error(WHOLE_FILE, "missing section [local] (interfaces, tunnel addresses)");
                None
            }
        };
        let datapath: Option<RawDatapath> =
            root.get("datapath").map_or(Some(RawDatapath::default()), |v| self.decode(v));
        let admin: Option<RawAdmin> = root.get("admin").map_or(Some(RawAdmin::default()), |v| self.decode(v));
        let sites: Option<Vec<RawSite>> = match root.get("sites") {
            Some(v) => self.decode_entries("sites", v),
            None => {
                self.error(WHOLE_FILE, "no [[sites]]: at least the local site is needed");
                None
            }
        };
        let vips: Option<Vec<RawVip>> =
            root.get("vips").map_or(Some(Vec::new()), |v| self.decode_entries("vips", v));
        let load: Option<Option<RawLoad>> = root.get("load").map_or(Some(None), |v| self.decode(v).map(Some));
        let health: Option<Option<RawHealth>> =
            root.get("health").map_or(Some(None), |v| self.decode(v).map(Some));
        let bgp: Option<Option<(RawBgp, Range<usize>)>> =
            root.get("bgp").map_or(Some(None), |v| self.decode(v).map(|b| Some((b, v.span()))));

        // Where the relations between sections below point: the value that decides, else its
        // section.
        let span_of = |name: &str| root.get(name).map(|v| v.span());
        let maglev_span = datapath
            .as_ref()
            .and_then(|d| d.maglev_table_size.as_ref().map(Spanned::span))
            .or_else(|| span_of("sites"))
            .unwrap_or(WHOLE_FILE);
        let peer_span = admin
            .as_ref()
            .and_then(|a| a.peer_listen.as_ref().map(Spanned::span))
            .or_else(|| sites.iter().flatten().find_map(|s| s.peer.as_ref().map(Spanned::span)))
            .or_else(|| sites.iter().flatten().find_map(|s| s.hosts.as_ref().map(Spanned::span)))
            .unwrap_or(WHOLE_FILE);
        let host_span = local.as_ref().and_then(|l| l.host.as_ref().map(Spanned::span));
        let (load_span, health_span) = (span_of("load"), span_of("health"));
        let local = local.map(|l| self.local(l));
        let datapath = datapath.map(|d| self.datapath(d));
        let admin = admin.map(|a| self.admin(a));
        let sites = sites.map(|s| self.sites(s, local.as_ref(), host_span));
        let vips = vips.map(|v| self.vips(v, sites.as_ref(), local.as_ref()));
        if let (Some(datapath), Some(sites)) = (&datapath, &sites)
            && (datapath.maglev_table_size as usize) < sites.len()
        {
            self.error(
                maglev_span,
                format!(
                    "maglev_table_size {} is smaller than the number of sites ({}); use a \
                     prime at least 100 times larger",
                    datapath.maglev_table_size,
                    sites.len()
                ),
            );
        }
        if let (Some(admin), Some(sites)) = (&admin, &sites)
            && admin.peer_key_file.is_none()
        {
            let reads = sites
                .iter()
                .find(|s| !s.peers().is_empty())
                .map(|s| format!("site `{}` has a `peer`", s.name));
            let serves = admin.peer_listen.map(|a| format!("[admin] peer_listen is {a}"));
            if let Some(why) = serves.or(reads) {
                self.error(
                    peer_span,
                    format!(
                        "{why}, but [admin] has no peer_key_file: load reports between sites must be \
                         authenticated (a file with the deployment's shared key, e.g. `openssl rand -hex 32`)"
                    ),
                );
            }
        }
        let load = load.map(|l| l.map(|l| self.load(l, load_span.clone().unwrap_or(WHOLE_FILE))));
        let health = health.map(|h| h.map(|h| self.health(h, health_span.clone().unwrap_or(WHOLE_FILE))));
        let bgp = bgp.map(|b| b.map(|(b, span)| self.bgp(b, span)));
        Some(Config {
            local: local?,
            datapath: datapath?,
            admin: admin?,
            sites: sites?,
            vips: vips?,
            load: load?,
            health: health?,
            bgp: bgp?,
        })
    }

    fn local(&mut self, raw: RawLocal) -> Local {
        let mut seen = HashSet::new();
        if raw.interfaces.get_ref().is_empty() {
            self.error(raw.interfaces.span(), "interfaces is empty: name at least one interface");
        }
        for iface in raw.interfaces.get_ref() {
            let name = iface.get_ref();
            if name.is_empty()
                || name.len() > IFNAME_MAX
                || name.contains(['/', ' ', '\t', '\n'])
                || name == "."
                || name == ".."
            {
                self.error(
                    iface.span(),
                    format!("`{name}` is not an interface name (1..={IFNAME_MAX} bytes, no '/' or spaces)"),
                );
            } else if !seen.insert(name.clone()) {
                self.error(iface.span(), format!("interface `{name}` is listed twice"));
            }
        }
        if let Some(port) = &raw.gue_port
            && *port.get_ref() == 0
        {
            self.error(port.span(), "gue_port 0 is not a port: omit gue_port to turn GUE decapsulation off");
        }
        Local {
            interfaces: raw.interfaces.into_inner().into_iter().map(Spanned::into_inner).collect(),
            tunnel_v4: raw.tunnel_v4.map(Spanned::into_inner),
            tunnel_v6: raw.tunnel_v6.map(Spanned::into_inner),
            gue_port: raw.gue_port.map(Spanned::into_inner),
            debug_log: raw.debug_log,
            neighbours: raw.neighbours,
            host: raw.host.map(Spanned::into_inner),
        }
    }

    fn datapath(&mut self, raw: RawDatapath) -> Datapath {
        let flow_table_size = raw.flow_table_size.map_or(DEFAULT_FLOW_TABLE_SIZE, |s| {
            let n = *s.get_ref();
            if !(FLOW_TABLE_MIN..=FLOW_TABLE_MAX).contains(&n) {
                self.error(
                    s.span(),
                    format!("flow_table_size {n} is out of range {FLOW_TABLE_MIN}..={FLOW_TABLE_MAX}"),
                );
            }
            n
        });
        let maglev_table_size = raw.maglev_table_size.map_or(MAGLEV_DEFAULT_SIZE, |s| {
            let m = *s.get_ref();
            if m > MAGLEV_MAX_SIZE {
                self.error(s.span(), format!("maglev_table_size {m} is above the maximum {MAGLEV_MAX_SIZE}"));
            } else if !is_prime(m) {
                self.error(
                    s.span(),
                    format!(
                        "maglev_table_size {m} is not prime (Maglev needs a prime size so that \
                         every skip visits every slot); e.g. {}",
                        next_prime(m)
                    ),
                );
            }
            m
        });
        let pin_dir = self.absolute(raw.pin_dir, DEFAULT_PIN_DIR, "pin_dir");
        let hash_key = match (raw.hash_key, raw.hash_key_file) {
            (Some(_), Some(f)) => {
                self.error(f.span(), "give hash_key or hash_key_file, not both");
                HashKeySource::Generated
            }
            (Some(k), None) => match parse_hash_key(k.get_ref()) {
                Some(key) => HashKeySource::Inline(key),
                None => {
                    self.error(k.span(), "hash_key must be 32 hexadecimal digits (a 128-bit secret)");
                    HashKeySource::Generated
                }
            },
            (None, Some(f)) => HashKeySource::File(self.absolute(Some(f), "", "hash_key_file")),
            (None, None) => HashKeySource::Generated,
        };
        let mut rate = |v: Option<Spanned<u32>>, default: u32, what: &str, min: u32| {
            v.map_or(default, |s| {
                if *s.get_ref() < min {
                    self.error(s.span(), format!("{what} must be at least {min}"));
                }
                *s.get_ref()
            })
        };
        let icmp_rate = rate(raw.icmp_rate, DEFAULT_ICMP_RATE, "icmp_rate", 0);
        let icmp_burst = rate(raw.icmp_burst, DEFAULT_ICMP_BURST, "icmp_burst", 1);
        let pin_rate = rate(raw.pin_rate, DEFAULT_PIN_RATE, "pin_rate", 1);
        let pin_burst = rate(raw.pin_burst, DEFAULT_PIN_BURST, "pin_burst", 1);
        let check_grace = rate(raw.check_grace, DEFAULT_CHECK_GRACE, "check_grace", 1);
        let socket_netns_id = raw.socket_netns_id.map(|s| {
            if *s.get_ref() >= i32::MAX as u32 {
                self.error(
                    s.span(),
                    "socket_netns_id is a namespace id (ip netns set NAME ID): 0..2147483646",
                );
            }
            *s.get_ref()
        });
        Datapath {
            flow_table_size,
            maglev_table_size,
            pin_dir,
            hash_key,
            icmp_rate,
            icmp_burst,
            pin_rate,
            pin_burst,
            socket_netns_id,
            check_grace,
        }
    }

    fn admin(&mut self, raw: RawAdmin) -> Admin {
        let listen = raw.listen.map_or_else(
            || DEFAULT_LISTEN.parse().expect("default listen address parses"),
            Spanned::into_inner,
        );
        let state_dir = self.absolute(raw.state_dir, DEFAULT_STATE_DIR, "state_dir");
        let socket = self.absolute(raw.socket, DEFAULT_SOCKET, "socket");
        let peer_key_file = raw.peer_key_file.map(|p| self.absolute(Some(p), "", "peer_key_file"));
        if let Some(g) = &raw.socket_group
            && (g.get_ref().is_empty()
                || !g.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
        {
            self.error(g.span(), format!("socket_group {:?} is not a group name", g.get_ref()));
        }
        Admin {
            listen,
            state_dir,
            socket,
            socket_group: raw.socket_group.map(Spanned::into_inner),
            peer_listen: raw.peer_listen.map(Spanned::into_inner),
            peer_key_file,
        }
    }

    fn load(&mut self, raw: RawLoad, section: Range<usize>) -> Load {
        // A share in (0, max]: of capacity for the watermarks and of new flows for the moves.
        let mut share = |v: Option<Spanned<f64>>, default: f64, max: f64, what: &str| match v {
            None => default,
            Some(v) => {
                let x = *v.get_ref();
                if !(x > 0.0 && x <= max) {
                    let kind = if max == 1.0 { "ratio" } else { "share" };
                    self.error(v.span(), format!("{what} {x} is not a {kind} in (0, {max}]"));
                }
                x
            }
        };
        let (target_span, high_span) =
            (raw.target.as_ref().map(Spanned::span), raw.high.as_ref().map(Spanned::span));
        let target = share(raw.target, 0.8, 1.0, "target");
        let high = share(raw.high, (target + 0.1).min(1.0), 1.0, "high");
        let low_given = raw.low.is_some();
        let low = share(raw.low, target - 0.1, 1.0, "low");
        let max_step = share(raw.max_step, 0.25, 1.0, "max_step");
        // Moves add up over a minute (out, back, out again), so this one may exceed 1.
        let max_moved_per_minute = share(raw.max_moved_per_minute, 2.0, 10.0, "max_moved_per_minute");
        if !(low < target && target < high) {
            let span = target_span.clone().or(high_span).unwrap_or(section.clone());
            self.error(
                span,
                format!(
                    "[load] needs low < target < high (got {low:.2} < {target:.2} < {high:.2}): the gap between the watermarks is what keeps the weights from oscillating"),
            );
        }
        let errors = self.errors.len();
        let (interval_span, timeout_span, stale_span) = (
            raw.interval_ms.as_ref().map(Spanned::span),
            raw.peer_timeout_ms.as_ref().map(Spanned::span),
            raw.stale_ms.as_ref().map(Spanned::span),
        );
        let interval = self.millis(raw.interval_ms, 500, 50..=60_000, "interval_ms");
        let smoothing = self.millis(raw.smoothing_ms, 1_000, 0..=600_000, "smoothing_ms");
        let escalate_after = self.millis(raw.escalate_after_ms, 10_000, 500..=3_600_000, "escalate_after_ms");
        // The defaults follow a short interval: a poll answers within one, a report stays
        // fresh for at least two.
        let ms = interval.as_millis() as u64;
        let peer_timeout = self.millis(raw.peer_timeout_ms, ms.min(500), 10..=60_000, "peer_timeout_ms");
        let stale = self.millis(raw.stale_ms, (2 * ms).max(3_000), 100..=600_000, "stale_ms");
        // An explicit low out of range is reported by `share`; the default one is not.
        if !low_given && low <= 0.0 {
            self.error(
                target_span.unwrap_or(section.clone()),
                format!(
                    "[load] the default low (target - 0.1) is {low:.2}: set low above 0, or shedding never ends"
                ),
            );
        }
        // Relations between the intervals, once each is in its range.
        let in_range = self.errors.len() == errors;
        if in_range && peer_timeout > interval {
            self.error(
                timeout_span.or(interval_span.clone()).unwrap_or(section.clone()),
                format!(
                    "[load] peer_timeout_ms ({}) must not exceed interval_ms ({}): a slow peer would stretch every tick",
                    peer_timeout.as_millis(),
                    interval.as_millis()
                ),
            );
        }
        if in_range && stale < interval * 2 {
            self.error(
                stale_span.or(interval_span).unwrap_or(section),
                format!(
                    "[load] stale_ms ({}) must be at least twice interval_ms ({}): every report would be stale \
                     before the next poll",
                    stale.as_millis(),
                    interval.as_millis()
                ),
            );
        }
        Load {
            target,
            high,
            low,
            max_step,
            max_moved_per_minute,
            escalate_after,
            interval,
            smoothing,
            cpu: raw.cpu.unwrap_or(false),
            peer_timeout,
            stale,
        }
    }

    fn health(&mut self, raw: RawHealth, section: Range<usize>) -> Health {
        let errors = self.errors.len();
        let span = raw.timeout_ms.as_ref().or(raw.interval_ms.as_ref()).map_or(section, Spanned::span);
        let interval = self.millis(raw.interval_ms, 1_000, 50..=60_000, "interval_ms");
        let timeout = self.millis(raw.timeout_ms, 500, 10..=60_000, "timeout_ms");
        let rise = self.count(raw.rise, 2, "rise");
        let fall = self.count(raw.fall, 3, "fall");
        if self.errors.len() == errors && timeout > interval {
            self.error(
                span,
                format!(
                    "[health] timeout_ms ({}) must not exceed interval_ms ({}): probes would overlap",
                    timeout.as_millis(),
                    interval.as_millis()
                ),
            );
        }
        Health { interval, timeout, rise, fall }
    }

    fn bgp(&mut self, raw: RawBgp, section: Range<usize>) -> Bgp {
        let socket = self.absolute(raw.socket, DEFAULT_BIRD_SOCKET, "socket");
        let include = self.absolute(raw.include, DEFAULT_BIRD_INCLUDE, "include");
        let interval = self.millis(raw.interval_ms, 1_000, 100..=60_000, "interval_ms");
        let rise = self.count(raw.rise, 3, "rise");
        let fall = self.count(raw.fall, 2, "fall");
        let deprefer_after = self.millis(raw.deprefer_after_ms, 30_000, 0..=3_600_000, "deprefer_after_ms");
        let hold_down = self.millis(raw.hold_down_ms, 300_000, 0..=86_400_000, "hold_down_ms");
        // 30 s: an update may wait one MinRouteAdvertisementInterval (30 s for eBGP in
        // RFC 4271's suggestion) at a router before it is passed on.
        let graceful_shutdown =
            self.millis(raw.graceful_shutdown_ms, 30_000, 0..=600_000, "graceful_shutdown_ms");
        let deprefer_prepend = raw.deprefer_prepend.as_ref().map_or(0, |p| {
            if *p.get_ref() > MAX_PREPEND {
                self.error(
                    p.span(),
                    format!("deprefer_prepend {} is out of range 0..={MAX_PREPEND}", p.get_ref()),
                );
            }
            *p.get_ref()
        });
        if let Some(asn) = &raw.local_as
            && *asn.get_ref() == 0
        {
            self.error(asn.span(), "local_as 0 is reserved (RFC 7607): give this speaker's AS number");
        }
        match (&raw.deprefer_prepend, &raw.local_as) {
            (Some(p), None) if *p.get_ref() > 0 => self.error(
                p.span(),
                "deprefer_prepend needs local_as (this speaker's AS number, the one prepended)",
            ),
            _ => {}
        }
        if raw.deprefer_med.is_none() && deprefer_prepend == 0 {
            self.error(
                section,
                "[bgp] sets neither deprefer_med nor deprefer_prepend: de-preferring would change nothing",
            );
        }
        Bgp {
            socket,
            include,
            birdc: raw.birdc.unwrap_or_else(|| PathBuf::from("birdc")),
            interval,
            rise,
            fall,
            deprefer_med: raw.deprefer_med,
            deprefer_prepend,
            local_as: raw.local_as.map(Spanned::into_inner),
            deprefer_after,
            hold_down,
            graceful_shutdown,
        }
    }

    /// A rise or fall count: 1..=100.
    fn count(&mut self, v: Option<Spanned<u32>>, default: u32, what: &str) -> u32 {
        match v {
            None => default,
            Some(v) => {
                if !(1..=100).contains(v.get_ref()) {
                    self.error(v.span(), format!("{what} {} is out of range 1..=100", v.get_ref()));
                }
                *v.get_ref()
            }
        }
    }

    fn millis(
        &mut self,
        v: Option<Spanned<u64>>,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
        what: &str,
    ) -> Duration {
        let ms = match v {
            None => default,
            Some(v) => {
                if !range.contains(v.get_ref()) {
                    self.error(
                        v.span(),
                        format!("{what} {} is out of range {}..={}", v.get_ref(), range.start(), range.end()),
                    );
                }
                *v.get_ref()
            }
        };
        Duration::from_millis(ms)
    }

    fn absolute(&mut self, path: Option<Spanned<PathBuf>>, default: &str, what: &str) -> PathBuf {
        match path {
            None => PathBuf::from(default),
            Some(p) => {
                if !p.get_ref().is_absolute() {
                    self.error(p.span(), format!("{what} must be an absolute path"));
                }
                p.into_inner()
            }
        }
    }

    fn sites(
        &mut self,
        raw: Vec<RawSite>,
        local: Option<&Local>,
        host_span: Option<Range<usize>>,
    ) -> Vec<Site> {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut endpoints: HashMap<IpAddr, String> = HashMap::new();
        let mut locals = Vec::new();
        let mut out = Vec::new();
        if raw.len() > MAX_SITES as usize {
            let first_too_many = raw[MAX_SITES as usize].name.span();
            self.error(
                first_too_many,
                format!("{} sites; the data path holds at most {MAX_SITES}", raw.len()),
            );
        }
        let first = raw.first().map_or(WHOLE_FILE, |s| s.name.span());
        for s in raw {
            let name = s.name.get_ref().clone();
            self.check_name(&s.name, "site");
            let (line, _) = line_column(self.text, s.name.span().start);
            if let Some(first) = names.insert(name.clone(), line) {
                self.error(s.name.span(), format!("duplicate site name `{name}` (first at line {first})"));
            }
            if *s.capacity.get_ref() == 0 {
                self.error(s.capacity.span(), format!("site `{name}`: capacity must be > 0"));
            }
            let is_local = s.local.as_ref().is_some_and(|l| *l.get_ref());
            let hosts = self.hosts(&s, &name);
            if is_local {
                self.this_host(&name, &hosts, s.hosts.as_ref().map(Spanned::span), local, host_span.clone());
            }
            let kind = if is_local {
                locals.push(s.local.as_ref().map(Spanned::span).unwrap_or_default());
                for (span, field) in [
                    (s.endpoint.as_ref().map(Spanned::span), "endpoint"),
                    (s.encap.as_ref().map(Spanned::span), "encap"),
                    (s.gue_port.as_ref().map(Spanned::span), "gue_port"),
                    (s.peer.as_ref().map(Spanned::span), "peer"),
                ] {
                    if let Some(span) = span {
                        self.error(
                            span,
                            format!("site `{name}` is local: {field} applies only to remote sites"),
                        );
                    }
                }
                SiteKind::Local
            } else {
                self.remote(&s, &name, local, &mut endpoints)
            };
            out.push(Site {
                name,
                kind,
                capacity: s.capacity.into_inner(),
                weight: s.weight.map(Spanned::into_inner),
                peer: s.peer.map(Spanned::into_inner),
                hosts,
                cost: s.cost.unwrap_or(0),
            });
        }
        if locals.is_empty()
            && let Some(span) = host_span
        {
            self.error(span, "[local] host names a host of the local site, but there is no local site");
        }
        match locals.len() {
            1 => {}
            0 => self.error(first, "no local site: exactly one [[sites]] entry needs `local = true`"),
            _ => {
                for span in locals.into_iter().skip(1) {
                    self.error(span, "a second local site: exactly one site may be `local = true`");
                }
            }
        }
        out
    }

    /// A site's `hosts`: at least two (one host is the site itself), names unique, each peer
    /// API at its own address; `peer` is then per host.
    fn hosts(&mut self, s: &RawSite, site: &str) -> Vec<Host> {
        let Some(list) = &s.hosts else { return Vec::new() };
        if list.get_ref().len() < 2 {
            self.error(
                list.span(),
                format!(
                    "site `{site}`: hosts lists {} host; a site of one host needs no hosts",
                    list.get_ref().len()
                ),
            );
        }
        if let Some(peer) = &s.peer {
            self.error(
                peer.span(),
                format!("site `{site}` has hosts: each host has its own peer, not the site"),
            );
        }
        let mut names = HashSet::new();
        let mut peers = HashSet::new();
        for h in list.get_ref() {
            self.check_name(&h.name, "host");
            if !names.insert(h.name.get_ref().clone()) {
                self.error(
                    h.name.span(),
                    format!("site `{site}`: host `{}` is listed twice", h.name.get_ref()),
                );
            }
            if !peers.insert(h.peer.get_ref().ip()) {
                self.error(
                    h.peer.span(),
                    format!(
                        "site `{site}`: two hosts at {}: each host has its own address",
                        h.peer.get_ref().ip()
                    ),
                );
            }
        }
        list.get_ref()
            .iter()
            .map(|h| Host { name: h.name.get_ref().clone(), peer: *h.peer.get_ref() })
            .collect()
    }

    /// `[local] host` names one of the local site's hosts, and is set if it has several.
    fn this_host(
        &mut self,
        site: &str,
        hosts: &[Host],
        hosts_span: Option<Range<usize>>,
        local: Option<&Local>,
        host_span: Option<Range<usize>>,
    ) {
        let Some(local) = local else { return };
        match (&local.host, host_span, hosts_span) {
            (None, _, Some(span)) => self.error(
                span,
                format!("the local site `{site}` has several hosts: [local] host must say which one this is"),
            ),
            (Some(host), Some(span), None) => self.error(
                span,
                format!("[local] host is `{host}`, but the local site `{site}` has no hosts (a site of one host needs none)"),
            ),
            (Some(host), Some(span), Some(_)) if !hosts.iter().any(|h| &h.name == host) => {
                let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                self.error(span, format!("[local] host `{host}` is not one of site `{site}`'s hosts ({})", names.join(", ")));
            }
            _ => {}
        }
    }

    fn remote(
        &mut self,
        s: &RawSite,
        name: &str,
        local: Option<&Local>,
        endpoints: &mut HashMap<IpAddr, String>,
    ) -> SiteKind {
        let Some(endpoint) = &s.endpoint else {
            self.error(
                s.name.span(),
                format!("remote site `{name}` has no endpoint (its tunnel address); or set local = true"),
            );
            return SiteKind::Local;
        };
        let addr = *endpoint.get_ref();
        if let Some(other) = endpoints.insert(addr, name.to_owned()) {
            self.error(endpoint.span(), format!("endpoint {addr} is already the endpoint of site `{other}`"));
        }
        if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
            self.error(endpoint.span(), format!("endpoint {addr} is not a unicast address"));
        }
        if let Some(local) = local {
            let (family, ours) = match addr {
                IpAddr::V4(_) => ("IPv4", local.tunnel_v4.is_some()),
                IpAddr::V6(_) => ("IPv6", local.tunnel_v6.is_some()),
            };
            if !ours {
                self.error(
                    endpoint.span(),
                    format!(
                        "site `{name}` has an {family} endpoint but [local] has no tunnel_{} \
                         to send from",
                        if family == "IPv4" { "v4" } else { "v6" }
                    ),
                );
            }
        }
        let encap = match (s.encap.as_ref().map(|e| *e.get_ref()), &s.gue_port) {
            (None | Some(RawEncap::Ip), None) => Encap::Ip,
            (None | Some(RawEncap::Ip), Some(port)) => {
                self.error(port.span(), format!("site `{name}`: gue_port needs encap = \"gue\""));
                Encap::Ip
            }
            (Some(RawEncap::Gue), Some(port)) => {
                if *port.get_ref() == 0 {
                    self.error(port.span(), format!("site `{name}`: gue_port must be 1..=65535"));
                }
                Encap::Gue { port: *port.get_ref() }
            }
            (Some(RawEncap::Gue), None) => {
                let span = s.encap.as_ref().map(Spanned::span).unwrap_or_default();
                self.error(span, format!("site `{name}`: encap = \"gue\" needs gue_port"));
                Encap::Gue { port: 0 }
            }
        };
        SiteKind::Remote { endpoint: addr, encap }
    }

    fn vips(&mut self, raw: Vec<RawVip>, sites: Option<&Vec<Site>>, local: Option<&Local>) -> Vec<Vip> {
        if raw.len() > MAX_VIPS as usize {
            let first_too_many = raw[MAX_VIPS as usize].address.span();
            self.error(first_too_many, format!("{} VIPs; the data path holds at most {MAX_VIPS}", raw.len()));
        }
        let mut keys: HashMap<(IpAddr, u16, Protocol), String> = HashMap::new();
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for v in raw {
            let address = *v.address.get_ref();
            let Port(port) = *v.port.get_ref();
            let protocol = *v.protocol.get_ref();
            let name = match &v.name {
                Some(n) => {
                    self.check_name(n, "VIP");
                    n.get_ref().clone()
                }
                None => default_vip_name(address, port, protocol),
            };
            if let Some(other) = keys.insert((address, port, protocol), name.clone()) {
                self.error(
                    v.address.span(),
                    format!("VIP `{name}` repeats VIP `{other}` (same address, port, protocol)"),
                );
            } else if !names.insert(name.clone()) {
                let span = v.name.as_ref().map_or(v.address.span(), Spanned::span);
                self.error(span, format!("duplicate VIP name `{name}`"));
            }
            if protocol == Protocol::Icmp && port != 0 {
                self.error(v.port.span(), "ICMP has no ports: use port = \"any\"");
            }
            if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
                self.error(v.address.span(), format!("VIP address {address} is not a unicast address"));
            }
            if let Some(local) = local
                && (local.tunnel_v4.map(IpAddr::V4) == Some(address)
                    || local.tunnel_v6.map(IpAddr::V6) == Some(address))
            {
                self.error(v.address.span(), format!("VIP address {address} is this host's tunnel address"));
            }
            let vip_sites = match (&v.sites, sites) {
                (Some(list), Some(known)) => self.vip_sites(list, known, &name),
                (Some(list), None) => list.get_ref().iter().map(|s| s.get_ref().clone()).collect(),
                (None, Some(known)) => known.iter().map(|s| s.name.clone()).collect(),
                (None, None) => Vec::new(),
            };
            let affinity = match &v.affinity {
                Some(a) if protocol != Protocol::Udp => {
                    self.error(
                        a.span(),
                        "affinity applies to UDP VIPs only (TCP flows keep their site by the host's \
                         sockets and by pinned handshakes)",
                    );
                    Affinity::Flow
                }
                Some(a) => *a.get_ref(),
                None => Affinity::Flow,
            };
            out.push(Vip { name, address, port, protocol, sites: vip_sites, affinity });
        }
        out
    }

    fn vip_sites(&mut self, list: &Spanned<Vec<Spanned<String>>>, known: &[Site], vip: &str) -> Vec<String> {
        if list.get_ref().is_empty() {
            self.error(list.span(), format!("VIP `{vip}`: sites is empty; omit it to use every site"));
        }
        let mut seen = HashSet::new();
        for s in list.get_ref() {
            let name = s.get_ref();
            if !known.iter().any(|k| &k.name == name) {
                self.error(s.span(), format!("VIP `{vip}`: unknown site `{name}`"));
            } else if !seen.insert(name) {
                self.error(s.span(), format!("VIP `{vip}`: site `{name}` is listed twice"));
            }
        }
        list.get_ref().iter().map(|s| s.get_ref().clone()).collect()
    }

    /// Names become Prometheus label values and CLI arguments: keep them plain.
    fn check_name(&mut self, name: &Spanned<String>, what: &str) {
        let n = name.get_ref();
        let ok = !n.is_empty()
            && n.len() <= NAME_MAX
            && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !ok {
            self.error(
                name.span(),
                format!("{what} name `{n}`: use 1..={NAME_MAX} characters from A-Z a-z 0-9 - _ . :"),
            );
        }
    }
}

pub fn default_vip_name(address: IpAddr, port: u16, protocol: Protocol) -> String {
    let port = if port == 0 { "any".to_owned() } else { port.to_string() };
    match address {
        IpAddr::V4(a) => format!("{a}:{port}/{}", protocol.name()),
        IpAddr::V6(a) => format!("[{a}]:{port}/{}", protocol.name()),
    }
}

/// A 128-bit key written as 32 hexadecimal digits.
pub fn parse_hash_key(text: &str) -> Option<[u8; 16]> {
    let t = text.trim();
    if t.len() != 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

fn next_prime(n: u32) -> u32 {
    (n.saturating_add(1)..).find(|&c| is_prime(c)).unwrap_or(MAGLEV_DEFAULT_SIZE)
}

pub mod hash_key;

#[cfg(test)]
mod tests;
