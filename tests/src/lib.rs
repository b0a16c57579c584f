//! Test support for anycast: everything the kernel-level tests of every issue share.
//!
//! - [`netns`]: network-namespace topologies (veth, addresses, routes, static neighbours,
//!   sysctls) with unique names and guaranteed teardown; code run inside a namespace.
//! - [`bird`]: real BIRD 2 daemons in namespaces (BGP tests): config, start/stop, routes.
//! - [`daemon`]: the `anycast` binary run as a daemon inside a test's namespace, with its own
//!   config, pins and state, all removed on drop.
//! - [`harness`]: the embedded XDP object loaded into the kernel, frames run through it
//!   with BPF_PROG_RUN, maps reached through `anycast_user::datapath::maps::DataPathMaps`.
//! - [`packet`]: frames built with etherparse (VLAN, IPv4 options, IPv6 extension headers,
//!   fragments, ICMP errors, tunnels, padding).
//! - [`sequenced`]: paced, numbered UDP datagrams and a receiver that finds the lost ones.
//! - [`sites`]: three sites and a client with per-flow UDP services (load-aware steering).
//! - [`sustained`]: UDP streams and TCP transfers through two sites (A steering, B
//!   remote) while a test disturbs A's controller.
//! - [`tcp`]: long-lived TCP transfers at a bounded rate and a sink that counts their bytes.
//! - [`topology`]: topologies several real-packet tests share (client → A → B chain).
//! - [`checksum`]: an Internet checksum of our own, to verify what the program computes.
//! - [`expect`]: expected encapsulated / decapsulated / ICMP-reply frames, from the rules
//!   of docs/datapath.md.
//! - [`diff`]: readable differences between an expected and an actual frame.
//! - [`fixture`]: the data-driven runner behind `tests/datapath.rs`.
//! - [`anchor`]: the anchor frames and configuration of ../shared/anchor-packets.md.
//! - [`bench`]: `cargo xtask bench` (binary `anycast-bench`): per-packet cost, throughput
//!   and control-plane figures.

pub mod anchor;
pub mod bench;
pub mod bird;
pub mod checksum;
pub mod daemon;
pub mod diff;
pub mod expect;
pub mod fixture;
pub mod harness;
pub mod netns;
pub mod packet;
pub mod sequenced;
pub mod sites;
pub mod sustained;
pub mod tcp;
pub mod topology;
