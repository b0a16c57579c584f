//! Topologies that several real-packet tests share.

use testkit::netns::{Netns, NetnsError, Result};

/// client `c0` 10.1.0.2 ⇄ `a0` 10.1.0.1 [A] `a1` 10.2.0.1 ⇄ `b0` 10.2.0.2 [B, `vip` on lo].
///
/// The client routes `vip` to A; A forwards (sysctls on) and knows B's MAC (a permanent
/// neighbour: `bpf_fib_lookup` needs a resolved one and nothing in the topology would ask
/// for it); B routes the client's subnet back via A (its reverse-path check accepts the
/// client's address on b0). Whatever runs XDP on A and B is the test's business.
pub struct ForwardChain {
    pub client: Netns,
    pub a: Netns,
    pub b: Netns,
}

impl ForwardChain {
    pub fn new(tag: &str, vip: &str) -> Result<ForwardChain> {
        let client = Netns::new(&format!("{tag}-cl"))?;
        let a = Netns::new(&format!("{tag}-a"))?;
        let b = Netns::new(&format!("{tag}-b"))?;
        client.add_veth("c0", &a, "a0")?;
        a.add_veth("a1", &b, "b0")?;
        client.add_addr("c0", "10.1.0.2/24")?;
        a.add_addr("a0", "10.1.0.1/24")?;
        a.add_addr("a1", "10.2.0.1/24")?;
        b.add_addr("b0", "10.2.0.2/24")?;
        b.add_addr("lo", &format!("{vip}/32"))?;
        client.add_route(&[&format!("{vip}/32"), "via", "10.1.0.1"])?;
        b.add_route(&["10.1.0.0/24", "via", "10.2.0.1"])?;
        a.add_neigh("a1", "10.2.0.2", b.mac("b0")?)?;
        a.enable_forwarding()?;
        client.software_checksums("c0")?;
        Ok(ForwardChain { client, a, b })
    }
}

/// The VIP of [`local_site`] and its port (UDP).
pub const LOCAL_VIP: &str = "10.200.0.1";
pub const LOCAL_VIP_PORT: u16 = 5353;

/// `[local]` and the local site, serving the VIP: the config of a one-site deployment on
/// [`local_site`].
pub const LOCAL_SITE: &str = r#"[local]
interfaces = ["l0"]

[[sites]]
name = "here"
local = true
capacity = 100

[[vips]]
name = "svc"
address = "10.200.0.1"
port = 5353
protocol = "udp"
"#;

/// [`LOCAL_SITE`] with a remote site `there` beside it (reached through nothing: for tests
/// that forward nothing) at equal weights, the VIP served by `vip_sites`.
pub fn two_sites(vip_sites: &[&str]) -> String {
    LOCAL_SITE.replace("interfaces = [\"l0\"]\n", "interfaces = [\"l0\"]\ntunnel_v4 = \"10.1.0.1\"\n").replace(
        "\n[[vips]]",
        "\n[[sites]]\nname = \"there\"\nendpoint = \"10.9.0.2\"\nencap = \"ip\"\ncapacity = 100\n\n[[vips]]",
    ) + &format!("sites = {vip_sites:?}\n")
}

/// client `c0` 10.1.0.2 ⇄ `l0` 10.1.0.1 [site, [`LOCAL_VIP`] on lo]. Returns (client, site).
pub fn local_site(tag: &str) -> (Netns, Netns) {
    let cl = Netns::new(&format!("{tag}-cl")).unwrap();
    let site = Netns::new(&format!("{tag}-s")).unwrap();
    cl.add_veth("c0", &site, "l0").unwrap();
    cl.add_addr("c0", "10.1.0.2/24").unwrap();
    site.add_addr("l0", "10.1.0.1/24").unwrap();
    site.add_addr("lo", &format!("{LOCAL_VIP}/32")).unwrap();
    cl.add_route(&[&format!("{LOCAL_VIP}/32"), "via", "10.1.0.1"]).unwrap();
    cl.software_checksums("c0").unwrap();
    (cl, site)
}

/// A client and two sites, dual-stack, for real packets of every family and encapsulation
/// through the real daemons (tests/encap.rs):
///
/// ```text
/// client c0 10.1.0.2 fd01::2 ⇄ a0 10.1.0.1 fd01::1 [A] a1 10.2.0.1 fd02::1 ⇄ b0 10.2.0.2 fd02::2 [B]
/// ```
///
/// B holds the VIPs ([`DualChain::VIPS`]) on its loopback; the client routes them to A,
/// which forwards to B; B routes the client's subnets back through A, and answers the client
/// directly (direct server return, through A's kernel). A knows B's MAC as a permanent
/// neighbour in both families.
pub struct DualChain {
    pub client: Netns,
    pub a: Netns,
    pub b: Netns,
}

impl DualChain {
    /// The VIPs on B's loopback: IPv4 and IPv6 (exact ports), and another pair for
    /// any-port entries (fragments).
    pub const VIPS: [&str; 4] = ["10.200.0.1", "fd00:200::1", "10.200.0.2", "fd00:200::2"];

    /// `uplink_mtu` for the client ⇄ A link, `backbone_mtu` for A ⇄ B.
    pub fn new(tag: &str, uplink_mtu: u32, backbone_mtu: u32) -> Result<DualChain> {
        let client = Netns::new(&format!("{tag}-cl"))?;
        let a = Netns::new(&format!("{tag}-a"))?;
        let b = Netns::new(&format!("{tag}-b"))?;
        client.add_veth("c0", &a, "a0")?;
        a.add_veth("a1", &b, "b0")?;
        client.set_mtu("c0", uplink_mtu)?;
        a.set_mtu("a0", uplink_mtu)?;
        a.set_mtu("a1", backbone_mtu)?;
        b.set_mtu("b0", backbone_mtu)?;
        for (ns, ifname, cidrs) in [
            (&client, "c0", ["10.1.0.2/24", "fd01::2/64"]),
            (&a, "a0", ["10.1.0.1/24", "fd01::1/64"]),
            (&a, "a1", ["10.2.0.1/24", "fd02::1/64"]),
            (&b, "b0", ["10.2.0.2/24", "fd02::2/64"]),
        ] {
            for cidr in cidrs {
                ns.add_addr(ifname, cidr)?;
            }
        }
        for vip in Self::VIPS {
            let len = if vip.contains(':') { 128 } else { 32 };
            b.add_addr("lo", &format!("{vip}/{len}"))?;
            let via = if vip.contains(':') { "fd01::1" } else { "10.1.0.1" };
            client.add_route(&[&format!("{vip}/{len}"), "via", via])?;
        }
        b.add_route(&["10.1.0.0/24", "via", "10.2.0.1"])?;
        b.add_route(&["fd01::/64", "via", "fd02::1"])?;
        let mac = b.mac("b0")?;
        a.add_neigh("a1", "10.2.0.2", mac)?;
        a.add_neigh("a1", "fd02::2", mac)?;
        a.enable_forwarding()?;
        client.software_checksums("c0")?;
        Ok(DualChain { client, a, b })
    }
}

/// Hosts (sites, or the hosts of one site) behind one router, and a client:
///
/// ```text
/// client c0 10.1.0.2 ⇄ r0 10.1.0.1 [router R] r1 10.11.0.1 ⇄ u0 10.11.0.2 [host 0]
///                                             r2 10.12.0.1 ⇄ u0 10.12.0.2 [host 1]
///                                             ...
/// ```
///
/// Every host holds the VIP on its loopback and routes everything through R; how R routes
/// the VIP is the test's ([`BehindRouter::ecmp`], [`BehindRouter::route_from`]). Hosts send
/// what they forward back out of their uplink (XDP_TX), so R's ends run the pass program (a
/// veth delivers XDP_TX frames only to a peer running XDP), and the links behind R carry
/// IPIP's 20 bytes over the client's 1500-byte packets at an MTU of 1600.
pub struct BehindRouter {
    pub client: Netns,
    pub router: Netns,
    pub hosts: Vec<Netns>,
    _pass: Vec<testkit::xdp::PassProgram>,
}

impl BehindRouter {
    pub const VIP: &str = "10.200.0.1";
    const MTU: u32 = 1600;

    /// Host `i`'s uplink address (its own, where its peer API listens).
    pub fn uplink(i: usize) -> String {
        format!("10.{}.0.2", 11 + i)
    }

    /// One host per tag in `hosts`.
    pub fn new(tag: &str, hosts: &[&str]) -> Result<BehindRouter> {
        let client = Netns::new(&format!("{tag}-cl"))?;
        let router = Netns::new(&format!("{tag}-r"))?;
        client.add_veth("c0", &router, "r0")?;
        client.add_addr("c0", "10.1.0.2/24")?;
        router.add_addr("r0", "10.1.0.1/24")?;
        client.add_route(&[&format!("{}/32", Self::VIP), "via", "10.1.0.1"])?;
        router.enable_forwarding()?;
        let mut made = Vec::new();
        let mut pass = Vec::new();
        for (i, name) in hosts.iter().enumerate() {
            let host = Netns::new(&format!("{tag}-{name}"))?;
            let r = format!("r{}", i + 1);
            host.add_veth("u0", &router, &r)?;
            router.add_addr(&r, &format!("10.{}.0.1/24", 11 + i))?;
            host.add_addr("u0", &format!("{}/24", Self::uplink(i)))?;
            host.add_addr("lo", &format!("{}/32", Self::VIP))?;
            host.add_route(&["default", "via", &format!("10.{}.0.1", 11 + i)])?;
            host.set_mtu("u0", Self::MTU)?;
            router.set_mtu(&r, Self::MTU)?;
            // Their ARP requests must not name the VIP (on their loopbacks) as sender.
            host.sysctl("net/ipv4/conf/all/arp_announce", "2")?;
            router.sysctl(&format!("net/ipv4/conf/{r}/rp_filter"), "0")?;
            let io = |source| NetnsError::Io {
                ns: router.name().to_owned(),
                what: format!("XDP pass on {r}"),
                source,
            };
            pass.push(testkit::xdp::PassProgram::attach(&router, &r).map_err(io)?);
            made.push(host);
        }
        // Replies from the VIP come back from every host, not only from where R routes it.
        for conf in ["all", "default", "r0"] {
            router.sysctl(&format!("net/ipv4/conf/{conf}/rp_filter"), "0")?;
        }
        client.software_checksums("c0")?;
        Ok(BehindRouter { client, router, hosts: made, _pass: pass })
    }

    /// R routes the VIP over `hosts` (a multipath route hashed on the 5-tuple,
    /// `fib_multipath_hash_policy = 1`), as a site's routers spread it over its hosts, which
    /// share the site's tunnel address `tunnel` (on their loopbacks).
    pub fn ecmp(&self, hosts: &[usize], tunnel: &str) -> Result<()> {
        self.router.sysctl("net/ipv4/fib_multipath_hash_policy", "1")?;
        let mut route = vec![format!("{}/32", Self::VIP)];
        for &h in hosts {
            route.extend(["nexthop".into(), "via".into(), Self::uplink(h)]);
            self.hosts[h].add_addr("lo", &format!("{tunnel}/32"))?;
        }
        self.router.add_route(&route.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// R routes the VIP through `host` alone (for the client's packets from `from`, if given;
    /// the client gets that address too).
    pub fn route_from(&self, from: Option<&str>, host: usize) -> Result<()> {
        let vip = format!("{}/32", Self::VIP);
        let via = Self::uplink(host);
        match from {
            None => self.router.ip(&["route", "replace", &vip, "via", &via]).map(drop),
            Some(addr) => {
                self.client.add_addr("c0", &format!("{addr}/24"))?;
                let table = (100 + host).to_string();
                self.router.ip(&["rule", "add", "from", addr, "table", &table])?;
                self.router.ip(&["route", "replace", &vip, "via", &via, "table", &table]).map(drop)
            }
        }
    }
}
