//! Three anycast sites and a client, for the load-aware steering tests and the lab (`cargo
//! xtask run`): every site a namespace with the VIP on its loopback, a UDP service that
//! records which flows it served, and (through [`crate::daemon::Daemon`]) its own `anycast
//! run`.
//!
//! ```text
//! client c0 10.1.0.2 ⇄ a0 10.1.0.1 [A] a1 10.2.0.1 ⇄ b0 10.2.0.2 [B]
//!                                  a2 10.3.0.1 ⇄ c0 10.3.0.2 [C]
//! ```
//!
//! Two VIPs on the same address: UDP port 5300 (the flows these tests count) and TCP port
//! 5301 (long-lived transfers, `crate::tcp`). The client routes the VIP to A (the nearest
//! site). A's tunnel address is 10.2.0.1; B and
//! C route the client's and each other's subnets back through A, so A's health probes
//! (answered to 10.2.0.1) and the services' replies find their way. A knows B's and C's MACs
//! as permanent neighbours (`bpf_fib_lookup` needs resolved ones).
//!
//! B and C answer the client directly (direct server return, through A: the topology's only
//! way back), so the backbone links carry IPIP's 20 bytes over the client's 1500-byte
//! packets with an MTU of [`BACKBONE_MTU`]: at 1500 the data path would answer full-size TCP
//! segments with ICMP frag-needed by XDP_TX, which a veth delivers only to a peer running
//! XDP (the client's does not), and the connections would stall. That path has its own test.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::{Netns, Result};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const UDP_PORT: u16 = 5300;
pub const TCP_PORT: u16 = 5301;
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
/// A's tunnel address (on a1), B's and C's (their only address).
pub const TUNNEL: [Ipv4Addr; 3] =
    [Ipv4Addr::new(10, 2, 0, 1), Ipv4Addr::new(10, 2, 0, 2), Ipv4Addr::new(10, 3, 0, 2)];
/// Every site's `[admin] peer_listen` port, on its tunnel address.
pub const PEER_PORT: u16 = 9101;
pub const NAMES: [&str; 3] = ["a", "b", "c"];
/// See the module docs.
pub const BACKBONE_MTU: u32 = 1600;

pub struct ThreeSites {
    pub client: Netns,
    /// A, B, C.
    pub sites: [Netns; 3],
}

impl ThreeSites {
    pub fn new(tag: &str) -> Result<ThreeSites> {
        let client = Netns::new(&format!("{tag}-cl"))?;
        let sites = [
            Netns::new(&format!("{tag}-a"))?,
            Netns::new(&format!("{tag}-b"))?,
            Netns::new(&format!("{tag}-c"))?,
        ];
        let [a, b, c] = &sites;
        client.add_veth("c0", a, "a0")?;
        a.add_veth("a1", b, "b0")?;
        a.add_veth("a2", c, "c0")?;
        client.add_addr("c0", &format!("{CLIENT}/24"))?;
        a.add_addr("a0", "10.1.0.1/24")?;
        a.add_addr("a1", "10.2.0.1/24")?;
        a.add_addr("a2", "10.3.0.1/24")?;
        b.add_addr("b0", "10.2.0.2/24")?;
        c.add_addr("c0", "10.3.0.2/24")?;
        for s in &sites {
            s.add_addr("lo", &format!("{VIP}/32"))?;
        }
        client.add_route(&[&format!("{VIP}/32"), "via", "10.1.0.1"])?;
        for net in ["10.1.0.0/24", "10.3.0.0/24"] {
            b.add_route(&[net, "via", "10.2.0.1"])?;
        }
        for net in ["10.1.0.0/24", "10.2.0.0/24"] {
            c.add_route(&[net, "via", "10.3.0.1"])?;
        }
        a.add_neigh("a1", "10.2.0.2", b.mac("b0")?)?;
        a.add_neigh("a2", "10.3.0.2", c.mac("c0")?)?;
        a.enable_forwarding()?;
        for (far, ifname, a_ifname) in [(b, "b0", "a1"), (c, "c0", "a2")] {
            far.set_mtu(ifname, BACKBONE_MTU)?;
            a.set_mtu(a_ifname, BACKBONE_MTU)?;
            // A site's ARP requests for A must not name the VIP as sender (A holds it too and
            // ignores such requests): the uplink's address instead, as on any direct-server-
            // return host with the VIP on its loopback.
            far.sysctl("net/ipv4/conf/all/arp_announce", "2")?;
            // And A forwards those answers although their source, the VIP, is one of its own
            // addresses (otherwise dropped as martians).
            a.sysctl(&format!("net/ipv4/conf/{a_ifname}/accept_local"), "1")?;
        }
        client.software_checksums("c0")?;
        Ok(ThreeSites { client, sites })
    }

    /// Site `me`'s config body: A steers the VIP over all three sites with `[load]` and
    /// `[health]` (`extra` appended); B and C serve it locally and decapsulate what A sends
    /// them. Capacities in packets/s.
    pub fn config(&self, me: usize, capacities: [u32; 3], extra: &str) -> String {
        let interfaces = if me == 0 { r#"["a0", "a1", "a2"]"# } else { &format!("[\"{}0\"]", NAMES[me]) };
        let mut text = format!("[local]\ninterfaces = {interfaces}\ntunnel_v4 = \"{}\"\n", TUNNEL[me]);
        let known: Vec<usize> = if me == 0 { vec![0, 1, 2] } else { vec![me, 0] };
        for i in known {
            text += &format!("\n[[sites]]\nname = \"{}\"\ncapacity = {}\n", NAMES[i], capacities[i]);
            if i == me {
                text += "local = true\n";
            } else {
                text += &format!("endpoint = \"{}\"\npeer = \"{}:{PEER_PORT}\"\n", TUNNEL[i], TUNNEL[i]);
            }
        }
        for (name, port) in [("udp", UDP_PORT), ("tcp", TCP_PORT)] {
            text += &format!(
                "\n[[vips]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{name}\"\n"
            );
            if me != 0 {
                text += &format!("sites = [\"{}\"]\n", NAMES[me]);
            }
        }
        text + extra
    }
}

/// A UDP service on the VIP in one namespace: which client source ports (flows) it served
/// and how many datagrams.
pub struct UdpService {
    served: Arc<Mutex<HashMap<u16, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpService {
    pub fn start(ns: &Netns) -> std::io::Result<UdpService> {
        // A socket stays in the namespace it was made in: make it there, serve from here.
        let socket = ns.run(|| UdpSocket::bind((VIP, UDP_PORT)))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let served: Arc<Mutex<HashMap<u16, u64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (served.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    *s.lock().unwrap().entry(from.port()).or_default() += 1;
                }
            }
        });
        Ok(UdpService { served, stop, thread: Some(thread) })
    }

    /// Flow (client port) → datagrams, so far.
    pub fn served(&self) -> HashMap<u16, u64> {
        self.served.lock().unwrap().clone()
    }

    pub fn datagrams(&self) -> u64 {
        self.served.lock().unwrap().values().sum()
    }
}

impl Drop for UdpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// New UDP flows to the VIP from the client: each a fresh source port (from [`PORTS`], in
/// order, wrapping around after 40,000 flows), a few datagrams each. Shared between threads:
/// one sends, others read what was sent so far.
pub struct FlowClient {
    source: Ipv4Addr,
    next_port: AtomicU32,
    datagrams_per_flow: u32,
    flows: AtomicU64,
    datagrams: AtomicU64,
}

/// The client's source ports; a test that needs every flow new opens fewer than 40,000.
pub const PORTS: std::ops::Range<u16> = 20_000..60_000;

impl Default for FlowClient {
    /// One datagram per flow.
    fn default() -> Self {
        FlowClient::new(1)
    }
}

impl FlowClient {
    pub fn new(datagrams_per_flow: u32) -> FlowClient {
        FlowClient::from(CLIENT, datagrams_per_flow)
    }

    /// From another of the client's addresses than [`CLIENT`].
    pub fn from(source: Ipv4Addr, datagrams_per_flow: u32) -> FlowClient {
        FlowClient {
            source,
            next_port: AtomicU32::new(0),
            datagrams_per_flow,
            flows: AtomicU64::new(0),
            datagrams: AtomicU64::new(0),
        }
    }

    /// Opens `count` new flows at `rate` per second from inside `ns` (or fewer if `stop`
    /// says so); returns their source ports. Bounded by `count / rate` plus the sends.
    pub fn send(&self, ns: &Netns, rate: u32, count: u32, stop: &AtomicBool) -> std::io::Result<Vec<u16>> {
        let span = u32::from(PORTS.end - PORTS.start);
        let first = self.next_port.fetch_add(count, Ordering::Relaxed);
        let ports = (first..first + count).map(|n| PORTS.start + (n % span) as u16).collect();
        self.paced(ns, rate, ports, stop)
    }

    /// One more round of datagrams on each of these (established) flows, at `rate` per second.
    pub fn resend(&self, ns: &Netns, rate: u32, ports: &[u16]) -> std::io::Result<Vec<u16>> {
        self.paced(ns, rate, ports.to_vec(), &AtomicBool::new(false))
    }

    /// Flows opened so far.
    pub fn flows(&self) -> u64 {
        self.flows.load(Ordering::Relaxed)
    }

    /// Datagrams sent so far.
    pub fn datagrams(&self) -> u64 {
        self.datagrams.load(Ordering::Relaxed)
    }

    fn paced(&self, ns: &Netns, rate: u32, from: Vec<u16>, stop: &AtomicBool) -> std::io::Result<Vec<u16>> {
        let start = Instant::now();
        let mut ports = Vec::with_capacity(from.len());
        let dst = SocketAddr::from((VIP, UDP_PORT));
        ns.run(|| {
            for (i, port) in from.into_iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate.max(1) as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let socket = UdpSocket::bind((self.source, port))?;
                for _ in 0..self.datagrams_per_flow {
                    socket.send_to(&port.to_be_bytes(), dst)?;
                    self.datagrams.fetch_add(1, Ordering::Relaxed);
                }
                self.flows.fetch_add(1, Ordering::Relaxed);
                ports.push(port);
            }
            Ok(ports)
        })
    }
}
