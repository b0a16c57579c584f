//! Topologies that several real-packet tests share.

use testkit::netns::{Netns, Result};

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
