//! The benchmark world: the anchor configuration (../shared/anchor-packets.md) in the maps
//! of a loaded data path, and the namespaces that make its forwarding real.
//!
//! Namespace `lb` holds the host under test: `lb0` (MAC [`HOST_MAC`], the anchor frames'
//! destination; 10.0.0.1/24, our tunnel address) with PERMANENT neighbours for the three
//! site endpoints, forwarding on, so that `bpf_fib_lookup` answers SUCCESS with egress =
//! ingress (XDP_TX). Its veth peer `nb0` lives in namespace `nb`, where the throughput
//! benchmark's sink counts what arrives.

use std::net::IpAddr;

use anycast_common::{
    Encap, HashKey, LocalConfig, SiteInfo, VipInfo, VipKey,
    config::{CONFIG_TUNNEL_V4, Limit},
    maps::MAGLEV_DEFAULT_SIZE,
    site::{MAGLEV_LOCAL, SITE_CONFIGURED, SITE_LOCAL, SITE_UP},
    vip::VIP_STATELESS,
};
use anycast_user::{
    datapath::{addresses::filter_index, maps::DataPathMaps},
    reconcile::{
        addr_key,
        maglev::{self, Backend},
    },
};
use anyhow::{Context, Result, bail, ensure};

use crate::{
    anchor,
    netns::Netns,
    packet::{HOST_MAC, PROTO_TCP, PROTO_UDP, Packet, addr, addr16, hex},
    reference,
};

/// Our tunnel address: outer source of what we forward, outer destination we decapsulate.
pub const TUNNEL_V4: &str = "10.0.0.1";
/// The MAC behind every site endpoint (the next hop on lb0).
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa2];
/// Site slots: 0 is this host (local), 1..=3 the anchor's remote IPIP sites.
pub const SITE_LOCAL_INDEX: u32 = 0;
pub const REMOTE_SITES: [u32; 3] = [1, 2, 3];
/// VIP slots, all on the anchor's address. The anchor's TCP VIP (port 80) is spread over
/// the three remote sites; its UDP VIP (port 53) is `affinity = "none"`, served locally (a
/// DNS site); the others give each benchmarked path its own entry: TCP port 8080 whose table
/// names the local site (never remote: no flag), TCP port 8081 whose table names the
/// remote sites while the host holds a connection to it (a local flow whose bucket moved),
/// UDP port 5353 of `affinity = "flow"` spread over the remote sites (each flow pinned on its
/// first packet), TCP port 8082 whose table spreads new flows over this host and the remote
/// sites (a site that sheds part of them) with the anchor ACK's bucket local.
pub const VIP_TCP: u32 = 0;
pub const VIP_UDP: u32 = 1;
pub const VIP_TCP_LOCAL: u32 = 2;
pub const VIP_TCP_MOVED: u32 = 3;
pub const VIP_UDP_PINNED: u32 = 4;
pub const VIP_TCP_SHARED: u32 = 5;
pub const VIPS: [u32; 6] = [VIP_TCP, VIP_UDP, VIP_TCP_LOCAL, VIP_TCP_MOVED, VIP_UDP_PINNED, VIP_TCP_SHARED];
pub const PORT_TCP_LOCAL: u16 = 8080;
pub const PORT_TCP_MOVED: u16 = 8081;
pub const PORT_TCP_SHARED: u16 = 8082;
pub const PORT_UDP_PINNED: u16 = 5353;
/// A non-VIP destination of the anchor frames; must not share a pre-filter slot with a VIP.
const NON_VIP_DST: &str = "10.9.9.9";

/// The two namespaces and lb0's ifindex (the ingress of every benchmarked frame).
pub struct Topology {
    pub lb: Netns,
    pub nb: Netns,
    pub lb0: u32,
    pub nb0: u32,
}

impl Topology {
    pub fn build() -> Result<Topology> {
        let lb = Netns::new("bench-lb")?;
        let nb = Netns::new("bench-nb")?;
        lb.add_veth("lb0", &nb, "nb0")?;
        lb.set_mac("lb0", HOST_MAC)?;
        nb.set_mac("nb0", NEXT_HOP_MAC)?;
        lb.add_addr("lb0", &format!("{TUNNEL_V4}/24"))?;
        for endpoint in anchor::SITE_ENDPOINTS {
            lb.add_neigh("lb0", endpoint, NEXT_HOP_MAC)?;
        }
        lb.enable_forwarding()?;
        let (lb0, nb0) = (lb.ifindex("lb0")?, nb.ifindex("nb0")?);
        Ok(Topology { lb, nb, lb0, nb0 })
    }
}

/// The anchor's three remote sites with equal weights, as the controller would build them.
pub fn remote_backends() -> Vec<Backend<'static>> {
    const NAMES: [&str; 3] = ["site-a", "site-b", "site-c"];
    REMOTE_SITES.iter().zip(NAMES).map(|(&index, name)| Backend { index, name, weight: 1 }).collect()
}

/// The Maglev table of the TCP VIP: 65537 slots over the three remote sites.
pub fn anchor_table() -> Vec<u32> {
    maglev::build(&remote_backends(), MAGLEV_DEFAULT_SIZE)
}

/// The Maglev table of the TCP VIP on [`PORT_TCP_SHARED`]: 65537 slots over this host and
/// the three remote sites at equal weights, as the controller builds them, with the bucket
/// of the anchor ACK on that port made local (no check flag), so that its packets take the
/// hash and the bucket of a table that is not all local.
pub fn shared_table() -> Vec<u32> {
    let mut backends = remote_backends();
    backends.push(Backend { index: SITE_LOCAL_INDEX, name: "here", weight: 1 });
    let local = SITE_LOCAL_INDEX | MAGLEV_LOCAL;
    let mut table: Vec<u32> = maglev::build(&backends, MAGLEV_DEFAULT_SIZE)
        .into_iter()
        .map(|site| if site == SITE_LOCAL_INDEX { local } else { site })
        .collect();
    let mut key = Packet::parse(&hex(anchor::ACK)).key();
    key.dport = PORT_TCP_SHARED;
    let slot = reference::maglev_slot(reference::flow_hash(&key, &reference::KEY), table.len());
    table[slot] = local;
    table
}

/// The site slot whose endpoint is `endpoint`, if any.
pub fn site_of_endpoint(endpoint: [u8; 4]) -> Option<u32> {
    let ip = IpAddr::from(endpoint);
    anchor::SITE_ENDPOINTS.iter().position(|e| addr(e) == ip).map(|i| REMOTE_SITES[i])
}

fn vip_key(proto: u8, port: u16) -> VipKey {
    let (a, family) = addr16(addr(anchor::VIP));
    VipKey { addr: a, port, proto, family: family as u8 }
}

/// Writes the anchor configuration into a freshly loaded data path's maps.
pub fn configure(m: &mut DataPathMaps) -> Result<()> {
    let (t4, _) = addr16(addr(TUNNEL_V4));
    m.set_config(&LocalConfig {
        hash_key: HashKey::from_bytes(reference::KEY),
        flags: CONFIG_TUNNEL_V4,
        tunnel_v4: [t4[0], t4[1], t4[2], t4[3]],
        socket_netns: u32::MAX,
        local_site: SITE_LOCAL_INDEX,
        // As the controller's defaults would set them, except the pin guard, which a
        // benchmark of a million pins per second would otherwise measure.
        icmp: Limit::per_second(1000, 50),
        pin: Limit::default(),
        ..LocalConfig::default()
    })?;
    let up = SITE_CONFIGURED | SITE_UP;
    m.set_site(
        SITE_LOCAL_INDEX,
        &SiteInfo {
            flags: up | SITE_LOCAL,
            generation: 1,
            tunnel_addr: [0; 16],
            tunnel_family: 0,
            encap: Encap::Ip as u8,
            gue_port: 0,
        },
    )?;
    for (&index, endpoint) in REMOTE_SITES.iter().zip(anchor::SITE_ENDPOINTS) {
        let (tunnel_addr, family) = addr16(addr(endpoint));
        m.set_site(
            index,
            &SiteInfo {
                flags: up,
                generation: 1,
                tunnel_addr,
                tunnel_family: family as u8,
                encap: Encap::Ip as u8,
                gue_port: 0,
            },
        )?;
        m.set_tunnel_peer(&addr_key(addr(endpoint)), index)?;
    }
    let table = anchor_table();
    let shared = shared_table();
    let local: &[u32] = &[SITE_LOCAL_INDEX | MAGLEV_LOCAL];
    m.set_maglev_tables(&[
        (VIP_TCP, &table),
        (VIP_UDP, local),
        (VIP_TCP_LOCAL, local),
        (VIP_TCP_MOVED, &table),
        (VIP_UDP_PINNED, &table),
        (VIP_TCP_SHARED, &shared),
    ])?;
    let vips = [
        (vip_key(PROTO_TCP, 80), VipInfo { index: VIP_TCP, flags: 0 }),
        (vip_key(PROTO_UDP, 53), VipInfo { index: VIP_UDP, flags: VIP_STATELESS }),
        (vip_key(PROTO_TCP, PORT_TCP_LOCAL), VipInfo { index: VIP_TCP_LOCAL, flags: 0 }),
        (vip_key(PROTO_TCP, PORT_TCP_MOVED), VipInfo { index: VIP_TCP_MOVED, flags: 0 }),
        (vip_key(PROTO_UDP, PORT_UDP_PINNED), VipInfo { index: VIP_UDP_PINNED, flags: 0 }),
        (vip_key(PROTO_TCP, PORT_TCP_SHARED), VipInfo { index: VIP_TCP_SHARED, flags: 0 }),
    ];
    let tunnel = addr_key(addr(TUNNEL_V4));
    let other = filter_index(&addr_key(addr(NON_VIP_DST)));
    if [addr_key(addr(anchor::VIP)), tunnel].iter().any(|k| filter_index(k) == other) {
        bail!(
            "{NON_VIP_DST} shares a pre-filter slot with a VIP: non_vip_pass would not measure the pre-filter"
        );
    }
    m.set_vips_with_addresses(&vips, &[tunnel]).context("writing the VIPs and the address table")?;
    Ok(())
}

/// Real TCP connections from the anchor client to the VIP, inside `lb`: the sockets the
/// local-flow cases' packets belong to. The client and the VIP are put on `lo` for them
/// and taken off again when the value is dropped (the throughput benchmark's kernel path
/// must not find the client's address local: it would drop its frames as martians).
pub struct Connections {
    _held: Vec<std::net::TcpStream>,
}

/// `ip ARGS` in the calling thread's namespace (the child inherits it).
fn ip_here(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip").args(args).output().context("running ip")?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

const LO_ADDRS: [&str; 2] = [anchor::VIP, anchor::CLIENT];

impl Connections {
    /// One connection from the anchor client's port to each of `ports` of the VIP. Call in
    /// the `lb` namespace, on the thread that drops the value.
    pub fn open(client_port: u16, ports: &[u16]) -> Result<Connections> {
        use socket2::{Domain, Socket, Type};
        for a in LO_ADDRS {
            ip_here(&["addr", "replace", &format!("{a}/32"), "dev", "lo"])?;
        }
        let mut held = Vec::new();
        for &port in ports {
            let server = std::net::SocketAddr::new(addr(anchor::VIP), port);
            let client = std::net::SocketAddr::new(addr(anchor::CLIENT), client_port);
            let listener =
                std::net::TcpListener::bind(server).with_context(|| format!("listening on {server}"))?;
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&client.into()).with_context(|| format!("binding {client}"))?;
            socket.connect(&server.into()).with_context(|| format!("connecting {client} → {server}"))?;
            let (accepted, _) = listener.accept()?;
            held.push(socket.into());
            held.push(accepted);
        }
        Ok(Connections { _held: held })
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        for a in LO_ADDRS {
            if let Err(e) = ip_here(&["addr", "del", &format!("{a}/32"), "dev", "lo"]) {
                eprintln!("bench: removing {a} from lo: {e:#}");
            }
        }
    }
}
