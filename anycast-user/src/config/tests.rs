use super::*;

const EXAMPLE: &str = include_str!("../../../deploy/anycast.toml");

const BASE: &str = r#"
[local]
interfaces = ["veth0"]
tunnel_v4 = "10.0.0.1"

[[sites]]
name = "a"
local = true
capacity = 10

[[sites]]
name = "b"
endpoint = "10.0.0.2"
capacity = 10
"#;

fn problems(text: &str) -> Vec<Problem> {
    match Config::parse(text, "t.toml") {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(e) => panic!("{e}"),
    }
}

/// Exactly one problem, at this line and column, whose message contains `needle`.
fn one(text: &str, line: usize, column: usize, needle: &str) {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!((p[0].line, p[0].column), (line, column), "{p:#?}");
    assert!(p[0].message.contains(needle), "{:?} lacks {needle:?}", p[0].message);
}

#[test]
fn example_config_is_valid() {
    let c = Config::parse(EXAMPLE, "anycast.toml").unwrap();
    assert_eq!(c.sites.len(), 3);
    assert_eq!(c.sites[0].kind, SiteKind::Local);
    assert_eq!(c.sites[2].configured_weight(), 600);
    assert_eq!(
        c.sites[2].kind,
        SiteKind::Remote { endpoint: "2001:db8:200::1".parse().unwrap(), encap: Encap::Gue { port: 6080 } }
    );
    assert_eq!(c.vips[1].sites, ["fra", "lhr"]);
    assert_eq!(c.vips[0].sites, ["fra", "ams", "lhr"]);
    assert_eq!(c.vips[2].name, "192.0.2.53:any/icmp");
    assert_eq!(c.datapath.maglev_table_size, 65537);
    assert_eq!(c.admin.listen, "127.0.0.1:9871".parse().unwrap());
}

#[test]
fn defaults_apply() {
    let c = Config::parse(BASE, "t").unwrap();
    assert_eq!(c.datapath.flow_table_size, DEFAULT_FLOW_TABLE_SIZE);
    assert_eq!(c.datapath.pin_dir, Path::new(DEFAULT_PIN_DIR));
    assert_eq!(c.admin.state_dir, Path::new(DEFAULT_STATE_DIR));
    assert!(c.vips.is_empty());
}

#[test]
fn every_syntax_error_is_reported() {
    let p = problems("[local\ninterfaces = [\"a\"]\nx = = 1\n");
    assert!(p.len() >= 2, "{p:#?}");
    assert_eq!(p[0].line, 1);
    assert!(p.iter().any(|p| p.line == 3), "{p:#?}");
}

#[test]
fn type_error() {
    one(&BASE.replace("capacity = 10\n\n[[sites]]", "capacity = \"ten\"\n\n[[sites]]"), 9, 12, "u32");
}

#[test]
fn type_errors_in_two_entries_are_both_reported() {
    let text = BASE.replace("capacity = 10", "capacity = -1");
    let p = problems(&text);
    assert_eq!(p.iter().map(|p| (p.line, p.column)).collect::<Vec<_>>(), [(9, 12), (14, 12)], "{p:#?}");
}

#[test]
fn unknown_field() {
    one(&BASE.replace("local = true", "local = true\ncolour = \"red\""), 9, 1, "colour");
}

#[test]
fn unknown_section() {
    one(&format!("{BASE}\n[metrics]\nx = 1\n"), 16, 2, "unknown section `metrics`");
}

#[test]
fn missing_field() {
    let p = problems(&BASE.replace("capacity = 10\n\n[[sites]]", "\n[[sites]]"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].message.contains("capacity"), "{p:#?}");
    assert_eq!((p[0].line, p[0].column), (6, 1), "{p:#?}");
}

#[test]
fn duplicate_site_name() {
    one(&BASE.replace("name = \"b\"", "name = \"a\""), 12, 8, "duplicate site name `a` (first at line 7)");
}

#[test]
fn unknown_site_in_vip() {
    let text = format!(
        "{BASE}\n[[vips]]\naddress = \"192.0.2.1\"\nport = 53\nprotocol = \"udp\"\nsites = [\"a\", \"zz\"]\n"
    );
    one(&text, 20, 15, "unknown site `zz`");
}

#[test]
fn non_prime_maglev_size() {
    one(&format!("{BASE}\n[datapath]\nmaglev_table_size = 65536\n"), 17, 21, "65536 is not prime");
}

#[test]
fn maglev_size_above_maximum() {
    one(&format!("{BASE}\n[datapath]\nmaglev_table_size = 1000003\n"), 17, 21, "above the maximum");
}

#[test]
fn flow_table_size_out_of_range() {
    one(&format!("{BASE}\n[datapath]\nflow_table_size = 10\n"), 17, 19, "out of range");
}

#[test]
fn address_family_mismatch() {
    one(
        &BASE.replace("\"10.0.0.2\"", "\"2001:db8::2\""),
        13,
        12,
        "IPv6 endpoint but [local] has no tunnel_v6",
    );
}

#[test]
fn wrong_family_for_tunnel_address() {
    one(&BASE.replace("tunnel_v4 = \"10.0.0.1\"", "tunnel_v4 = \"2001:db8::1\""), 4, 13, "IPv4");
}

#[test]
fn port_out_of_range() {
    let text = format!("{BASE}\n[[vips]]\naddress = \"192.0.2.1\"\nport = 70000\nprotocol = \"udp\"\n");
    one(&text, 18, 8, "out of range");
}

#[test]
fn port_zero_and_bad_string() {
    let text = format!(
        "{BASE}\n[[vips]]\naddress = \"192.0.2.1\"\nport = 0\nprotocol = \"udp\"\n\
         \n[[vips]]\naddress = \"192.0.2.2\"\nport = \"all\"\nprotocol = \"udp\"\n"
    );
    let p = problems(&text);
    assert_eq!(p.iter().map(|p| (p.line, p.column)).collect::<Vec<_>>(), [(18, 8), (23, 8)], "{p:#?}");
}

#[test]
fn gue_port_out_of_range() {
    one(
        &BASE.replace("tunnel_v4 = \"10.0.0.1\"", "tunnel_v4 = \"10.0.0.1\"\ngue_port = 65536"),
        5,
        12,
        "u16",
    );
}

#[test]
fn icmp_with_port() {
    let text = format!("{BASE}\n[[vips]]\naddress = \"192.0.2.1\"\nport = 7\nprotocol = \"icmp\"\n");
    one(&text, 18, 8, "ICMP has no ports");
}

#[test]
fn unknown_protocol() {
    let text = format!("{BASE}\n[[vips]]\naddress = \"192.0.2.1\"\nport = 7\nprotocol = \"sctp\"\n");
    one(&text, 19, 12, "sctp");
}

#[test]
fn no_local_site_and_two_local_sites() {
    // At the first site, the one that would usually be local.
    one(&BASE.replace("local = true", "endpoint = \"10.0.0.3\""), 7, 8, "no local site");
    one(&BASE.replace("endpoint = \"10.0.0.2\"", "local = true"), 13, 9, "second local site");
}

#[test]
fn remote_without_endpoint_and_local_with_endpoint() {
    one(&BASE.replace("endpoint = \"10.0.0.2\"\n", ""), 12, 8, "has no endpoint");
    one(&BASE.replace("local = true", "local = true\nendpoint = \"10.0.0.9\""), 9, 12, "is local");
}

#[test]
fn duplicate_endpoint_and_vip() {
    let text =
        format!("{}\n[[sites]]\nname = \"c\"\nendpoint = \"10.0.0.2\"\ncapacity = 1\n", BASE.trim_end());
    one(&text, 17, 12, "already the endpoint of site `b`");
    let vip = "\n[[vips]]\naddress = \"192.0.2.1\"\nport = 53\nprotocol = \"udp\"\n";
    one(&format!("{BASE}{vip}{vip}"), 22, 11, "repeats VIP");
}

#[test]
fn duplicate_vip_name() {
    let text = format!(
        "{BASE}\n[[vips]]\nname = \"x\"\naddress = \"192.0.2.1\"\nport = 53\nprotocol = \"udp\"\n\
         \n[[vips]]\nname = \"x\"\naddress = \"192.0.2.1\"\nport = 54\nprotocol = \"udp\"\n"
    );
    one(&text, 23, 8, "duplicate VIP name `x`");
}

#[test]
fn gue_needs_port_and_port_needs_gue() {
    one(
        &BASE.replace("endpoint = \"10.0.0.2\"", "endpoint = \"10.0.0.2\"\nencap = \"gue\""),
        14,
        9,
        "needs gue_port",
    );
    one(
        &BASE.replace("endpoint = \"10.0.0.2\"", "endpoint = \"10.0.0.2\"\ngue_port = 1"),
        14,
        12,
        "needs encap = \"gue\"",
    );
}

#[test]
fn bad_listen_address_and_relative_dir() {
    let p = problems(&format!("{BASE}\n[admin]\nlisten = \"localhost\"\nstate_dir = \"var/lib\"\n"));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!((p[0].line, p[0].column), (17, 10), "{p:#?}");
    one(&format!("{BASE}\n[admin]\nstate_dir = \"var/lib\"\n"), 17, 13, "absolute");
}

#[test]
fn interface_problems() {
    one(&BASE.replace("[\"veth0\"]", "[]"), 3, 14, "empty");
    one(&BASE.replace("[\"veth0\"]", "[\"veth0\", \"veth0\"]"), 3, 24, "twice");
    one(&BASE.replace("[\"veth0\"]", "[\"a-very-long-interface-name\"]"), 3, 15, "not an interface name");
}

#[test]
fn many_problems_at_once() {
    let text = BASE
        .replace("name = \"b\"", "name = \"a\"")
        .replace("capacity = 10\n\n", "capacity = 0\n\n")
        .replace("[\"veth0\"]", "[]");
    let p = problems(&text);
    assert_eq!(p.len(), 3, "{p:#?}");
    let rendered = ConfigError::Invalid { path: "t.toml".into(), problems: p }.to_string();
    assert!(rendered.starts_with("t.toml:3:14: "), "{rendered}");
    assert!(rendered.ends_with("3 errors, nothing applied"), "{rendered}");
}

#[test]
fn primes() {
    assert!(is_prime(65537) && is_prime(2) && is_prime(262147) && is_prime(16381));
    assert!(!is_prime(1) && !is_prime(65536) && !is_prime(9));
    assert_eq!(next_prime(65536), 65537);
}

#[test]
fn load_and_health_sections_parse_with_defaults() {
    let text = format!("{BASE}\n[load]\ntarget = 0.75\ncpu = false\n\n[health]\nfall = 2\n");
    let c = Config::parse(&text, "t").unwrap();
    let l = c.load.unwrap();
    assert_eq!((l.target, l.high, l.low, l.cpu), (0.75, 0.85, 0.65, false));
    assert_eq!((l.interval, l.stale), (Duration::from_millis(500), Duration::from_secs(3)));
    let h = c.health.unwrap();
    assert_eq!((h.rise, h.fall, h.interval), (2, 2, Duration::from_secs(1)));
    assert!(Config::parse(BASE, "t").unwrap().load.is_none());
}

/// 1-based line of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).expect(prefix) + 1
}

#[test]
fn load_watermarks_must_bracket_the_target() {
    let text = format!("{BASE}\n[load]\ntarget = 0.8\nhigh = 0.7\n");
    one(&text, line_of(&text, "target"), 10, "low < target < high");
    let text = format!("{BASE}\n[load]\ntarget = 1.5\n");
    assert!(
        problems(&text)
            .iter()
            .any(|p| p.line == line_of(&text, "target") && p.message.contains("not a ratio"))
    );
    let text = format!("{BASE}\n[health]\nrise = 0\n");
    one(&text, line_of(&text, "rise"), 8, "rise 0 is out of range 1..=100");
    let text = format!("{BASE}\n[load]\ninterval_ms = 10\n");
    one(&text, line_of(&text, "interval_ms"), 15, "interval_ms 10 is out of range");
}

#[test]
fn peer_is_for_remote_sites_and_must_be_an_address() {
    let text = format!("{BASE}\n[admin]\npeer_key_file = \"/etc/anycast/peer.key\"\n")
        .replace("local = true\n", "local = true\npeer = \"10.0.0.1:9101\"\n");
    one(&text, line_of(&text, "peer"), 8, "peer applies only to remote sites");
    let text = BASE.replace("endpoint = \"10.0.0.2\"\n", "endpoint = \"10.0.0.2\"\npeer = \"nowhere\"\n");
    let p = problems(&text);
    assert!(p.iter().any(|p| p.line == line_of(&text, "peer")), "{p:?}");
}

#[test]
fn datapath_limits_key_and_affinity() {
    let vips = "\n[[vips]]\naddress = \"192.0.2.1\"\nport = 53\nprotocol = \"udp\"\naffinity = \"none\"\n";
    let text = format!(
        "{BASE}{vips}\n[datapath]\nhash_key = \"00112233445566778899aabbccddeeff\"\nicmp_rate = 10\n\
         icmp_burst = 2\npin_rate = 500\npin_burst = 5\nsocket_netns_id = 3\n"
    );
    let c = Config::parse(&text, "t.toml").unwrap();
    let d = &c.datapath;
    let mut want = [0u8; 16];
    for (i, b) in want.iter_mut().enumerate() {
        *b = (i as u8) * 0x11;
    }
    assert_eq!(d.hash_key, HashKeySource::Inline(want));
    assert_eq!((d.icmp_rate, d.icmp_burst, d.pin_rate, d.pin_burst), (10, 2, 500, 5));
    assert_eq!(d.socket_netns_id, Some(3));
    assert_eq!(c.vips[0].affinity, Affinity::None);
    // Defaults: a generated key, limits, the interfaces' namespace, pinned UDP.
    let c = Config::parse(
        &format!("{BASE}\n[[vips]]\naddress = \"192.0.2.1\"\nport = 53\nprotocol = \"udp\"\n"),
        "t",
    )
    .unwrap();
    assert_eq!(c.datapath.hash_key, HashKeySource::Generated);
    assert_eq!((c.datapath.icmp_rate, c.datapath.pin_rate), (DEFAULT_ICMP_RATE, DEFAULT_PIN_RATE));
    assert_eq!(c.datapath.socket_netns_id, None);
    assert_eq!(c.vips[0].affinity, Affinity::Flow);
    let file =
        Config::parse(&format!("{BASE}\n[datapath]\nhash_key_file = \"/etc/anycast/key\"\n"), "t").unwrap();
    assert_eq!(file.datapath.hash_key, HashKeySource::File("/etc/anycast/key".into()));
}

#[test]
fn datapath_key_and_limit_errors() {
    // Each problem at the line of its key (the first line that starts with it).
    let check = |extra: &str, key: &str, column: usize, needle: &str| {
        let text = format!("{BASE}\n[datapath]\n{extra}\n");
        let line = text.lines().position(|l| l.starts_with(key)).unwrap() + 1;
        one(&text, line, column, needle);
    };
    check("hash_key = \"0123\"", "hash_key", 12, "32 hexadecimal digits");
    check("hash_key = \"zz112233445566778899aabbccddeeff\"", "hash_key", 12, "32 hexadecimal digits");
    check(
        "hash_key = \"00112233445566778899aabbccddeeff\"\nhash_key_file = \"/k\"",
        "hash_key_file",
        17,
        "not both",
    );
    check("hash_key_file = \"key\"", "hash_key_file", 17, "absolute path");
    check("icmp_burst = 0", "icmp_burst", 14, "at least 1");
    check("pin_rate = 0", "pin_rate", 12, "at least 1");
    check("socket_netns_id = 4294967295", "socket_netns_id", 19, "namespace id");
}

#[test]
fn affinity_is_for_udp_vips_only() {
    let text = format!(
        "{BASE}\n[[vips]]\naddress = \"192.0.2.1\"\nport = 80\nprotocol = \"tcp\"\naffinity = \"none\"\n"
    );
    let line = text.lines().position(|l| l.starts_with("affinity")).unwrap() + 1;
    one(&text, line, 12, "UDP VIPs only");
    let bad = format!(
        "{BASE}\n[[vips]]\naddress = \"192.0.2.1\"\nport = 53\nprotocol = \"udp\"\naffinity = \"sticky\"\n"
    );
    let p = problems(&bad);
    assert!(p.iter().any(|p| p.message.contains("unknown variant `sticky`")), "{p:#?}");
}

#[test]
fn neighbours_mode() {
    assert_eq!(Config::parse(BASE, "t.toml").unwrap().local.neighbours, NeighbourMode::Managed);
    for (text, mode) in [
        ("refresh", NeighbourMode::Refresh),
        ("off", NeighbourMode::Off),
        ("managed", NeighbourMode::Managed),
    ] {
        let c = Config::parse(
            &BASE.replacen("[local]\n", &format!("[local]\nneighbours = \"{text}\"\n"), 1),
            "t.toml",
        );
        assert_eq!(c.unwrap().local.neighbours, mode, "{text}");
    }
    let bad = BASE.replacen("[local]\n", "[local]\nneighbours = \"static\"\n", 1);
    let p = problems(&bad);
    assert!(p.iter().any(|p| p.line == 3 && p.message.contains("unknown variant `static`")), "{p:#?}");
}

#[test]
fn relations_point_at_the_value_that_decides_and_whole_file_problems_have_no_line() {
    // Between two values: at the one that must change (or its section when both default).
    let health = format!("{BASE}\n[health]\ninterval_ms = 100\ntimeout_ms = 200\n");
    let line = health.lines().position(|l| l.starts_with("timeout_ms")).unwrap() + 1;
    one(&health, line, 14, "must not exceed interval_ms");
    let load = format!("{BASE}\n[load]\ninterval_ms = 1000\nstale_ms = 1500\n");
    let line = load.lines().position(|l| l.starts_with("stale_ms")).unwrap() + 1;
    one(&load, line, 12, "at least twice interval_ms");
    let three = format!("{BASE}\n[[sites]]\nname = \"c\"\nendpoint = \"10.0.0.3\"\ncapacity = 1\n");
    let size = three.replacen("[local]", "[datapath]\nmaglev_table_size = 2\n\n[local]", 1);
    let line = size.lines().position(|l| l.starts_with("maglev_table_size")).unwrap() + 1;
    one(&size, line, 21, "smaller than the number of sites");
    // About the file as a whole: no line, and the message says so without one.
    let text = BASE.replacen("[local]\ninterfaces = [\"veth0\"]\ntunnel_v4 = \"10.0.0.1\"\n", "", 1);
    let p = problems(&text);
    let missing = p.iter().find(|p| p.message.contains("missing section [local]")).expect("{p:#?}");
    assert_eq!((missing.line, missing.column), (0, 0), "{p:#?}");
    let Err(e) = Config::parse(&text, "t.toml") else { panic!("accepted") };
    assert!(
        e.to_string().lines().any(|l| l == "t.toml: missing section [local] (interfaces, tunnel addresses)"),
        "{e}"
    );
}

/// [`BASE`] whose local site `a` has two hosts, this one being `host`, and whose remote
/// site `b` has two hosts too.
fn hosts(host: &str) -> String {
    BASE.replace("tunnel_v4 = \"10.0.0.1\"\n", &format!("tunnel_v4 = \"10.0.0.1\"\n{host}"))
        .replace(
            "local = true\ncapacity = 10\n",
            "local = true\ncapacity = 10\nhosts = [{ name = \"a1\", peer = \"10.1.0.1:9101\" }, \
             { name = \"a2\", peer = \"10.1.0.2:9101\" }]\n",
        )
        .replace(
            "endpoint = \"10.0.0.2\"\ncapacity = 10\n",
            "endpoint = \"10.0.0.2\"\ncapacity = 10\nhosts = [{ name = \"b1\", peer = \"10.2.0.1:9101\" }, \
             { name = \"b2\", peer = \"10.2.0.2:9101\" }]\n",
        )
        + "\n[admin]\npeer_key_file = \"/etc/anycast/peer.key\"\n"
}

#[test]
fn sites_of_several_hosts() {
    let c = Config::parse(&hosts("host = \"a2\"\n"), "t").unwrap();
    assert_eq!(c.local.host.as_deref(), Some("a2"));
    assert_eq!(c.sites[0].hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["a1", "a2"]);
    assert_eq!(c.sites[0].host_capacity(), 5.0, "the hosts of a site are alike");
    assert_eq!(c.sites[1].peers(), ["10.2.0.1:9101".parse().unwrap(), "10.2.0.2:9101".parse().unwrap()]);
}

#[test]
fn the_host_must_be_one_of_the_local_sites() {
    one(&hosts(""), 10, 9, "[local] host must say which one this is");
    one(&hosts("host = \"b1\"\n"), 5, 8, "`b1` is not one of site `a`'s hosts (a1, a2)");
    one(
        &BASE.replace("tunnel_v4 = \"10.0.0.1\"\n", "tunnel_v4 = \"10.0.0.1\"\nhost = \"a1\"\n"),
        5,
        8,
        "has no hosts",
    );
}

#[test]
fn hosts_are_two_or_more_with_their_own_addresses_and_no_site_peer() {
    let text = hosts("host = \"a1\"\n");
    one(
        &text.replace("peer = \"10.1.0.2:9101\"", "peer = \"10.1.0.1:9102\""),
        11,
        73,
        "two hosts at 10.1.0.1",
    );
    one(&text.replace("name = \"a2\"", "name = \"a1\""), 11, 60, "host `a1` is listed twice");
    one(&text.replace(", { name = \"b2\", peer = \"10.2.0.2:9101\" }", ""), 17, 9, "hosts lists 1 host");
    one(
        &text.replace("endpoint = \"10.0.0.2\"\n", "endpoint = \"10.0.0.2\"\npeer = \"10.2.0.9:9101\"\n"),
        16,
        8,
        "each host has its own peer",
    );
}
