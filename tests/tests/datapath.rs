//! The data-path fixture suite: every rule of docs/datapath.md, packet by packet, in the
//! real kernel (BPF_PROG_RUN on the embedded `anycast` object).
//!
//! The table [`cases`] comes first: one row per case — name, input frame, expected action
//! and output frame (byte-exact for encapsulation, decapsulation and ICMP replies, built by
//! `anycast_tests::expect` from the document's rules, never from the program's output),
//! expected counter changes (every other watched counter must stay put). Scenario rows
//! (several frames with map changes between them) follow the single-frame rows.
//!
//! The map state every case starts from ([`world`]) and the network namespace the suite runs
//! in ([`Topology`], so that `bpf_fib_lookup` finds routes, neighbours and MTUs) are below
//! the table. Run only this suite: `cargo xtask test datapath` (or `cargo test datapath`);
//! one case: `FIXTURE_FILTER=name cargo test datapath`.

use std::sync::Mutex;

use anycast_common::{
    Action as Act, AddrKey, Encap, Event as Ev_, Exception as E, FlowKey, FlowValue, HashKey, LocalConfig,
    NextHop, SiteInfo, VipInfo, VipKey,
    config::{CONFIG_TUNNEL_V4, CONFIG_TUNNEL_V6, Limit},
    flow::embryo_slot,
    site::{MAGLEV_CHECK, MAGLEV_LOCAL, SITE_CONFIGURED, SITE_LOCAL, SITE_NONE, SITE_UP},
    vip::VIP_STATELESS,
};
use anycast_tests::{
    anchor,
    expect::{self, Tunnel},
    fixture::{Case, Count, Count::*, Expect, Frame, Instance, MapsCheck, MapsOp, Step, Suite},
    netns::Netns,
    packet::*,
    reference::{self, KEY},
};
use anycast_user::datapath::{addresses::filter_index, maps::DataPathMaps};
use testkit::require::{Need, require};

// Exception counters, short: reason and action.
const fn pass(e: E) -> Count {
    Exc(e, Act::Pass)
}
const fn dropped(e: E) -> Count {
    Exc(e, Act::Drop)
}
const fn replied(e: E) -> Count {
    Exc(e, Act::Tx)
}
const TRUNC: Count = pass(E::Truncated);
const BAD: Count = pass(E::BadHeader);
const FRAG: Count = Ev(Ev_::Fragment);
const PINNED: Count = Ev(Ev_::Pinned);

const C4: &str = "192.168.1.42"; // client
const C6: &str = "2001:db8::42";
/// A client address that is not the suite's: a forged SYN's SYN-ACK goes there, and no
/// socket of the host's answers it with a reset.
const FORGED: &str = "192.168.1.99";
const R4: &str = "192.168.1.254"; // a router on the path (ICMP errors)
const R6: &str = "2001:db8::fe";

/// The table. Row shapes:
/// - `one(name, input frame, expected action/output, counter changes)`;
/// - `local(name, packet, vip)`: PASS untouched, `Vip(vip)`, `Local(S_LOCAL)` and the
///   events of its path ([`path_events`]);
/// - `fwd(name, packet, vip)`: encapsulated towards the site of the VIP's one-slot table
///   (XDP_TX, or XDP_REDIRECT for another egress), `Vip(vip)`, `Fwd(site)` and its events;
/// - `decap(name, tunnel packet, site)`: stripped, PASS, `Rcvd(site)`;
/// - `probe(name, tunnel packet, site)`: a health probe, stripped, PASS, `Probe(site)`.
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let v4 = |site: u32| format!("10.200.0.{site}"); // VIP served by `site` (VIP index = site)
    let v6 = |site: u32| format!("fd00:200::{site}"); // VIP index 16 + site
    let (v4, v6) = (&v4, &v6);
    let big4 = |site: u32, len: usize| udp(C4, &v4(site), 40000, 53).ip_len(len);
    let big6 = |site: u32, len: usize| udp(C6, &v6(site), 40000, 53).ip_len(len);
    let too_big4 = |p: Packet, mtu: u32, vip: u32| {
        let out = expect::too_big_reply(&p, mtu);
        one_p(p, Expect::Tx(out), vec![Vip(vip), replied(E::TooBig)])
    };
    let not_answered = |p: Packet, vip: u32| one_p(p, Expect::Drop, vec![Vip(vip), dropped(E::TooBig), Ev(Ev_::IcmpNotAnswered)]);
    let mut c = vec![
        // ---- Layer 2 -------------------------------------------------------------------
        one("arp_passes_uncounted", arp_request([10, 0, 0, 2], [10, 0, 0, 1]), Expect::Pass, &[]),
        one("lldp_ethertype_passes", set(udp(C4, &v4(0), 1, 53).frame(), 12, &[0x88, 0xcc]), Expect::Pass, &[]),
        one("three_vlan_tags_pass_uncounted", udp(C4, &v4(0), 1, 53).tags(&[(TPID_8021AD, 1), (TPID_8021Q, 2), (TPID_8021Q, 3)]).frame(), Expect::Pass, &[]),
        local("vlan_single_tcp4_local", tcp(C4, &v4(0), 40000, 80, SYN).vlan(100), 0),
        local("vlan_double_udp6_local", udp(C6, &v6(0), 40000, 53).qinq(10, 20), 16),
        fwd("vlan_single_tcp4_forward_ipip", tcp(C4, &v4(1), 40000, 80, SYN).vlan(100), 1),
        fwd("vlan_double_udp6_forward_gue6", udp(C6, &v6(4), 40000, 53).qinq(10, 20), 20),
        // ---- Not for us: PASS, untouched, no counter ------------------------------------
        one("ipv4_non_vip_passes", udp(C4, "10.9.9.9", 1, 53).frame(), Expect::Pass, &[]),
        one("ipv6_non_vip_passes", tcp(C6, "2001:db8::99", 1, 80, SYN).frame(), Expect::Pass, &[]),
        one("vip_address_other_port_passes", tcp(C4, &v4(0), 1, 8080, SYN).frame(), Expect::Pass, &[]),
        one("vip_address_other_proto_passes", udp(C4, &v4(0), 1, 80).frame(), Expect::Pass, &[]),
        one("address_on_a_vip_filter_slot_passes", udp(C4, SLOT_NEIGHBOUR, 1, 443).frame(), Expect::Pass, &[]),
        one("overflowing_address_other_port_passes", tcp(C4, "10.200.7.1", 1, 7999, SYN).frame(), Expect::Pass, &[]),
        one("icmp_echo_to_tcp_vip_passes", echo(C4, &v4(0)).frame(), Expect::Pass, &[]),
        one("non_vip_ihl_below_5_not_inspected", set(udp(C4, "10.9.9.9", 1, 53).frame(), 14, &[0x44]), Expect::Pass, &[]),
        // ---- VIP, local site ------------------------------------------------------------
        local("tcp4_vip_local", tcp(C4, &v4(0), 40000, 80, SYN), 0),
        local("udp4_vip_local_pinned", udp(C4, &v4(0), 40000, 53), 0),
        local("tcp6_vip_local", tcp(C6, &v6(0), 40000, 80, SYN), 16),
        local("udp6_vip_local_pinned", udp(C6, &v6(0), 40000, 53), 16),
        local("tcp4_vip_local_ethernet_padding", tcp(C4, &v4(0), 40000, 80, SYN).payload_len(0).pad_to(60), 0),
        local("ipv4_options_vip_local", tcp(C4, &v4(0), 40000, 80, SYN).options(&[1, 1, 1, 1, 0x94, 4, 0, 0]), 0),
        local("icmp_echo_to_icmp_vip_local", echo(C4, "10.200.3.1"), 36),
        local("icmpv6_echo_to_icmpv6_vip_local", echo(C6, "fd00:200:3::1"), 37),
        local("vip_any_port_entry", udp(C4, "10.200.9.1", 40000, 5353), 32),
        // A mid-flow TCP packet in a local bucket that never was remote: local, no lookup.
        local("tcp_ack_local_bucket_without_check_local", tcp(C4, &v4(0), 40000, 80, ACK), 0),
        // ---- VIP, remote site: each encapsulation, TCP and UDP, v4 and v6 --------------
        fwd("tcp4_forward_ipip", tcp(C4, &v4(1), 40000, 80, SYN), 1),
        fwd("udp4_forward_ipip", udp(C4, &v4(1), 40000, 53), 1),
        fwd("tcp6_forward_6in4", tcp(C6, &v6(1), 40000, 80, SYN), 17),
        fwd("udp6_forward_6in4", udp(C6, &v6(1), 40000, 53), 17),
        fwd("tcp6_forward_ip6ip6", tcp(C6, &v6(2), 40000, 80, SYN), 18),
        fwd("udp6_forward_ip6ip6", udp(C6, &v6(2), 40000, 53), 18),
        fwd("tcp4_forward_4in6", tcp(C4, &v4(2), 40000, 80, SYN), 2),
        fwd("udp4_forward_4in6", udp(C4, &v4(2), 40000, 53), 2),
        fwd("tcp4_forward_gue4", tcp(C4, &v4(3), 40000, 80, SYN), 3),
        fwd("udp4_forward_gue4", udp(C4, &v4(3), 40000, 53), 3),
        fwd("tcp6_forward_gue4", tcp(C6, &v6(3), 40000, 80, SYN), 19),
        fwd("udp6_forward_gue4", udp(C6, &v6(3), 40000, 53), 19),
        fwd("tcp4_forward_gue6", tcp(C4, &v4(4), 40000, 80, SYN), 4),
        fwd("udp4_forward_gue6", udp(C4, &v4(4), 40000, 53), 4),
        fwd("tcp6_forward_gue6", tcp(C6, &v6(4), 40000, 80, SYN), 20),
        fwd("udp6_forward_gue6", udp(C6, &v6(4), 40000, 53), 20),
        fwd("forward_ipip_copies_tos", udp(C4, &v4(1), 40000, 53).tos(0xb8), 1),
        fwd("forward_ip6ip6_copies_traffic_class", udp(C6, &v6(2), 40000, 53).tos(0x2e), 18),
        fwd("forward_keeps_ethernet_padding", tcp(C4, &v4(1), 40000, 80, SYN).payload_len(0).pad_to(60), 1),
        fwd("forward_sets_df_on_outer_even_without_inner_df", udp(C4, &v4(1), 40000, 53).df(false), 1),
        fwd("forward_ipv4_max_options", tcp(C4, &v4(1), 40000, 80, SYN).options(&[1; 40]), 1),
        fwd("vip_exact_port_beats_any_port", udp(C4, "10.200.9.1", 40000, 443), 33),
        local("vip_overflowing_address_exact_port", tcp(C4, "10.200.7.1", 40000, 7005, SYN), 45),
        fwd("vip_overflowing_address_any_port", udp(C4, "10.200.7.1", 40000, 9999), 46),
        fwd("vip_shared_slot_first_address", udp(C4, "10.200.8.1", 40000, 53), 47),
        local("vip_shared_slot_second_address", udp(C4, SLOT_SHARER, 40000, 53), 48),
        fwd("forward_redirect_to_other_interface", tcp(C4, &v4(8), 40000, 80, SYN), 8),
        // A mid-flow TCP packet of a remote bucket with no pin, socket or embryo: forwarded
        // by the bucket, nothing recorded.
        fwd("tcp_ack_without_state_forwarded_unpinned", tcp(C4, &v4(1), 40000, 80, ACK), 1),
        // UDP of an `affinity = "none"` VIP: the bucket only, no state.
        fwd("udp_stateless_vip_forwarded_without_pin", udp(C4, "10.200.6.1", 40000, 53), 41),
        // ---- Forwarding fails: a new flow is served locally, a remote flow's packet dropped
        one("forward_egress_not_in_devmap_syn_served_locally", tcp(C4, &v4(9), 40000, 80, SYN).frame(), Expect::Pass, &[Vip(9), Local(S_LOCAL), pass(E::NoEgress)]),
        one("forward_egress_not_in_devmap_ack_dropped", tcp(C4, &v4(9), 40000, 80, ACK).frame(), Expect::Drop, &[Vip(9), dropped(E::NoEgress), Ev(Ev_::FlowUnknown)]),
        one("forward_no_route_syn_served_locally", tcp(C4, &v4(10), 40000, 80, SYN).frame(), Expect::Pass, &[Vip(10), Local(S_LOCAL), pass(E::FibFailed)]),
        one("forward_no_route_ack_dropped", tcp(C4, &v4(10), 40000, 80, PSH_ACK).frame(), Expect::Drop, &[Vip(10), dropped(E::FibFailed), Ev(Ev_::FlowUnknown)]),
        one("forward_no_neighbour_v4_syn_served_locally", tcp(C4, &v4(6), 40000, 80, SYN).frame(), Expect::Pass, &[Vip(6), Local(S_LOCAL), pass(E::FibNoNeigh)]),
        one("forward_no_neighbour_v4_ack_dropped", tcp(C4, &v4(6), 40000, 80, ACK).frame(), Expect::Drop, &[Vip(6), dropped(E::FibNoNeigh), Ev(Ev_::FlowUnknown)]),
        one("forward_no_neighbour_v6_syn_served_locally", tcp(C6, &v6(11), 40000, 80, SYN).frame(), Expect::Pass, &[Vip(27), Local(S_LOCAL), pass(E::FibNoNeigh)]),
        // The first packet of a pinned UDP flow is served locally, and pinned there.
        one("forward_no_neighbour_udp_first_packet_pinned_locally", udp(C4, &v4(6), 40000, 53).frame(), Expect::Pass, &[Vip(6), Local(S_LOCAL), pass(E::FibNoNeigh), PINNED]),
        one("forward_no_neighbour_stateless_udp_served_locally", udp(C4, "10.200.6.2", 40000, 53).frame(), Expect::Pass, &[Vip(42), Local(S_LOCAL), pass(E::FibNoNeigh)]),
        one("vip_without_maglev_table", tcp(C4, "10.200.4.1", 40000, 80, SYN).frame(), Expect::Pass, &[Vip(38), pass(E::NoSite)]),
        one("maglev_table_of_site_none", tcp(C4, "10.200.4.2", 40000, 80, SYN).frame(), Expect::Pass, &[Vip(39), pass(E::NoSite)]),
        one("maglev_names_site_down", tcp(C4, &v4(5), 40000, 80, SYN).frame(), Expect::Pass, &[Vip(5), pass(E::SiteDown)]),
        one("maglev_names_unconfigured_site", tcp(C4, &v4(7), 40000, 80, SYN).frame(), Expect::Pass, &[Vip(7), pass(E::SiteDown)]),
        // ---- Too big for the egress MTU (lb0: 1400): answered (rate-limited) or dropped, never passed
        fwd("ipip_exactly_at_mtu_forwarded", big4(1, 1380), 1),
        case("ipip_df_over_mtu_icmp_reply", too_big4(big4(1, 1381), 1380, 1)),
        case("ipip_no_df_over_mtu_icmp_reply_too", too_big4(big4(1, 1381).df(false), 1380, 1)),
        case("gue4_over_mtu_reply_counts_udp", too_big4(big4(3, 1373), 1372, 3)),
        case("ip6ip6_over_mtu_ptb_reply", too_big4(big6(2, 1361), 1360, 18)),
        case("ptb_reply_quotes_8_bytes_after_fixed_header", too_big4(big6(2, 1380).ext(Ext::HopByHop(0)), 1360, 18)),
        case("gue6_over_mtu_ptb_reply", too_big4(big6(4, 1353), 1352, 20)),
        case("too_big_reply_keeps_vlan_and_quotes_options", too_big4(big4(1, 1390).vlan(7).options(&[1, 1, 1, 1]), 1380, 1)),
        case("too_big_first_fragment_answered_never_passed", {
            let p = udp(C4, "10.200.2.1", 40000, 53).payload_len(1400).first_fragment(173);
            let out = expect::too_big_reply(&p, 1372);
            one_p(p, Expect::Tx(out), vec![Vip(34), replied(E::TooBig), FRAG])
        }),
        case("too_big_from_multicast_source_not_answered", not_answered(udp("224.0.0.5", &v4(1), 40000, 53).ip_len(1381), 1)),
        case("too_big_from_loopback_source_not_answered", not_answered(udp("127.0.0.1", &v4(1), 40000, 53).ip_len(1381), 1)),
        case("too_big_from_unspecified_source_not_answered", not_answered(udp("0.0.0.0", &v4(1), 40000, 53).ip_len(1381), 1)),
        case("too_big_from_broadcast_source_not_answered", not_answered(udp("255.255.255.255", &v4(1), 40000, 53).ip_len(1381), 1)),
        case("too_big_from_our_vip_source_not_answered", not_answered(udp("10.200.0.0", &v4(1), 40000, 53).ip_len(1381), 1)),
        case("too_big_from_our_tunnel_source_not_answered", not_answered(udp(TUNNEL_V4, &v4(1), 40000, 53).ip_len(1381), 1)),
        case("too_big_from_ipv6_multicast_not_answered", not_answered(udp("ff02::1", &v6(2), 40000, 53).ip_len(1361), 18)),
        case("too_big_icmp_error_never_answered", {
            let mut p = echo(C4, "10.200.3.2");
            p.l4 = L4::Icmp { typ: 3, code: 1, rest: [0; 4], body: payload(1400), about: None };
            not_answered(p, 43)
        }),
        // ---- IPv4 header validation (VIP candidates) ---------------------------------------
        one("ipv4_ihl_below_5", set(tcp(C4, &v4(0), 1, 80, SYN).frame(), 14, &[0x44]), Expect::Pass, &[BAD]),
        one("ipv4_wrong_version", set(tcp(C4, &v4(0), 1, 80, SYN).frame(), 14, &[0x65]), Expect::Pass, &[BAD]),
        one("ipv4_total_length_beyond_frame", set(tcp(C4, &v4(0), 1, 80, SYN).frame(), 16, &[0x05, 0xdc]), Expect::Pass, &[BAD]),
        one("ipv4_total_length_below_header", set(tcp(C4, &v4(0), 1, 80, SYN).frame(), 16, &[0, 19]), Expect::Pass, &[BAD]),
        one("ipv4_frame_cut_short_of_total_length", cut(tcp(C4, &v4(0), 1, 80, SYN).frame(), 60), Expect::Pass, &[BAD]),
        one("ipv6_payload_length_beyond_frame", set(tcp(C6, &v6(0), 1, 80, SYN).frame(), 18, &[0x05, 0xdc]), Expect::Pass, &[BAD]),
        one("ipv6_wrong_version", set(tcp(C6, &v6(0), 1, 80, SYN).frame(), 14, &[0x40]), Expect::Pass, &[BAD]),
        // ---- Ethernet padding is never read as a header ------------------------------------
        one("padding_not_udp_header", padded_l4(udp(C4, &v4(0), 1, 53), 4), Expect::Pass, &[TRUNC]),
        one("padding_not_tcp_header", padded_l4(tcp(C4, &v4(0), 1, 80, SYN), 12), Expect::Pass, &[TRUNC]),
        one("padding_not_icmp_header", padded_l4(echo(C4, "10.200.3.1"), 4), Expect::Pass, &[TRUNC]),
        one("padding_not_icmp_quote", padded_l4(too_big_error(R4, &v4(0), 1300, &tcp(&v4(0), C4, 80, 40000, ACK)), 8 + 20 + 2), Expect::Pass, &[TRUNC]),
        one("padding_not_ipv6_ext_header", padded_ip6(udp(C6, &v6(0), 1, 53).ext(Ext::HopByHop(1)), 8), Expect::Pass, &[TRUNC]),
        one("padding_not_tunnelled_inner_header", padded_l4(ip_in_ip("10.0.0.2", TUNNEL_V4, &udp(C4, &v4(1), 1, 53)), 12), Expect::Drop, &[dropped(E::DecapBadInner)]),
        // ---- IPv6 extension headers ---------------------------------------------------
        local("ipv6_hop_by_hop_vip_local", tcp(C6, &v6(0), 40000, 80, SYN).ext(Ext::HopByHop(0)), 16),
        local("ipv6_routing_no_segments_left_vip_local", tcp(C6, &v6(0), 40000, 80, SYN).ext(Ext::Routing(2)), 16),
        one("ipv6_routing_with_segments_left_not_steered", set(tcp(C6, &v6(0), 40000, 80, SYN).ext(Ext::Routing(2)).frame(), 54 + 3, &[1]), Expect::Pass, &[pass(E::ExtHeaderLimit)]),
        local("ipv6_dst_opts_vip_local", udp(C6, &v6(0), 40000, 53).ext(Ext::DstOpts(1)), 16),
        local("ipv6_atomic_fragment_is_no_fragment", udp(C6, &v6(0), 40000, 53).ext(Ext::Fragment { offset: 0, more: false, id: 9 }), 16),
        fwd("ipv6_four_ext_headers_forwarded_whole", tcp(C6, &v6(2), 40000, 80, SYN)
            .ext(Ext::HopByHop(0)).ext(Ext::DstOpts(0)).ext(Ext::Routing(0)).ext(Ext::DstOpts(1)), 18),
        one("ipv6_five_ext_headers_limit", tcp(C6, &v6(0), 40000, 80, SYN)
            .ext(Ext::HopByHop(0)).ext(Ext::DstOpts(0)).ext(Ext::Routing(0)).ext(Ext::DstOpts(0)).ext(Ext::DstOpts(0)).frame(),
            Expect::Pass, &[pass(E::ExtHeaderLimit)]),
        // ---- Fragments: keyed without ports, any-port entry only, pinned ----------------
        fwd("ipv4_first_fragment_any_port", udp(C4, "10.200.2.1", 40000, 53).payload_len(64).first_fragment(4), 34),
        fwd("ipv4_later_fragment_any_port", udp(C4, "10.200.2.1", 40000, 53).payload_len(64).last_fragment(4), 34),
        fwd("ipv6_first_fragment_any_port", udp(C6, "fd00:200:2::1", 40000, 53).payload_len(64).first_fragment(4), 35),
        fwd("ipv6_later_fragment_any_port", udp(C6, "fd00:200:2::1", 40000, 53).payload_len(64).last_fragment(4), 35),
        // A first fragment whose L4 header is cut short is steered like the others (no L4
        // header of a fragment is read), not passed as truncated.
        fwd("ipv4_first_fragment_with_short_tcp_header_steered", tcp(C4, "10.200.2.1", 40000, 443, SYN).payload_len(64).first_fragment(1), 44),
        one("fragment_without_any_port_entry_passes", udp(C4, "10.200.5.1", 40000, 53).payload_len(64).first_fragment(4).frame(), Expect::Pass, &[]),
        one("later_fragment_without_any_port_entry_passes", udp(C4, "10.200.5.1", 40000, 53).payload_len(64).last_fragment(4).frame(), Expect::Pass, &[]),
        // The walk stops at a real fragment header: what follows is payload (here bytes that
        // would read as a destination-options header), and the key's protocol is the
        // fragment header's Next Header for every fragment.
        one("ipv6_later_fragment_payload_not_walked", set(udp(C6, "fd00:200:2::1", 40000, 53).payload_len(64).last_fragment(4).frame(), 54, &[60]), Expect::Pass, &[]),
        // ---- Truncated at every header boundary ------------------------------------------
        // (A frame shorter than Ethernet's 14 bytes never reaches XDP: BPF_PROG_RUN refuses
        // it with EINVAL, and a device drops it before its driver runs the program.)
        one("truncated_in_vlan_tag", cut(udp(C4, &v4(0), 1, 53).vlan(5).frame(), 16), Expect::Pass, &[TRUNC]),
        one("truncated_in_second_vlan_tag", cut(udp(C4, &v4(0), 1, 53).qinq(5, 6).frame(), 20), Expect::Pass, &[TRUNC]),
        one("truncated_ipv4_header", cut(udp(C4, &v4(0), 1, 53).frame(), 14 + 19), Expect::Pass, &[TRUNC]),
        one("truncated_ipv4_header_after_vlan", cut(udp(C4, &v4(0), 1, 53).vlan(5).frame(), 18 + 19), Expect::Pass, &[TRUNC]),
        one("truncated_ipv6_header", cut(udp(C6, &v6(0), 1, 53).frame(), 14 + 39), Expect::Pass, &[TRUNC]),
        one("truncated_in_ipv4_options", cut(udp(C4, &v4(0), 1, 53).options(&[1; 8]).frame(), 14 + 24), Expect::Pass, &[TRUNC]),
        one("truncated_in_ipv6_ext_header", ip6_cut(udp(C6, &v6(0), 1, 53).ext(Ext::HopByHop(1)), 12), Expect::Pass, &[TRUNC]),
        one("truncated_in_ipv6_fragment_header", ip6_cut(udp(C6, &v6(0), 1, 53).ext(Ext::Fragment { offset: 0, more: true, id: 1 }), 6), Expect::Pass, &[TRUNC]),
        one("truncated_tcp4", ip4_cut(tcp(C4, &v4(0), 1, 80, SYN), 19), Expect::Pass, &[TRUNC]),
        one("truncated_udp4", ip4_cut(udp(C4, &v4(0), 1, 53), 7), Expect::Pass, &[TRUNC]),
        one("truncated_tcp6", ip6_cut(tcp(C6, &v6(0), 1, 80, SYN), 19), Expect::Pass, &[TRUNC]),
        one("truncated_udp6", ip6_cut(udp(C6, &v6(0), 1, 53), 7), Expect::Pass, &[TRUNC]),
        one("truncated_icmp", ip4_cut(echo(C4, "10.200.3.1"), 7), Expect::Pass, &[TRUNC]),
        one("truncated_icmpv6", ip6_cut(echo(C6, "fd00:200:3::1"), 7), Expect::Pass, &[TRUNC]),
        one("truncated_frag_needed_inner_ip", too_big_error(R4, &v4(0), 1300, &tcp(&v4(0), C4, 80, 40000, ACK)).quote_len(19).frame(), Expect::Pass, &[TRUNC]),
        one("truncated_frag_needed_inner_ports", too_big_error(R4, &v4(0), 1300, &tcp(&v4(0), C4, 80, 40000, ACK)).quote_len(23).frame(), Expect::Pass, &[TRUNC]),
        one("truncated_ptb_inner_ip", too_big_error(R6, &v6(0), 1300, &tcp(&v6(0), C6, 80, 40000, ACK)).quote_len(39).frame(), Expect::Pass, &[TRUNC]),
        one("truncated_ptb_inner_ports", too_big_error(R6, &v6(0), 1300, &tcp(&v6(0), C6, 80, 40000, ACK)).quote_len(43).frame(), Expect::Pass, &[TRUNC]),
        // ---- ICMP errors follow the flow they are about -----------------------------------
        local("frag_needed_for_local_flow", too_big_error(R4, &v4(0), 1300, &tcp(&v4(0), C4, 80, 40000, ACK)), 0),
        fwd("frag_needed_for_remote_flow_gue4", too_big_error(R4, &v4(3), 1300, &tcp(&v4(3), C4, 80, 40000, ACK)), 3),
        fwd("ptb_for_remote_flow_ip6ip6", too_big_error(R6, &v6(2), 1280, &udp(&v6(2), C6, 53, 40000)), 18),
        fwd("ptb_for_remote_flow_gue6", too_big_error(R6, &v6(4), 1280, &tcp(&v6(4), C6, 80, 40000, ACK)), 20),
        one("frag_needed_about_non_vip_passes", too_big_error(R4, &v4(0), 1300, &tcp(&v4(0), C4, 8080, 40000, ACK)).frame(), Expect::Pass, &[]),
        one("other_icmp_error_is_plain_icmp", set(too_big_error(R4, &v4(0), 1300, &tcp(&v4(0), C4, 80, 40000, ACK)).frame(), 35, &[1]), Expect::Pass, &[]),
        // A quoted non-first fragment has no ports: ordinary ICMP (no ICMP VIP on v4(0)).
        one("frag_needed_quoting_later_fragment_is_plain_icmp", set(too_big_error(R4, &v4(0), 1300, &tcp(&v4(0), C4, 80, 40000, ACK)).frame(), 42 + 6, &[0x00, 0x10]), Expect::Pass, &[]),
        // ---- Decapsulation: stripped, counted as received from the sender, not steered ----
        decap("decap_ipip", ip_in_ip("10.0.0.2", "10.0.0.1", &tcp(C4, &v4(1), 40000, 80, SYN)), 1),
        decap("decap_6in4", ip_in_ip("10.0.0.2", "10.0.0.1", &tcp(C6, &v6(1), 40000, 80, SYN)), 1),
        decap("decap_ip6ip6", ip_in_ip("fd00::2", "fd00::1", &udp(C6, &v6(2), 40000, 53)), 2),
        decap("decap_4in6", ip_in_ip("fd00::2", "fd00::1", &udp(C4, &v4(2), 40000, 53)), 2),
        decap("decap_gue4_inner_v4", gue("10.0.0.3", "10.0.0.1", 49999, 6080, &tcp(C4, &v4(3), 40000, 80, SYN)), 3),
        decap("decap_gue4_inner_v6", gue("10.0.0.3", "10.0.0.1", 49999, 6080, &tcp(C6, &v6(3), 40000, 80, SYN)), 3),
        decap("decap_gue6_inner_v4", gue("fd00::3", "fd00::1", 49999, 6080, &udp(C4, &v4(4), 40000, 53)), 4),
        decap("decap_gue6_inner_v6", gue("fd00::3", "fd00::1", 49999, 6080, &udp(C6, &v6(4), 40000, 53)), 4),
        decap("decap_under_two_vlan_tags", ip_in_ip("fd00::3", "fd00::1", &udp(C6, &v6(4), 40000, 53)).qinq(3, 4), 4),
        decap("decap_under_vlan", ip_in_ip("10.0.0.2", "10.0.0.1", &tcp(C4, &v4(1), 40000, 80, SYN)).vlan(42), 1),
        decap("decap_outer_ipv4_options", ip_in_ip("10.0.0.2", "10.0.0.1", &tcp(C4, &v4(1), 40000, 80, SYN)).options(&[1; 12]), 1),
        decap("decap_outer_ipv6_ext_header", ip_in_ip("fd00::2", "fd00::1", &udp(C6, &v6(2), 40000, 53)).ext(Ext::DstOpts(0)), 2),
        decap("decap_keeps_ethernet_padding", ip_in_ip("10.0.0.2", "10.0.0.1", &udp(C4, &v4(1), 1, 53).payload_len(0)).pad_to(64), 1),
        decap("decapsulated_vip_flow_not_resteered", ip_in_ip("10.0.0.3", "10.0.0.1", &tcp(C4, &v4(1), 40000, 80, SYN)), 3),
        decap("decap_inner_any_vip_entry_of_the_address", ip_in_ip("10.0.0.2", "10.0.0.1", &tcp(C4, &v4(1), 40000, 8080, SYN)), 1),
        // ---- Decapsulation accepts only what a sibling's data path sends -----------------
        one("decap_inner_destination_not_ours_dropped", ip_in_ip("10.0.0.2", "10.0.0.1", &udp(C4, "10.9.9.9", 1, 53)).frame(), Expect::Drop, &[dropped(E::DecapForeign)]),
        one("decap_inner_to_host_address_dropped", ip_in_ip("10.0.0.2", "10.0.0.1", &tcp(C4, "10.0.0.1", 1, 22, SYN)).frame(), Expect::Drop, &[dropped(E::DecapForeign)]),
        one("decap_inner_ipv6_not_ours_dropped", ip_in_ip("fd00::2", "fd00::1", &udp(C6, "2001:db8::99", 1, 53)).frame(), Expect::Drop, &[dropped(E::DecapForeign)]),
        one("decap_gue_inner_not_ours_dropped", gue("10.0.0.3", "10.0.0.1", 49999, 6080, &udp(C4, "198.51.100.9", 1, 53)).frame(), Expect::Drop, &[dropped(E::DecapForeign)]),
        one("decap_echo_to_other_address_dropped", ip_in_ip("10.0.0.2", "10.0.0.1", &echo("10.0.0.2", "10.0.0.9")).frame(), Expect::Drop, &[dropped(E::DecapForeign)]),
        one("decap_non_echo_to_tunnel_address_dropped", ip_in_ip("10.0.0.2", "10.0.0.1", &udp("10.0.0.2", "10.0.0.1", 1, 53)).frame(), Expect::Drop, &[dropped(E::DecapForeign)]),
        one("decap_unknown_peer_dropped", ip_in_ip("10.0.0.77", "10.0.0.1", &tcp(C4, &v4(1), 40000, 80, SYN)).frame(), Expect::Drop, &[dropped(E::DecapUnknownPeer)]),
        one("decap_inner_version_mismatch", set(ip_in_ip("10.0.0.2", "10.0.0.1", &udp(C4, &v4(0), 1, 53)).frame(), 34, &[0x65]), Expect::Drop, &[dropped(E::DecapBadInner)]),
        one("decap_inner_ipv6_too_short", ip_in_ip("fd00::2", "fd00::1", &udp(C6, &v6(0), 1, 53)).cut_l4(39).frame(), Expect::Drop, &[dropped(E::DecapBadInner)]),
        one("decap_inner_too_short", ip_in_ip("10.0.0.2", "10.0.0.1", &udp(C4, &v4(0), 1, 53)).cut_l4(12).frame(), Expect::Drop, &[dropped(E::DecapBadInner)]),
        one("decap_inner_length_beyond_outer", set(ip_in_ip("10.0.0.2", "10.0.0.1", &udp(C4, &v4(1), 1, 53)).frame(), 34 + 2, &[0x01, 0x00]), Expect::Drop, &[dropped(E::DecapBadInner)]),
        one("decap_inner_ihl_below_5", set(ip_in_ip("10.0.0.2", "10.0.0.1", &udp(C4, &v4(1), 1, 53)).frame(), 34, &[0x44]), Expect::Drop, &[dropped(E::DecapBadInner)]),
        one("decap_gue_payload_not_ip", set(gue("10.0.0.3", "10.0.0.1", 49999, 6080, &udp(C4, &v4(0), 1, 53)).frame(), 42, &[0x15]), Expect::Drop, &[dropped(E::DecapBadInner)]),
        one("udp_to_tunnel_address_other_port_passes", udp("10.0.0.3", "10.0.0.1", 49999, 6081).frame(), Expect::Pass, &[]),
        // ---- RFC 6040 ECN at decapsulation -----------------------------------------------
        one("decap_outer_ce_marks_ect_inner", ip_in_ip("10.0.0.2", "10.0.0.1", &udp(C4, &v4(1), 1, 53).tos(0x02)).tos(0x03).frame(),
            Expect::PassAs(expect::decapsulated(&ip_in_ip("10.0.0.2", "10.0.0.1", &udp(C4, &v4(1), 1, 53).tos(0x03)))), &[Rcvd(1)]),
        one("decap_outer_ce_marks_ect1_ipv6_inner", ip_in_ip("fd00::2", "fd00::1", &udp(C6, &v6(2), 1, 53).tos(0x01)).tos(0x03).frame(),
            Expect::PassAs(expect::decapsulated(&ip_in_ip("fd00::2", "fd00::1", &udp(C6, &v6(2), 1, 53).tos(0x03)))), &[Rcvd(2)]),
        decap("decap_outer_ce_over_ce_inner_unchanged", ip_in_ip("10.0.0.2", "10.0.0.1", &udp(C4, &v4(1), 1, 53).tos(0xbb)).tos(0x03), 1),
        decap("decap_outer_ect_leaves_inner_alone", ip_in_ip("10.0.0.2", "10.0.0.1", &udp(C4, &v4(1), 1, 53)).tos(0x02), 1),
        one("decap_outer_ce_over_not_ect_dropped", ip_in_ip("10.0.0.2", "10.0.0.1", &udp(C4, &v4(1), 1, 53)).tos(0x03).frame(), Expect::Drop, &[dropped(E::DecapEcn)]),
        // ---- Health probes (inner destination = our tunnel address): probe_packets only ----
        probe("probe_ipip_counted_as_probe", ip_in_ip("10.0.0.2", "10.0.0.1", &echo("10.0.0.2", "10.0.0.1")), 1),
        probe("probe_ip6ip6_counted_as_probe", ip_in_ip("fd00::2", "fd00::1", &echo("fd00::2", "fd00::1")), 2),
        probe("probe_gue4_counted_as_probe", gue("10.0.0.3", "10.0.0.1", 49999, 6080, &echo("10.0.0.3", "10.0.0.1")), 3),
        probe("probe_gue6_counted_as_probe", gue("fd00::3", "fd00::1", 49999, 6080, &echo("fd00::3", "fd00::1")), 4),
        probe("probe_4in6_inner_family_decides", ip_in_ip("fd00::2", "fd00::1", &echo("10.0.0.2", "10.0.0.1")), 2),
        // ---- The anchor frames (../shared/anchor-packets.md) ------------------------------
        one("anchor_non_vip_udp", hex(anchor::NON_VIP), Expect::Pass, &[]),
        raw_fwd("anchor_tcp_syn_new_flow", &hex(anchor::SYN), 50),
        raw_fwd("anchor_udp_vip", &hex(anchor::UDP), 50),
        Case { name: "anchor_tcp_ack_after_syn_promoted", instance: Instance::Shared, steps: vec![
            raw_fwd_step(&hex(anchor::SYN), 50, None),
            raw_fwd_step(&hex(anchor::ACK), 50, Some(vec![Ev(Ev_::Promoted)])),
        ] },
    ];
    c.extend(scenarios());
    c
}

/// Cases of several frames with map changes between them; each on its own loaded program.
fn scenarios() -> Vec<Case> {
    let f4 = |sport: u16, flags: u8| tcp(C4, "10.200.0.1", sport, 80, flags);
    let forged = |flags: u8| tcp(FORGED, "10.200.0.1", 52300, 80, flags);
    let u4 = |sport: u16| udp(C4, "10.200.0.1", sport, 53);
    let swap = |vip: u32, table: &'static [u32]| -> MapsOp {
        Box::new(move |m: &mut DataPathMaps| Ok(m.set_maglev(vip, table)?))
    };
    const LOCAL_CHECK: &[u32] = &[S_LOCAL | MAGLEV_LOCAL | MAGLEV_CHECK];
    const LOCAL_CLEAN: &[u32] = &[S_LOCAL | MAGLEV_LOCAL];
    let promoted = || vec![Ev(Ev_::Promoted)];
    let mut out = vec![
        own(
            "syn_writes_an_embryo_and_no_flow_entry",
            None,
            vec![
                send_fwd(f4(40000, SYN), 1),
                Step::Check("no flow entry; the SYN's embryo in its slot", {
                    let key = f4(40000, SYN).key();
                    Box::new(move |m| {
                        let slot = embryo_slot(reference::flow_hash(&key, &KEY));
                        let e = m.embryo(slot).map_err(|e| e.to_string())?;
                        match (m.flow_count(), e) {
                            (0, e) if e != 0 && (e >> 16) & 0xffff == u64::from(S_IPIP) => Ok(()),
                            (n, e) => Err(format!("{n} flow entries, embryo {e:#018x} in slot {slot}")),
                        }
                    })
                }),
            ],
        ),
        own(
            "handshake_ack_pins_the_flow_across_a_table_swap",
            None,
            vec![
                send_fwd(f4(41000, SYN), 1),
                Step::Maps("VIP 1's table now names site 3 only", swap(1, &[S_GUE4])),
                send_to_ev(f4(41000, ACK), 1, S_IPIP, &promoted()),
                send_to_ev(f4(41000, PSH_ACK), 1, S_IPIP, &[]),
                send_to(f4(41001, SYN), 1, S_GUE4),
                Step::Check(
                    "old flow → site 1, the new SYN left no entry",
                    flows_are(vec![(f4(41000, ACK).key(), Some((S_IPIP, 1))), (f4(41001, SYN).key(), None)]),
                ),
            ],
        ),
        own(
            "handshake_ack_after_the_bucket_came_home_follows_its_embryo",
            None,
            vec![
                send_fwd(f4(42000, SYN), 1),
                Step::Maps("VIP 1's bucket is local again (flagged: it was remote)", swap(1, LOCAL_CHECK)),
                send_to_ev(f4(42000, ACK), 1, S_IPIP, &promoted()),
                // Another mid-flow packet of that bucket with no pin and no embryo: local.
                send_to_ev(f4(42001, ACK), 1, S_LOCAL, &[]),
            ],
        ),
        own(
            "local_bucket_without_check_goes_local_without_lookups",
            None,
            vec![
                Step::Maps(
                    "flow 43000 pinned to site 1; VIP 1's bucket local and clean",
                    pinned_with_table(f4(43000, ACK), S_IPIP, LOCAL_CLEAN.to_vec()),
                ),
                send_to_ev(f4(43000, ACK), 1, S_LOCAL, &[]),
                Step::Maps("the bucket flagged", swap(1, LOCAL_CHECK)),
                send_to_ev(f4(43000, ACK), 1, S_IPIP, &[]),
            ],
        ),
        own(
            "a_shared_table_looks_at_the_flow_table_first_a_closing_pin_waits_for_its_bucket",
            None,
            vec![
                // A table of two slots (not a whole-local one), the flow's bucket local and
                // clean: the flow table is read before the hash. An alive pin is followed
                // (the controller never clears the flag of a bucket holding one); a closing
                // pin in a clean local bucket is the host's flow (rule 1).
                Step::Maps(
                    "flow 43100 pinned to site 1; VIP 1's table two slots, the flow's local and clean",
                    pinned_with_table(
                        f4(43100, ACK),
                        S_IPIP,
                        shared_with(f4(43100, ACK), S_LOCAL | MAGLEV_LOCAL),
                    ),
                ),
                send_to_ev(f4(43100, ACK), 1, S_IPIP, &[]),
                Step::Check("an alive pin followed notes nothing", state_is(f4(43100, ACK), S_IPIP, false)),
                Step::Maps("the pin closing, seen long ago", set_closing_long_ago(f4(43100, ACK))),
                send_to_ev(f4(43100, ACK), 1, S_LOCAL, &[]),
                Step::Maps(
                    "its bucket flagged",
                    table_of_vip_1(shared_with(f4(43100, ACK), S_LOCAL | MAGLEV_LOCAL | MAGLEV_CHECK)),
                ),
                send_to_ev(f4(43100, ACK), 1, S_IPIP, &[]),
                Step::Check("a closing pin followed is seen now", state_is(f4(43100, ACK), S_IPIP, true)),
            ],
        ),
        own(
            "a_forwarded_pinned_tcp_flow_is_noted_closing_in_its_flow_entry",
            None,
            vec![
                send_fwd(f4(43500, SYN), 1),
                send_to_ev(f4(43500, ACK), 1, S_IPIP, &promoted()),
                Step::Check(
                    "the promotion pins it, not closing",
                    flows_are(vec![(f4(43500, ACK).key(), Some((S_IPIP, 1)))]),
                ),
                send_to_ev(f4(43500, PSH_ACK), 1, S_IPIP, &[]),
                Step::Check(
                    "a pin that never closed notes nothing (alive)",
                    state_is(f4(43500, ACK), S_IPIP, false),
                ),
                send_to_ev(f4(43500, FIN_ACK), 1, S_IPIP, &[]),
                Step::Check("its client's FIN: closing, seen now", state_is(f4(43500, ACK), S_IPIP, true)),
                // Half-closed: the client still ACKs the server's data, through the pin.
                Step::Maps("the entry as if seen long ago", set_closing_long_ago(f4(43500, ACK))),
                send_to_ev(f4(43500, ACK), 1, S_IPIP, &[]),
                Step::Check(
                    "an ACK after the FIN: seen now, still closing",
                    state_is(f4(43500, ACK), S_IPIP, true),
                ),
                // A new connection of the same 4-tuple while the closing pin is there: its
                // SYN follows its bucket, its other packets the pin, which stays closing
                // (nothing in a packet tells XDP it is a new connection).
                Step::Maps("VIP 1's table now names site 3", swap(1, &[S_GUE4])),
                send_to(f4(43500, SYN), 1, S_GUE4),
                send_to_ev(f4(43500, ACK), 1, S_IPIP, &[]),
                Step::Check("the closing pin kept as it was", state_is(f4(43500, ACK), S_IPIP, true)),
                Step::Maps("VIP 1's table names site 1 again; the pin evicted", {
                    let back = swap(1, &[S_IPIP]);
                    Box::new(move |m| {
                        back(m)?;
                        m.clear_flows()?;
                        Ok(())
                    })
                }),
                send_fwd(f4(43500, SYN), 1),
                send_to_ev(f4(43500, ACK), 1, S_IPIP, &promoted()),
                Step::Check(
                    "a new connection's promotion starts not closing",
                    flows_are(vec![(f4(43500, ACK).key(), Some((S_IPIP, 1)))]),
                ),
                send_to_ev(f4(43500, RST), 1, S_IPIP, &[]),
                Step::Check("its client's RST: closing", state_is(f4(43500, ACK), S_IPIP, true)),
                send_to_ev(f4(43502, ACK), 1, S_IPIP, &[Ev(Ev_::FlowUnknown)]),
                Step::Check("an unpinned flow notes nothing", flows_are(vec![(f4(43502, ACK).key(), None)])),
            ],
        ),
        own(
            "a_pin_is_never_overwritten_by_a_handshake",
            None,
            vec![
                Step::Maps(
                    "flow 44000 pinned to site 3",
                    Box::new(|m| {
                        Ok(m.set_flow(
                            &tcp(C4, "10.200.0.1", 44000, 80, ACK).key(),
                            &FlowValue { site: S_GUE4 as u16, state: 0, generation: 1 },
                        )?)
                    }),
                ),
                // The SYN follows its bucket (no lookup on a SYN) and leaves an embryo for site 1...
                send_fwd(f4(44000, SYN), 1),
                // ...but the flow's packets follow the pin, which stays as it was.
                send_to_ev(f4(44000, ACK), 1, S_GUE4, &[]),
                Step::Check("the pin unchanged", flows_are(vec![(f4(44000, ACK).key(), Some((S_GUE4, 1)))])),
            ],
        ),
        own(
            "stale_pin_of_a_tcp_flow_is_resteered_unpinned",
            None,
            vec![
                send_fwd(f4(45000, SYN), 1),
                send_to_ev(f4(45000, ACK), 1, S_IPIP, &promoted()),
                Step::Maps(
                    "site 1 down; VIP 1's table names site 3",
                    Box::new(|m| {
                        let mut s = m.site(S_IPIP)?;
                        s.flags &= !SITE_UP;
                        m.set_site(S_IPIP, &s)?;
                        Ok(m.set_maglev(1, &[S_GUE4])?)
                    }),
                ),
                send_to_ev(f4(45000, ACK), 1, S_GUE4, &[Ev(Ev_::StalePin), Ev(Ev_::FlowUnknown)]),
            ],
        ),
        own(
            "stale_pin_of_a_udp_flow_is_repinned",
            None,
            vec![
                send_fwd(u4(46000), 1),
                Step::Maps(
                    "site 1's slot re-used (generation 2); table names site 3",
                    Box::new(|m| {
                        let mut s = m.site(S_IPIP)?;
                        s.generation = 2;
                        m.set_site(S_IPIP, &s)?;
                        Ok(m.set_maglev(1, &[S_GUE4])?)
                    }),
                ),
                send_to_ev(u4(46000), 1, S_GUE4, &[Ev(Ev_::StalePin), PINNED]),
                Step::Check(
                    "entry rewritten to site 3",
                    flows_are(vec![(u4(46000).key(), Some((S_GUE4, 1)))]),
                ),
            ],
        ),
        own(
            "udp_flow_affinity_keeps_its_site_stateless_follows_the_table",
            None,
            vec![
                send_fwd(u4(47000), 1),
                send_fwd(udp(C4, "10.200.6.1", 47001, 53), 41),
                Step::Maps(
                    "VIPs 1 and 41 now name site 3",
                    Box::new(|m| {
                        m.set_maglev(1, &[S_GUE4])?;
                        Ok(m.set_maglev(41, &[S_GUE4])?)
                    }),
                ),
                send_to_ev(u4(47000), 1, S_IPIP, &[]),
                send_to_ev(udp(C4, "10.200.6.1", 47001, 53), 41, S_GUE4, &[]),
            ],
        ),
        own(
            "frag_needed_follows_the_pinned_flow_after_a_swap",
            None,
            vec![
                send_fwd(tcp(C4, "10.200.0.3", 44000, 80, SYN), 3),
                send_to_ev(tcp(C4, "10.200.0.3", 44000, 80, ACK), 3, S_GUE4, &promoted()),
                Step::Maps("VIP 3's bucket is local (flagged)", swap(3, LOCAL_CHECK)),
                send_to_ev(
                    too_big_error(R4, "10.200.0.3", 1300, &tcp("10.200.0.3", C4, 80, 44000, ACK)),
                    3,
                    S_GUE4,
                    &[],
                ),
                send_to_ev(tcp(C4, "10.200.0.3", 44001, 80, SYN), 3, S_LOCAL, &[]),
            ],
        ),
        own("syn_flood_and_random_acks_write_no_flow_entry", None, {
            let mut steps: Vec<Step> = (0..64).map(|i| send_fwd(f4(48000 + i, SYN), 1)).collect();
            steps.extend((0..64).map(|i| send_fwd(f4(49000 + i, ACK), 1)));
            steps.push(Step::Check(
                "the flow table is empty",
                Box::new(|m| match m.flow_count() {
                    0 => Ok(()),
                    n => Err(format!("{n} entries")),
                }),
            ));
            steps
        }),
        own("pins_are_rate_guarded_per_cpu", Some(1024), {
            let mut steps = vec![Step::Maps(
                "pin limit: 1/s, burst 2",
                Box::new(|m| {
                    let mut c = m.config()?;
                    c.pin = Limit::per_second(1, 2);
                    Ok(m.set_config(&c)?)
                }),
            )];
            for i in 0..4u16 {
                let ev = if i < 2 { PINNED } else { Ev(Ev_::PinLimited) };
                steps.push(send_to_ev(u4(50000 + i), 1, S_IPIP, &[ev]));
            }
            steps.push(Step::Check(
                "two flows pinned",
                Box::new(|m| match m.flow_count() {
                    2 => Ok(()),
                    n => Err(format!("{n} entries")),
                }),
            ));
            steps
        }),
        own("too_big_replies_are_rate_limited_per_cpu", None, {
            let mut steps = vec![Step::Maps(
                "ICMP limit: 1/s, burst 3",
                Box::new(|m| {
                    let mut c = m.config()?;
                    c.icmp = Limit::per_second(1, 3);
                    Ok(m.set_config(&c)?)
                }),
            )];
            for i in 0..5u16 {
                let p = udp(C4, "10.200.0.1", 51000 + i, 53).ip_len(1381);
                steps.push(if i < 3 {
                    send(
                        p.frame(),
                        Expect::Tx(expect::too_big_reply(&p, 1380)),
                        &[Vip(1), replied(E::TooBig)],
                    )
                } else {
                    send(p.frame(), Expect::Drop, &[Vip(1), dropped(E::TooBig), Ev(Ev_::IcmpRateLimited)])
                });
            }
            steps
        }),
        own(
            "second_chance_keeps_a_local_connection_local",
            None,
            vec![
                Step::Maps(
                    "a real connection 192.168.1.42:52000 → 10.200.0.1:80 in this namespace",
                    Box::new(|_| hold_connection("192.168.1.42:52000", "10.200.0.1:80")),
                ),
                send_to_ev(f4(52000, ACK), 1, S_LOCAL, &[Ev(Ev_::SocketLocal)]),
                send_to_ev(f4(52000, PSH_ACK), 1, S_LOCAL, &[Ev(Ev_::SocketLocal)]),
                // Its SYN would follow the bucket: a SYN is never looked up.
                send_fwd(f4(52000, SYN), 1),
                // Another port of the same client has no connection: forwarded by its bucket.
                send_fwd(f4(52001, ACK), 1),
                connections_closed(),
            ],
        ),
        own(
            "a_new_local_connection_on_a_closing_pins_4_tuple_stays_local",
            None,
            vec![
                // A forwarded connection, pinned, whose client then closes.
                send_fwd(f4(52200, SYN), 1),
                send_to_ev(f4(52200, ACK), 1, S_IPIP, &promoted()),
                send_to_ev(f4(52200, FIN_ACK), 1, S_IPIP, &[]),
                Step::Check("its client's FIN: closing", state_is(f4(52200, ACK), S_IPIP, true)),
                // Half-closed, no connection of the 4-tuple here: its ACKs follow the pin.
                send_to_ev(f4(52200, ACK), 1, S_IPIP, &[]),
                // The client opens a new connection on the same ports, served here (its
                // SYN went by a bucket that was local then): the host's connection.
                Step::Maps(
                    "a real connection 192.168.1.42:52200 → 10.200.0.1:80 in this namespace",
                    Box::new(|_| hold_connection("192.168.1.42:52200", "10.200.0.1:80")),
                ),
                send_to_ev(f4(52200, ACK), 1, S_LOCAL, &[Ev(Ev_::SocketLocal)]),
                Step::Check("the old pin is gone", flows_are(vec![(f4(52200, ACK).key(), None)])),
                // From now on the bucket (remote) and the second chance keep it here.
                send_to_ev(f4(52200, PSH_ACK), 1, S_LOCAL, &[Ev(Ev_::SocketLocal)]),
                connections_closed(),
                // A pin that never closed is followed whatever the host holds: only a
                // client that closed can have opened a new connection on its ports.
                send_fwd(f4(52202, SYN), 1),
                send_to_ev(f4(52202, ACK), 1, S_IPIP, &promoted()),
                Step::Maps(
                    "a real connection 192.168.1.42:52202 → 10.200.0.1:80",
                    Box::new(|_| hold_connection("192.168.1.42:52202", "10.200.0.1:80")),
                ),
                send_to_ev(f4(52202, ACK), 1, S_IPIP, &[]),
                connections_closed(),
            ],
        ),
        own(
            "a_request_socket_on_a_closing_pins_4_tuple_takes_nothing",
            None,
            vec![
                // A forged FIN makes a pin closing, and a forged SYN of its 4-tuple (its
                // bucket local) makes a request socket here, whose SYN-ACK the real client
                // answers with an ACK of its connection: that ACK follows the pin. Only a
                // completed handshake proves a new connection.
                send_fwd(forged(SYN), 1),
                send_to_ev(forged(ACK), 1, S_IPIP, &promoted()),
                send_to_ev(forged(FIN_ACK), 1, S_IPIP, &[]),
                Step::Maps(
                    "a forged SYN 192.168.1.99:52300 → 10.200.0.1:80 into the local stack: a request socket",
                    Box::new(|_| forge_syn("192.168.1.99:52300", "10.200.0.1:80")),
                ),
                send_to_ev(forged(ACK), 1, S_IPIP, &[]),
                Step::Check("the pin stays, closing", state_is(forged(ACK), S_IPIP, true)),
                connections_closed(),
            ],
        ),
        own(
            "second_chance_ipv6",
            None,
            vec![
                Step::Maps(
                    "a real connection [2001:db8::42]:52100 → [fd00:200::1]:80",
                    Box::new(|_| hold_connection("[2001:db8::42]:52100", "[fd00:200::1]:80")),
                ),
                send_to_ev(tcp(C6, "fd00:200::1", 52100, 80, ACK), 17, S_LOCAL, &[Ev(Ev_::SocketLocal)]),
                connections_closed(),
            ],
        ),
        own(
            "next_hop_cached_after_a_success",
            None,
            vec![
                send_fwd(f4(53000, SYN), 1),
                Step::Check(
                    "a cache entry for site 1: its endpoint, lb0's MTU",
                    Box::new(|m| {
                        let hops = m.next_hops(S_IPIP).map_err(|e| e.to_string())?;
                        let want = addr16(addr("10.0.0.2")).0;
                        match hops.iter().find(|h| h.expires != 0) {
                            Some(h) if h.dst == want && h.mtu as u32 == LB0_MTU && h.dmac == NH0_MAC => {
                                Ok(())
                            }
                            other => Err(format!("{other:?}")),
                        }
                    }),
                ),
            ],
        ),
        own(
            "cached_mtu_answers_too_big_within_its_lifetime",
            None,
            vec![
                Step::Maps(
                    "cache: site 1 with MTU 1000, not expired",
                    Box::new(|m| cache_hop(m, "10.0.0.2", u64::MAX, 1000)),
                ),
                {
                    let p = udp(C4, "10.200.0.1", 53100, 53).ip_len(1000);
                    send(p.frame(), Expect::Tx(expect::too_big_reply(&p, 980)), &[Vip(1), replied(E::TooBig)])
                },
            ],
        ),
        own(
            "expired_cache_entry_asks_the_fib_again",
            None,
            vec![
                Step::Maps(
                    "cache: site 1 with MTU 1000, expired",
                    Box::new(|m| cache_hop(m, "10.0.0.2", 1, 1000)),
                ),
                send_fwd(udp(C4, "10.200.0.1", 53200, 53).ip_len(1000), 1),
            ],
        ),
        own(
            "cache_entry_of_another_endpoint_ignored",
            None,
            vec![
                Step::Maps(
                    "cache: site 1 for endpoint 10.0.0.3, MTU 1000",
                    Box::new(|m| cache_hop(m, "10.0.0.3", u64::MAX, 1000)),
                ),
                send_fwd(udp(C4, "10.200.0.1", 53300, 53).ip_len(1000), 1),
            ],
        ),
        own(
            "fib_failures_are_never_cached",
            None,
            vec![
                send(
                    tcp(C4, "10.200.0.6", 53400, 80, SYN).frame(),
                    Expect::Pass,
                    &[Vip(6), Local(S_LOCAL), pass(E::FibNoNeigh)],
                ),
                Step::Maps(
                    "the next hop of site 6 resolves",
                    Box::new(|_| {
                        ip_here(&[
                            "neigh",
                            "replace",
                            "10.0.0.9",
                            "lladdr",
                            "02:00:00:00:00:a2",
                            "dev",
                            "lb0",
                            "nud",
                            "permanent",
                        ])
                    }),
                ),
                send_to(tcp(C4, "10.200.0.6", 53401, 80, SYN), 6, 6),
                Step::Maps(
                    "site 6 unresolved again",
                    Box::new(|_| ip_here(&["neigh", "del", "10.0.0.9", "dev", "lb0"])),
                ),
            ],
        ),
        own(
            "route_mtu_change_seen_once_the_cache_is_cleared",
            None,
            vec![
                send_fwd(udp(C4, "10.200.0.1", 53500, 53).ip_len(1300), 1),
                Step::Maps(
                    "a 1200-byte route to site 1; the controller clears the cache",
                    Box::new(|m| {
                        ip_here(&["route", "replace", "10.0.0.2/32", "dev", "lb0", "mtu", "lock", "1200"])?;
                        Ok(m.clear_next_hop(S_IPIP)?)
                    }),
                ),
                {
                    let p = udp(C4, "10.200.0.1", 53501, 53).ip_len(1300);
                    send(
                        p.frame(),
                        Expect::Tx(expect::too_big_reply(&p, 1180)),
                        &[Vip(1), replied(E::TooBig)],
                    )
                },
                Step::Maps(
                    "route removed",
                    Box::new(|_| ip_here(&["route", "del", "10.0.0.2/32", "dev", "lb0"])),
                ),
            ],
        ),
        own(
            "gue_decap_off_when_port_zero",
            None,
            vec![
                Step::Maps(
                    "CONFIG.gue_port = 0",
                    Box::new(|m| {
                        let mut c = m.config()?;
                        c.gue_port = 0;
                        Ok(m.set_config(&c)?)
                    }),
                ),
                send(
                    gue("10.0.0.3", "10.0.0.1", 49999, 6080, &udp(C4, "10.200.0.0", 1, 53)).frame(),
                    Expect::Pass,
                    &[],
                ),
            ],
        ),
        own(
            "no_ipv4_tunnel_address_syn_served_locally",
            None,
            vec![
                Step::Maps(
                    "CONFIG without an IPv4 tunnel address",
                    Box::new(|m| {
                        let mut c = m.config()?;
                        c.flags &= !CONFIG_TUNNEL_V4;
                        Ok(m.set_config(&c)?)
                    }),
                ),
                send(f4(46000, SYN).frame(), Expect::Pass, &[Vip(1), Local(S_LOCAL), pass(E::EncapFailed)]),
            ],
        ),
    ];

    // Flow-table eviction: 64 pinned UDP flows through a 16-entry table.
    let mut steps: Vec<Step> = (0..64).map(|i| send_fwd(u4(45000 + i), 1)).collect();
    steps.push(Step::Check("at most 16 flows kept; the first evicted, the last kept", {
        let (first, last) = (u4(45000).key(), u4(45063).key());
        Box::new(move |m| {
            let n = m.flow_count();
            let f = m.flow(&first).map_err(|e| e.to_string())?;
            let l = m.flow(&last).map_err(|e| e.to_string())?;
            if n > 16 || f.is_some() || l.is_none() {
                return Err(format!("{n} entries, first flow {f:?}, last flow {l:?}"));
            }
            Ok(())
        })
    }));
    steps.push(send_to_ev(u4(45063), 1, S_IPIP, &[]));
    steps.push(send_to_ev(u4(45000), 1, S_IPIP, &[PINNED]));
    out.push(own("flow_table_eviction_small_table", Some(16), steps));

    // Fragments of one datagram land together, for datagrams spread over several sites.
    const FRAG_TABLE: &[u32] = &[S_GUE4, S_IPIP, S_IP6, S_GUE6, S_LOCAL | MAGLEV_LOCAL];
    let mut steps = vec![Step::Maps("VIP 34's table spreads over 5 sites", swap(34, FRAG_TABLE))];
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..12u8 {
        let d = udp(&format!("192.168.7.{i}"), "10.200.2.1", 40000, 53).payload_len(64);
        let site = reference::bucket(FRAG_TABLE, &d.clone().first_fragment(4).key()) & 0xffff;
        seen.insert(site);
        steps.push(send_to_ev(d.clone().first_fragment(4), 34, site, &[FRAG, PINNED]));
        steps.push(send_to_ev(d.last_fragment(4), 34, site, &[FRAG]));
    }
    assert!(seen.len() >= 3, "12 datagrams should reach several of the 5 sites, reached {seen:?}");
    out.push(own("fragments_of_a_datagram_land_together", None, steps));

    // The Maglev choice by flow hash over many flows, predicted by the reference hash:
    // IPv4 (VIP 41, stateless UDP) and IPv6 (VIP 17, every address word varied).
    const SPREAD: &[u32] = &[S_IPIP, S_GUE4, S_LOCAL | MAGLEV_LOCAL, S_IP6, S_GUE6, S_IPIP, S_GUE4];
    for (name, vip, flow) in [
        (
            "maglev_hash_choice_over_40_ipv4_flows",
            41,
            Box::new(|i: u16| udp(C4, "10.200.6.1", 20000 + i, 53)) as Box<dyn Fn(u16) -> Packet>,
        ),
        (
            "maglev_hash_choice_over_40_ipv6_flows",
            17,
            Box::new(|i: u16| {
                udp(&format!("2001:db8:{i:x}:{:x}::{:x}", i * 7, i * 13), "fd00:200::1", 20000, 53)
            }),
        ),
    ] {
        let mut steps = vec![Step::Maps("the VIP's table spreads over 5 sites", swap(vip, SPREAD))];
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..40 {
            let p = flow(i);
            let site = reference::bucket(SPREAD, &p.key()) & 0xffff;
            seen.insert(site);
            steps.push(send_to(p, vip, site));
        }
        assert!(seen.len() >= 4, "40 flows should reach most of the 5 sites, reached {seen:?}");
        out.push(own(name, None, steps));
    }

    // The hash is keyed: another key, other buckets, each predicted with that key. (IPv4
    // IPIP sites only: their outer headers carry no hash, which the expected frames would
    // otherwise take from the suite's key.)
    const IPIP_SPREAD: &[u32] = &[S_IPIP, 12, 13, 14, S_LOCAL | MAGLEV_LOCAL];
    let other_key: [u8; 16] = *b"another-hash-key";
    let mut steps = vec![Step::Maps(
        "VIP 41's table spreads over 5 sites; CONFIG.hash_key replaced",
        Box::new(move |m| {
            m.set_maglev(41, IPIP_SPREAD)?;
            let mut c = m.config()?;
            c.hash_key = HashKey::from_bytes(other_key);
            Ok(m.set_config(&c)?)
        }),
    )];
    let mut moved = 0;
    for i in 0..40u16 {
        let p = udp(C4, "10.200.6.1", 21000 + i, 53);
        let m = IPIP_SPREAD.len();
        let with =
            |k: &[u8; 16]| IPIP_SPREAD[reference::maglev_slot(reference::flow_hash(&p.key(), k), m)] & 0xffff;
        moved += usize::from(with(&other_key) != with(&KEY));
        steps.push(send_to(p.clone(), 41, with(&other_key)));
    }
    assert!(moved >= 10, "another key should move many of 40 flows, moved {moved}");
    out.push(own("flow_hash_is_keyed_by_config", None, steps));
    out
}

/// Sockets the second-chance cases hold open while their frames run.
static HELD: Mutex<Vec<socket2::Socket>> = Mutex::new(Vec::new());

/// The step that closes every socket [`hold_connection`] and [`forge_syn`] opened.
fn connections_closed() -> Step {
    Step::Maps(
        "connections closed",
        Box::new(|_| {
            HELD.lock().unwrap().clear();
            Ok(())
        }),
    )
}

/// Opens a real TCP connection `client` → `server` in the calling thread's namespace (the
/// suite's `lb`, where both addresses are on `lo`) and keeps both ends in [`HELD`].
fn hold_connection(client: &str, server: &str) -> anyhow::Result<()> {
    use socket2::{Domain, Socket, Type};
    let (client, server): (std::net::SocketAddr, std::net::SocketAddr) = (client.parse()?, server.parse()?);
    let listener = std::net::TcpListener::bind(server)?;
    let socket = Socket::new(Domain::for_address(client), Type::STREAM, None)?;
    socket.bind(&client.into())?;
    socket.connect(&server.into())?;
    let (accepted, _) = listener.accept()?;
    let mut held = HELD.lock().unwrap();
    held.push(socket);
    held.push(accepted.into());
    Ok(())
}

/// A listener on `server` in the calling thread's namespace, and a lone SYN `client` →
/// `server` sent to it from a raw socket, as a forger would: a request socket of that
/// 4-tuple (its SYN-ACK goes nowhere), which lives while the listener, kept in [`HELD`],
/// retransmits. Waits until the namespace's `/proc/net/tcp` lists it.
fn forge_syn(client: &str, server: &str) -> anyhow::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (client, server): (std::net::SocketAddrV4, std::net::SocketAddrV4) =
        (client.parse()?, server.parse()?);
    // The SYN-ACK needs a route, else the listener drops the SYN (ListenDrops): out of lo,
    // where nothing answers it.
    ip_here(&["route", "replace", &format!("{}/32", client.ip()), "dev", "lo"])?;
    let listener = std::net::TcpListener::bind(server)?;
    HELD.lock().unwrap().push(listener.into());
    // IPPROTO_RAW: the datagram is the whole IP packet (IP_HDRINCL).
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    let syn = tcp(&client.ip().to_string(), &server.ip().to_string(), client.port(), server.port(), SYN);
    raw.send_to(&syn.ip_bytes(), &std::net::SocketAddr::V4(server).into())?;
    // /proc/thread-self/net/tcp (this thread's namespace; /proc/net is the main thread's):
    // "sl local rem st ...", addresses as hex of the address in memory
    // order and the port; a request socket is state 03.
    let hex =
        |a: std::net::SocketAddrV4| format!("{:08X}:{:04X}", u32::from_ne_bytes(a.ip().octets()), a.port());
    let line = format!("{} {} 03", hex(server), hex(client));
    let listed = || std::fs::read_to_string("/proc/thread-self/net/tcp").is_ok_and(|t| t.contains(&line));
    anyhow::ensure!(
        testkit::wait::until(std::time::Duration::from_secs(2), listed).is_some(),
        "no request socket {line} in /proc/thread-self/net/tcp:\n{}",
        std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default()
    );
    Ok(())
}

/// Runs `ip ARGS` in the calling thread's namespace (the child inherits it).
fn ip_here(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    anyhow::ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Writes a next-hop cache entry for site 1 on every CPU: towards `dst` out of lb0.
fn cache_hop(m: &mut DataPathMaps, dst: &str, expires: u64, mtu: u16) -> anyhow::Result<()> {
    let ingress = m_ifindex_lb0()?;
    let hop = NextHop {
        dst: addr16(addr(dst)).0,
        ingress,
        egress: ingress,
        expires,
        mtu,
        dmac: NH0_MAC,
        smac: HOST_MAC,
        pad: [0; 2],
    };
    Ok(m.set_next_hop(S_IPIP, &hop)?)
}

/// lb0's ifindex, looked up in the calling thread's namespace.
fn m_ifindex_lb0() -> anyhow::Result<u32> {
    let name = std::ffi::CString::new("lb0")?;
    // SAFETY: a valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => anyhow::bail!("no lb0 in this namespace"),
        i => Ok(i),
    }
}

/// A check that each listed flow is pinned to (site, generation), or not pinned (`None`).
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

/// `CLOCK_MONOTONIC_COARSE` in the units of a flow's state (docs/datapath.md §6: 2^32 ns),
/// modulo 2^15.
fn coarse_units() -> u16 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ((ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64) >> 32) as u16 & 0x7fff
}

/// The flow is pinned to `site` (generation 1), and its state (docs/datapath.md §6) is 0,
/// or closing (bit 15) with a time (bits 0..15) of now or the unit before.
fn state_is(p: Packet, site: u32, closing: bool) -> MapsCheck {
    Box::new(move |m: &DataPathMaps| {
        let v = m.flow(&p.key()).map_err(|e| e.to_string())?.ok_or("not pinned")?;
        let now = coarse_units();
        let (got_closing, at) = (v.state & 0x8000 != 0, v.state & 0x7fff);
        let fresh = at == now || at == now.wrapping_sub(1) & 0x7fff;
        let ok = u32::from(v.site) == site
            && v.generation == 1
            && if closing { got_closing && fresh } else { v.state == 0 };
        if !ok {
            return Err(format!(
                "{v:?} (closing {got_closing}, at {at}); want site {site}, generation 1, {}",
                if closing { format!("closing at ~{now}") } else { "state 0".to_owned() }
            ));
        }
        Ok(())
    })
}

/// The flow's entry closing, seen 100 units (~7 min) ago.
fn set_closing_long_ago(p: Packet) -> MapsOp {
    Box::new(move |m: &mut DataPathMaps| {
        let mut v = m.flow(&p.key())?.ok_or_else(|| anyhow::anyhow!("not pinned"))?;
        v.state = 0x8000 | (coarse_units().wrapping_sub(100) & 0x7fff);
        Ok(m.set_flow(&p.key(), &v)?)
    })
}

/// A table of two slots: `entry` in the one `p`'s flow falls in (by the reference hash under
/// the fixtures' key), the IPIP site in the other.
fn shared_with(p: Packet, entry: u32) -> Vec<u32> {
    let mut table = vec![S_IPIP; 2];
    table[reference::maglev_slot(reference::flow_hash(&p.key(), &KEY), 2)] = entry;
    table
}

/// VIP 1's table replaced by `table`.
fn table_of_vip_1(table: Vec<u32>) -> MapsOp {
    Box::new(move |m: &mut DataPathMaps| Ok(m.set_maglev(1, &table)?))
}

/// `p`'s flow pinned to `site` (generation 1, not closing), then VIP 1's table replaced by
/// `table`.
fn pinned_with_table(p: Packet, site: u32, table: Vec<u32>) -> MapsOp {
    Box::new(move |m: &mut DataPathMaps| {
        m.set_flow(&p.key(), &FlowValue { site: site as u16, state: 0, generation: 1 })?;
        Ok(m.set_maglev(1, &table)?)
    })
}

fn flows_are(want: Vec<(FlowKey, Option<(u32, u32)>)>) -> MapsCheck {
    Box::new(move |m: &DataPathMaps| {
        for (key, w) in &want {
            let got = m.flow(key).map_err(|e| e.to_string())?;
            let want = w.map(|(site, generation)| FlowValue { site: site as u16, state: 0, generation });
            if got != want {
                return Err(format!("flow {}:{}: expected {want:?}, got {got:?}", key.sport, key.dport));
            }
        }
        Ok(())
    })
}

// ---- Row constructors ------------------------------------------------------------------

/// A frame and its expected outcome, for [`case`].
struct One {
    input: Vec<u8>,
    expect: Expect,
    counts: Vec<Count>,
}

fn one_p(p: Packet, expect: Expect, counts: Vec<Count>) -> One {
    One { input: p.frame(), expect, counts }
}

fn case(name: &'static str, o: One) -> Case {
    Case { name, instance: Instance::Shared, steps: vec![send(o.input, o.expect, &o.counts)] }
}

fn one(name: &'static str, input: Vec<u8>, expect: Expect, counts: &[Count]) -> Case {
    Case { name, instance: Instance::Shared, steps: vec![send(input, expect, counts)] }
}

fn own(name: &'static str, flows: Option<u32>, steps: Vec<Step>) -> Case {
    Case { name, instance: Instance::Own { flows, tweak: None }, steps }
}

fn send(input: Vec<u8>, expect: Expect, counts: &[Count]) -> Step {
    Step::Send(Frame { input, expect, counts: counts.to_vec() })
}

/// The events the path of `p` counts when it meets no state (§6), by the packet's kind and
/// its VIP's affinity: a forwarded SYN writes an embryo; a mid-flow TCP packet of a remote
/// bucket with no pin, socket or embryo is `flow_unknown`; a UDP packet of a pinned VIP and
/// a fragment are pinned; a fragment also counts `fragment`.
fn path_events(p: &Packet, vip: u32, forwarded: bool) -> Vec<Count> {
    let stateless = STATELESS.contains(&vip);
    if p.fragment {
        return vec![FRAG, PINNED];
    }
    match &p.l4 {
        L4::Tcp { flags, .. } if flags & (SYN | ACK) == SYN => {
            if forwarded {
                vec![Ev(Ev_::EmbryoWritten)]
            } else {
                vec![]
            }
        }
        L4::Tcp { .. } => {
            if forwarded {
                vec![Ev(Ev_::FlowUnknown)]
            } else {
                vec![]
            }
        }
        L4::Udp { .. } if !stateless => vec![PINNED],
        L4::Icmp { about: Some(k), .. } if k.proto == PROTO_TCP && forwarded => vec![Ev(Ev_::FlowUnknown)],
        _ => vec![],
    }
}

/// A VIP packet of VIP `vip` served locally: PASS untouched, VIP and local counters.
fn local(name: &'static str, p: Packet, vip: u32) -> Case {
    let mut counts = vec![Vip(vip), Local(S_LOCAL)];
    counts.extend(path_events(&p, vip, false));
    one(name, p.frame(), Expect::Pass, &counts)
}

/// A packet of VIP `vip` whose table names one site: that VIP's site (index = vip % 16,
/// see [`world`]).
fn fwd(name: &'static str, p: Packet, vip: u32) -> Case {
    Case { name, instance: Instance::Shared, steps: vec![send_fwd(p, vip)] }
}

fn send_fwd(p: Packet, vip: u32) -> Step {
    send_to(p, vip, single_site(vip))
}

/// `p` (of VIP `vip`) steered to `site`, meeting no state: [`send_to_ev`] with the events of
/// its path.
fn send_to(p: Packet, vip: u32, site: u32) -> Step {
    let events = path_events(&p, vip, site != S_LOCAL);
    send_to_ev(p, vip, site, &events)
}

/// `p` (of VIP `vip`) steered to `site` counting `events`: PASS for the local site, else
/// encapsulated towards it (XDP_TX out of lb0, or XDP_REDIRECT to another interface).
fn send_to_ev(p: Packet, vip: u32, site: u32, events: &[Count]) -> Step {
    let mut counts = vec![Vip(vip)];
    counts.extend_from_slice(events);
    if site == S_LOCAL {
        counts.push(Local(site));
        return send(p.frame(), Expect::Pass, &counts);
    }
    counts.push(Fwd(site));
    let def = site_def(site);
    let out = expect::encapsulated(&p, &def.tunnel());
    let expect = if def.egress == Egress::Lb0 { Expect::Tx(out) } else { Expect::Redirect(out) };
    send(p.frame(), expect, &counts)
}

/// An anchor frame (parsed), steered by the anchor table; `events` replaces the path's.
fn raw_fwd_step(frame: &[u8], vip: u32, events: Option<Vec<Count>>) -> Step {
    let p = Packet::parse(frame);
    let site = reference::bucket(ANCHOR_TABLE, &p.key());
    match events {
        Some(e) => send_to_ev(p, vip, site, &e),
        None => {
            // Parsed frames keep L4 as bytes: a SYN's embryo by its flags byte.
            let flags = frame.get(14 + 20 + 13).copied().unwrap_or(0);
            let e = if p.proto() == PROTO_TCP && flags & (SYN | ACK) == SYN {
                vec![Ev(Ev_::EmbryoWritten)]
            } else if p.proto() == PROTO_UDP {
                vec![PINNED]
            } else {
                vec![]
            };
            send_to_ev(p, vip, site, &e)
        }
    }
}

fn raw_fwd(name: &'static str, frame: &[u8], vip: u32) -> Case {
    Case { name, instance: Instance::Shared, steps: vec![raw_fwd_step(frame, vip, None)] }
}

/// A tunnel packet from a known peer: decapsulated, PASS, counted as received from `site`.
fn decap(name: &'static str, outer: Packet, site: u32) -> Case {
    one(name, outer.frame(), Expect::PassAs(expect::decapsulated(&outer)), &[Rcvd(site)])
}

/// A health probe from a known peer (inner packet to our own tunnel address): decapsulated
/// like any tunnel packet, PASS, counted only in `probe_packets` of `site`.
fn probe(name: &'static str, outer: Packet, site: u32) -> Case {
    one(name, outer.frame(), Expect::PassAs(expect::decapsulated(&outer)), &[Probe(site)])
}

/// The IPv4 packet `p` with only `l4` bytes after its header, lengths consistent (the
/// frame ends inside the L4 header and says so).
fn ip4_cut(p: Packet, l4: usize) -> Vec<u8> {
    p.cut_l4(l4).frame()
}

/// Same for IPv6: `after` bytes after the fixed 40-byte header, payload length consistent.
fn ip6_cut(p: Packet, after: usize) -> Vec<u8> {
    let f = p.frame();
    let start = p.l2.header_len();
    let mut f = cut(f, start + 40 + after);
    f[start + 4..start + 6].copy_from_slice(&(after as u16).to_be_bytes());
    f
}

/// The IPv4 packet `p` whose total length ends `keep` bytes after its header, the rest of
/// its bytes left in the frame as Ethernet padding (so that a program that read past the IP
/// length would find a well-formed header there). Header checksum corrected.
fn padded_l4(p: Packet, keep: usize) -> Vec<u8> {
    let start = p.l2.header_len();
    let mut f = p.frame();
    let total = (p.l3_header_len() + keep) as u16;
    f[start + 2..start + 4].copy_from_slice(&total.to_be_bytes());
    let c = anycast_tests::checksum::ipv4_header(&f[start..start + p.l3_header_len()]);
    f[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
    f
}

/// Same for IPv6: the payload length covers only `keep` bytes after the fixed header.
fn padded_ip6(p: Packet, keep: usize) -> Vec<u8> {
    let start = p.l2.header_len();
    let mut f = p.frame();
    f[start + 4..start + 6].copy_from_slice(&(keep as u16).to_be_bytes());
    f
}

// ---- The world: topology and map state ---------------------------------------------------

/// Site indices. Remote endpoints are reached through lb0 unless noted.
const S_LOCAL: u32 = 0;
const S_IPIP: u32 = 1;
const S_IP6: u32 = 2;
const S_GUE4: u32 = 3;
const S_GUE6: u32 = 4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Egress {
    Lb0,
    Lb1,
    Lb2,
}

struct SiteDef {
    index: u32,
    flags: u32,
    endpoint: &'static str,
    encap: Encap,
    gue_port: u16,
    egress: Egress,
}

const UP: u32 = SITE_CONFIGURED | SITE_UP;

/// Every site of the world. VIP `10.200.0.S` (index S) and `fd00:200::S` (index 16 + S)
/// have a one-slot Maglev table naming site S.
const SITES: &[SiteDef] = &[
    SiteDef {
        index: 0,
        flags: UP | SITE_LOCAL,
        endpoint: "0.0.0.0",
        encap: Encap::Ip,
        gue_port: 0,
        egress: Egress::Lb0,
    },
    SiteDef { index: 1, flags: UP, endpoint: "10.0.0.2", encap: Encap::Ip, gue_port: 0, egress: Egress::Lb0 },
    SiteDef { index: 2, flags: UP, endpoint: "fd00::2", encap: Encap::Ip, gue_port: 0, egress: Egress::Lb0 },
    SiteDef {
        index: 3,
        flags: UP,
        endpoint: "10.0.0.3",
        encap: Encap::Gue,
        gue_port: 7080,
        egress: Egress::Lb0,
    },
    SiteDef {
        index: 4,
        flags: UP,
        endpoint: "fd00::3",
        encap: Encap::Gue,
        gue_port: 7080,
        egress: Egress::Lb0,
    },
    // Configured but down.
    SiteDef {
        index: 5,
        flags: SITE_CONFIGURED,
        endpoint: "10.0.0.4",
        encap: Encap::Ip,
        gue_port: 0,
        egress: Egress::Lb0,
    },
    // On lb0's subnet, but no neighbour entry.
    SiteDef { index: 6, flags: UP, endpoint: "10.0.0.9", encap: Encap::Ip, gue_port: 0, egress: Egress::Lb0 },
    // Slot 7: not configured.
    SiteDef { index: 7, flags: 0, endpoint: "10.0.0.2", encap: Encap::Ip, gue_port: 0, egress: Egress::Lb0 },
    // Through lb1, which is in DEVMAP.
    SiteDef { index: 8, flags: UP, endpoint: "10.0.1.2", encap: Encap::Ip, gue_port: 0, egress: Egress::Lb1 },
    // Through lb2, which is not in DEVMAP.
    SiteDef { index: 9, flags: UP, endpoint: "10.0.2.2", encap: Encap::Ip, gue_port: 0, egress: Egress::Lb2 },
    // No route at all.
    SiteDef {
        index: 10,
        flags: UP,
        endpoint: "198.51.100.7",
        encap: Encap::Ip,
        gue_port: 0,
        egress: Egress::Lb0,
    },
    // On lb0's IPv6 subnet, no neighbour entry.
    SiteDef { index: 11, flags: UP, endpoint: "fd00::9", encap: Encap::Ip, gue_port: 0, egress: Egress::Lb0 },
    // The anchor configuration: three IPIP sites.
    SiteDef {
        index: 12,
        flags: UP,
        endpoint: "10.0.0.2",
        encap: Encap::Ip,
        gue_port: 0,
        egress: Egress::Lb0,
    },
    SiteDef {
        index: 13,
        flags: UP,
        endpoint: "10.0.0.3",
        encap: Encap::Ip,
        gue_port: 0,
        egress: Egress::Lb0,
    },
    SiteDef {
        index: 14,
        flags: UP,
        endpoint: "10.0.0.4",
        encap: Encap::Ip,
        gue_port: 0,
        egress: Egress::Lb0,
    },
];

/// Tunnel peers: outer source → sending site.
const PEERS: &[(&str, u32)] = &[("10.0.0.2", 1), ("fd00::2", 2), ("10.0.0.3", 3), ("fd00::3", 4)];

const TUNNEL_V4: &str = "10.0.0.1";
const TUNNEL_V6: &str = "fd00::1";
const GUE_PORT: u16 = 6080;

/// VIPs besides the per-site ones: (address, port, protocol, VIP index).
const EXTRA_VIPS: &[(&str, u16, u8, u32)] = &[
    ("10.200.9.1", 0, PROTO_UDP, 32),   // any port → local
    ("10.200.9.1", 443, PROTO_UDP, 33), // exact port → site 1
    ("10.200.2.1", 0, PROTO_UDP, 34),   // fragments → site 3 (GUE: the hash shows in the output)
    ("10.200.2.1", 53, PROTO_UDP, 34),
    ("fd00:200:2::1", 0, PROTO_UDP, 35), // fragments → site 4
    ("10.200.3.1", 0, PROTO_ICMP, 36),
    ("fd00:200:3::1", 0, PROTO_ICMPV6, 37),
    ("10.200.4.1", 80, PROTO_TCP, 38), // no Maglev table
    ("10.200.4.2", 80, PROTO_TCP, 39), // table of SITE_NONE
    ("10.200.5.1", 53, PROTO_UDP, 40), // exact port only
    ("10.200.1.1", 80, PROTO_TCP, 50), // anchor VIP
    ("10.200.1.1", 53, PROTO_UDP, 50),
    ("10.200.6.1", 53, PROTO_UDP, 41), // affinity = "none" → site 1
    ("10.200.6.2", 53, PROTO_UDP, 42), // affinity = "none" → site 6 (no neighbour)
    ("10.200.3.2", 0, PROTO_ICMP, 43), // any ICMP → site 1
    ("10.200.2.1", 0, PROTO_TCP, 44),  // TCP fragments → site 3
    // More (port, protocol) entries than an address table entry holds: OVERFLOW, matched
    // through VIPS (docs/datapath.md §4).
    ("10.200.7.1", 7001, PROTO_TCP, 45), // → local
    ("10.200.7.1", 7002, PROTO_TCP, 45),
    ("10.200.7.1", 7003, PROTO_TCP, 45),
    ("10.200.7.1", 7004, PROTO_TCP, 45),
    ("10.200.7.1", 7005, PROTO_TCP, 45),
    ("10.200.7.1", 7006, PROTO_TCP, 45),
    ("10.200.7.1", 7007, PROTO_TCP, 45),
    ("10.200.7.1", 7008, PROTO_TCP, 45),
    ("10.200.7.1", 0, PROTO_UDP, 46), // any port → site 1
    // Two VIP addresses on one filter slot (checked in `world`): OVERFLOW too.
    ("10.200.8.1", 53, PROTO_UDP, 47), // → site 1
    (SLOT_SHARER, 53, PROTO_UDP, 48),  // → local
];

/// An address on the filter slot of 10.200.8.1.
const SLOT_SHARER: &str = "10.201.191.60";
/// An address that is no VIP on the filter slot of the VIP address 10.200.9.1 (whose
/// `ADDRS` entry has UDP 443): the data path must compare the address itself.
const SLOT_NEIGHBOUR: &str = "10.9.149.8";

/// VIPs of `affinity = "none"` (UDP steered by the table alone).
const STATELESS: &[u32] = &[41, 42];

const ANCHOR_TABLE: &[u32] = &[12, 13, 14, 12, 13, 14, 12];

const EXTRA_TABLES: &[(u32, &[u32])] = &[
    (32, &[S_LOCAL | MAGLEV_LOCAL]),
    (33, &[S_IPIP]),
    (34, &[S_GUE4]),
    (35, &[S_GUE6]),
    (36, &[S_LOCAL | MAGLEV_LOCAL]),
    (37, &[S_LOCAL | MAGLEV_LOCAL]),
    (39, &[SITE_NONE]),
    (40, &[S_LOCAL | MAGLEV_LOCAL]),
    (41, &[S_IPIP]),
    (42, &[6]),
    (43, &[S_IPIP]),
    (44, &[S_GUE4]),
    (45, &[S_LOCAL | MAGLEV_LOCAL]),
    (46, &[S_IPIP]),
    (47, &[S_IPIP]),
    (48, &[S_LOCAL | MAGLEV_LOCAL]),
    (50, ANCHOR_TABLE),
];

/// Next-hop MACs (the PERMANENT neighbours) and our interface MACs per egress.
const NH0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa2];
const NH1_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0xa2];
const NH2_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 0xa2];
const LB1_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x01];
const LB2_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 0x01];
/// lb0's MTU: an IPIP packet fits when its inner packet has at most 1380 bytes.
const LB0_MTU: u32 = 1400;

fn site_def(index: u32) -> &'static SiteDef {
    SITES.iter().find(|s| s.index == index).unwrap_or_else(|| panic!("no site {index} in the world"))
}

/// The site a one-slot-table VIP goes to.
fn single_site(vip: u32) -> u32 {
    EXTRA_TABLES.iter().find(|(v, _)| *v == vip).map_or(vip % 16, |(_, t)| t[0] & 0xffff)
}

impl SiteDef {
    fn tunnel(&self) -> Tunnel {
        let dst = addr(self.endpoint);
        let (smac, dmac) = match self.egress {
            Egress::Lb0 => (HOST_MAC, NH0_MAC),
            Egress::Lb1 => (LB1_MAC, NH1_MAC),
            Egress::Lb2 => (LB2_MAC, NH2_MAC),
        };
        let src = addr(if dst.is_ipv4() { TUNNEL_V4 } else { TUNNEL_V6 });
        let gue_port = (self.encap == Encap::Gue).then_some(self.gue_port);
        Tunnel { smac, dmac, src, dst, gue_port }
    }

    fn info(&self) -> SiteInfo {
        let (tunnel_addr, family) = addr16(addr(self.endpoint));
        SiteInfo {
            flags: self.flags,
            generation: 1,
            tunnel_addr,
            tunnel_family: family as u8,
            encap: self.encap as u8,
            gue_port: self.gue_port,
        }
    }
}

fn key_of(a: &str) -> AddrKey {
    match addr16(addr(a)) {
        (b, anycast_common::Family::V4) => AddrKey::v4([b[0], b[1], b[2], b[3]]),
        (b, _) => AddrKey::v6(b),
    }
}

fn vip_key(a: &str, port: u16, proto: u8) -> VipKey {
    let (addr, family) = addr16(addr(a));
    VipKey { addr, port, proto, family: family as u8 }
}

/// Every VIP: (address, port, protocol, index).
fn all_vips() -> Vec<(String, u16, u8, u32)> {
    let mut v = Vec::new();
    for s in SITES.iter().filter(|s| s.index < 12) {
        for (a, idx) in
            [(format!("10.200.0.{}", s.index), s.index), (format!("fd00:200::{}", s.index), 16 + s.index)]
        {
            v.push((a.clone(), 80, PROTO_TCP, idx));
            v.push((a, 53, PROTO_UDP, idx));
        }
    }
    v.extend(EXTRA_VIPS.iter().map(|&(a, p, pr, i)| (a.to_string(), p, pr, i)));
    v
}

/// Writes the world into a freshly loaded program's maps.
fn world(m: &mut DataPathMaps, lb1_ifindex: u32) -> anyhow::Result<()> {
    let (t4, _) = addr16(addr(TUNNEL_V4));
    let (t6, _) = addr16(addr(TUNNEL_V6));
    m.set_config(&LocalConfig {
        hash_key: HashKey::from_bytes(KEY),
        flags: CONFIG_TUNNEL_V4 | CONFIG_TUNNEL_V6,
        tunnel_v4: [t4[0], t4[1], t4[2], t4[3]],
        tunnel_v6: t6,
        gue_port: GUE_PORT,
        socket_netns: u32::MAX,
        local_site: S_LOCAL,
        // Far above what the table sends: the limits have their own scenarios.
        icmp: Limit::per_second(1_000_000, 1_000_000),
        pin: Limit::per_second(1_000_000, 1_000_000),
        ..LocalConfig::default()
    })?;
    for s in SITES {
        m.set_site(s.index, &s.info())?;
    }
    for (a, site) in PEERS {
        m.set_tunnel_peer(&key_of(a), *site)?;
    }
    let vips: Vec<(VipKey, VipInfo)> = all_vips()
        .iter()
        .map(|(a, port, proto, index)| {
            let flags = if STATELESS.contains(index) { VIP_STATELESS } else { 0 };
            (vip_key(a, *port, *proto), VipInfo { index: *index, flags })
        })
        .collect();
    // One batch: every table swap waits for running programs once per batch.
    let singles: Vec<(u32, [u32; 1])> = SITES
        .iter()
        .filter(|s| s.index < 12)
        .flat_map(|s| {
            let entry = if s.flags & SITE_LOCAL != 0 { s.index | MAGLEV_LOCAL } else { s.index };
            [(s.index, [entry]), (16 + s.index, [entry])]
        })
        .collect();
    let mut tables: Vec<(u32, &[u32])> = singles.iter().map(|(v, t)| (*v, &t[..])).collect();
    tables.extend(EXTRA_TABLES.iter().map(|(v, t)| (*v, *t)));
    m.set_maglev_tables(&tables)?;
    let tunnels = [key_of(TUNNEL_V4), key_of(TUNNEL_V6)];
    // The non-VIP addresses the table uses must not share a filter slot with a VIP, or the
    // "not inspected" cases would not test the pre-filter.
    let ours: Vec<AddrKey> = vips
        .iter()
        .map(|(k, _)| AddrKey { addr: k.addr, family: k.family, pad: [0; 3] })
        .chain(tunnels)
        .collect();
    for (vip, other) in [("10.200.8.1", SLOT_SHARER), ("10.200.9.1", SLOT_NEIGHBOUR)] {
        if filter_index(&key_of(vip)) != filter_index(&key_of(other)) {
            anyhow::bail!("{other} no longer shares {vip}'s filter slot: pick another");
        }
    }
    for other in ["10.9.9.9", "2001:db8::99"] {
        let i = filter_index(&key_of(other));
        if let Some(k) = ours.iter().find(|k| filter_index(k) == i) {
            anyhow::bail!("{other} shares filter slot {i} with {k:?}: pick another test address");
        }
    }
    m.set_vips_with_addresses(&vips, &tunnels)?;
    m.add_egress(lb1_ifindex)?;
    Ok(())
}

/// Two namespaces: `lb` (the host under test: lb0, lb1, lb2) and `nb` (their veth peers).
struct Topology {
    lb: Netns,
    _nb: Netns,
    lb0: u32,
    lb1: u32,
}

impl Topology {
    fn build() -> anyhow::Result<Topology> {
        let lb = Netns::new("dp-lb")?;
        let nb = Netns::new("dp-nb")?;
        for (i, (mac, nh)) in
            [(HOST_MAC, NH0_MAC), (LB1_MAC, NH1_MAC), (LB2_MAC, NH2_MAC)].into_iter().enumerate()
        {
            let (ifname, peer) = (format!("lb{i}"), format!("nb{i}"));
            lb.add_veth(&ifname, &nb, &peer)?;
            lb.set_mac(&ifname, mac)?;
            nb.set_mac(&peer, nh)?;
            lb.add_addr(&ifname, &format!("10.0.{i}.1/24"))?;
        }
        lb.set_mtu("lb0", LB0_MTU)?;
        nb.set_mtu("nb0", LB0_MTU)?;
        lb.add_addr("lb0", "fd00::1/64")?;
        for a in ["10.0.0.2", "10.0.0.3", "10.0.0.4", "fd00::2", "fd00::3"] {
            lb.add_neigh("lb0", a, NH0_MAC)?;
        }
        lb.add_neigh("lb1", "10.0.1.2", NH1_MAC)?;
        lb.add_neigh("lb2", "10.0.2.2", NH2_MAC)?;
        lb.enable_forwarding()?;
        // The second-chance cases hold real connections between these (client and VIP).
        for a in ["10.200.0.1/32", "192.168.1.42/32", "fd00:200::1/128", "2001:db8::42/128"] {
            lb.add_addr("lo", a)?;
        }
        let (lb0, lb1) = (lb.ifindex("lb0")?, lb.ifindex("lb1")?);
        Ok(Topology { lb, _nb: nb, lb0, lb1 })
    }
}

fn watched_vips() -> Vec<u32> {
    let mut v: Vec<u32> = all_vips().into_iter().map(|(.., i)| i).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Pins the calling thread to the CPU it runs on: BPF_PROG_RUN runs the program on the
/// current CPU, and the LRU flow table keeps per-CPU free lists, so a small-table eviction
/// case is only deterministic when every packet runs on the same CPU.
fn pin_to_current_cpu() {
    // SAFETY: sched_getcpu has no preconditions; a zeroed cpu_set_t is valid and CPU_SET
    // writes within it.
    unsafe {
        let cpu = libc::sched_getcpu().max(0) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
}

#[test]
fn datapath_fixtures() {
    if !require("datapath_fixtures", &[Need::Kernel]) {
        return;
    }
    let topo = Topology::build().expect("building the test topology");
    let (lb0, lb1) = (topo.lb0, topo.lb1);
    let report = topo.lb.run(move || {
        pin_to_current_cpu();
        let world = move |m: &mut DataPathMaps| world(m, lb1);
        let suite = Suite {
            world: &world,
            ingress: Some(lb0),
            sites: SITES.iter().map(|s| s.index).collect(),
            vips: watched_vips(),
        };
        let cases = cases();
        suite.run(&cases)
    });
    report.assert_all_passed();
}

#[test]
fn datapath_table_has_enough_unique_cases() {
    let cases = cases();
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "duplicate case names");
    assert!(n >= 60, "{n} cases");
}
