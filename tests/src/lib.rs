//! Test support for anycast: everything the kernel-level tests of every issue share, beyond
//! what they share with xtask's lab (the `testkit` crate: namespaces, daemons, traffic,
//! metrics, skips and teardown).
//!
//! - [`netns`]: testkit's network namespaces, re-exported for the data-path fixtures and the
//!   bench.
//! - [`bird`]: real BIRD 2 daemons in namespaces (BGP tests): config, start/stop, routes.
//! - [`pinned`]: a daemon's pinned maps and links, read with the controller's library.
//! - [`prometheus`]: a real Prometheus server scraping controllers, and its query API.
//! - [`admin`]: a daemon's admin API on its Unix socket, through the CLI's client.
//! - [`harness`]: the embedded XDP object loaded into the kernel, frames run through it
//!   with BPF_PROG_RUN, maps reached through `anycast_user::datapath::maps::DataPathMaps`.
//! - [`packet`]: frames built with etherparse (VLAN, IPv4 options, IPv6 extension headers,
//!   fragments, ICMP errors, tunnels, padding).
//! - [`sustained`]: UDP streams and TCP transfers through two sites (A steering, B
//!   remote) while a test disturbs A's controller.
//! - [`topology`]: topologies several real-packet tests share (client → A → B chain).
//! - [`checksum`]: an Internet checksum of our own, to verify what the program computes.
//! - [`reference`]: the flow hash and what derives from it, from their specification with an
//!   independent SipHash, so that no prediction comes from the code under test.
//! - [`expect`]: expected encapsulated / decapsulated / ICMP-reply frames, from the rules
//!   of docs/datapath.md.
//! - [`diff`]: readable differences between an expected and an actual frame.
//! - [`fixture`]: the data-driven runner behind `tests/datapath.rs`.
//! - [`anchor`]: the anchor frames and configuration of ../shared/anchor-packets.md.
//! - [`bench`]: `cargo xtask bench` (binary `anycast-bench`): per-packet cost, throughput
//!   and control-plane figures.

pub mod admin;
pub mod anchor;
pub mod bench;
pub mod bird;
pub mod checksum;
pub mod diff;
pub mod expect;
pub mod fixture;
pub mod harness;
pub mod packet;
pub mod pinned;
pub mod prometheus;
pub mod reference;
pub mod sustained;
pub mod topology;

pub use testkit::netns;
