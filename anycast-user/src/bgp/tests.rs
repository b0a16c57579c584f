use super::*;

fn config(extra: &str) -> Config {
    let text = format!(
        r#"
[local]
interfaces = ["eth0", "eth1"]

[[sites]]
name = "a"
local = true
capacity = 10

[[vips]]
name = "dns"
address = "192.0.2.1"
port = 53
protocol = "udp"

[[vips]]
name = "dns-tcp"
address = "192.0.2.1"
port = 53
protocol = "tcp"

[[vips]]
name = "web6"
address = "2001:db8::1"
port = 443
protocol = "tcp"

[bgp]
{extra}
"#
    );
    Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
}

// Pacing off: these tests are about the states, not the timescales (those have their own).
const KNOBS: &str = "deprefer_med = 500\ndeprefer_prepend = 2\nlocal_as = 65001\nrise = 3\nfall = 2\ndeprefer_after_ms = 0\nhold_down_ms = 0";

fn signals(attached: bool, drained: bool, overloaded: bool, no_headroom: bool) -> SiteSignals {
    SiteSignals { attached, drained, overloaded, no_headroom }
}

const HEALTHY: SiteSignals =
    SiteSignals { attached: true, drained: false, overloaded: false, no_headroom: false };

#[test]
fn wanted_state_from_signals() {
    assert_eq!(Route::wanted(&HEALTHY).0, Route::Announce);
    assert_eq!(
        Route::wanted(&signals(true, false, true, false)).0,
        Route::Announce,
        "overloaded alone sheds"
    );
    assert_eq!(Route::wanted(&signals(true, false, true, true)).0, Route::Deprefer);
    assert_eq!(Route::wanted(&signals(true, true, true, true)).0, Route::Withdraw, "drained beats overload");
    assert_eq!(Route::wanted(&signals(false, false, false, false)).0, Route::Withdraw);
}

#[test]
fn hysteresis_needs_fall_to_worsen_and_rise_to_recover() {
    let mut h = Hysteresis::new(Route::Announce);
    assert_eq!(h.step(Route::Withdraw, &paced(3, 2, 0, 0)), None);
    assert_eq!(h.step(Route::Withdraw, &paced(3, 2, 0, 0)), Some(Route::Withdraw));
    assert_eq!(h.current(), Route::Withdraw);
    assert_eq!(h.step(Route::Announce, &paced(3, 2, 0, 0)), None);
    assert_eq!(h.step(Route::Announce, &paced(3, 2, 0, 0)), None);
    assert_eq!(h.step(Route::Announce, &paced(3, 2, 0, 0)), Some(Route::Announce));
    // Deprefer is worse than announce: fall.
    assert_eq!(h.step(Route::Deprefer, &paced(3, 1, 0, 0)), Some(Route::Deprefer));
}

fn paced(rise: u32, fall: u32, deprefer_after: u32, hold_down: u32) -> Pacing {
    Pacing { rise, fall, deprefer_after, hold_down, graceful_shutdown: 0 }
}

#[test]
fn deprefer_takes_minutes_to_enter_and_leave_and_backs_off_when_repeated() {
    // 1 s intervals: de-prefer after 30 s of wanting it, announce again after 300 s at
    // least, 600 s the second time.
    let p = paced(3, 2, 30, 300);
    let mut h = Hysteresis::new(Route::Announce);
    let steps_to =
        |h: &mut Hysteresis, want: Route| (1..10_000).find(|_| h.step(want, &p).is_some()).unwrap();
    assert_eq!(steps_to(&mut h, Route::Deprefer), 30);
    assert_eq!(steps_to(&mut h, Route::Announce), 300);
    assert_eq!(steps_to(&mut h, Route::Deprefer), 30);
    assert_eq!(steps_to(&mut h, Route::Announce), 600, "the second entry holds twice as long");
    // Four hold-downs announced forgive the entries.
    for _ in 0..1200 {
        assert_eq!(h.step(Route::Announce, &p), None);
    }
    assert_eq!(steps_to(&mut h, Route::Deprefer), 30);
    assert_eq!(steps_to(&mut h, Route::Announce), 300);
    // A drain withdraws at once whatever the hold-down.
    assert_eq!(steps_to(&mut h, Route::Deprefer), 30);
    assert_eq!(steps_to(&mut h, Route::Withdraw), 2);
}

#[test]
fn hysteresis_resets_on_a_flap() {
    let mut h = Hysteresis::new(Route::Announce);
    for _ in 0..10 {
        assert_eq!(h.step(Route::Deprefer, &paced(3, 2, 0, 0)), None);
        assert_eq!(
            h.step(Route::Announce, &paced(3, 2, 0, 0)),
            None,
            "back to the current state resets the count"
        );
    }
    assert_eq!(h.current(), Route::Announce);
    // Wanting another worse state restarts the count.
    assert_eq!(h.step(Route::Deprefer, &paced(3, 2, 0, 0)), None);
    assert_eq!(h.step(Route::Withdraw, &paced(3, 2, 0, 0)), None);
    assert_eq!(h.step(Route::Withdraw, &paced(3, 2, 0, 0)), Some(Route::Withdraw));
}

#[test]
fn render_announce_deprefer_withdraw() {
    let c = config(KNOBS);
    let bgp = c.bgp.clone().unwrap();
    let names = addresses(&c);
    let routes: BTreeMap<IpAddr, Export> = [
        ("192.0.2.1".parse().unwrap(), Route::Deprefer.into()),
        ("2001:db8::1".parse().unwrap(), Route::Announce.into()),
    ]
    .into();
    let text = render(&bgp, "eth0", &names, &routes);
    for line in [
        "#     include \"/run/bird/anycast*.conf\";",
        "#         if defined(bgp_med) then bgp_med = bgp_med;",
        "# 192.0.2.1/32 (dns, dns-tcp): deprefer",
        "# 2001:db8::1/128 (web6): announce",
        "protocol static anycast4 {",
        "protocol static anycast6 {",
        "    route 192.0.2.1/32 via \"eth0\" { bgp_med = 500; bgp_path.prepend(65001); bgp_path.prepend(65001); };",
        "    route 2001:db8::1/128 via \"eth0\";",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }

    let withdrawn: BTreeMap<IpAddr, Export> = names.keys().map(|a| (*a, Route::Withdraw.into())).collect();
    let text = render(&bgp, "eth0", &names, &withdrawn);
    assert!(!text.contains("    route "), "{text}");
    assert!(text.contains("# 192.0.2.1/32 (dns, dns-tcp): withdraw"), "{text}");
    assert!(text.contains("    # 2001:db8::1/128 withdrawn\n"), "{text}");
}

#[test]
fn render_without_prepend_sets_only_the_med() {
    let c = config("deprefer_med = 70");
    let bgp = c.bgp.clone().unwrap();
    let routes = [("192.0.2.1".parse().unwrap(), Route::Deprefer.into())].into();
    let text = render(&bgp, "eth1", &addresses(&c), &routes);
    assert!(text.contains("    route 192.0.2.1/32 via \"eth1\" { bgp_med = 70; };\n"), "{text}");
}

#[test]
fn include_pattern_matches_only_the_file() {
    assert_eq!(include_pattern(Path::new("/run/bird/anycast.conf")), "/run/bird/anycast*.conf");
    assert_eq!(include_pattern(Path::new("/etc/bird/vips")), "/etc/bird/vips*");
}

#[test]
fn speaker_starts_in_the_wanted_state_then_follows_with_hysteresis() {
    let c = config(KNOBS);
    let bgp = c.bgp.clone().unwrap();
    let mut s = Speaker::default();
    let drained = signals(true, true, false, false);
    // Start: the wanted state at once, no transition counted.
    let text = s.step(&c, &bgp, &drained).expect("first step renders");
    assert!(!text.contains("    route "), "{text}");
    s.applied(text, Ok(()), &bgp);
    assert!(s.view().in_sync);
    assert_eq!(s.view().vips["192.0.2.1/32"].0, Route::Withdraw);
    assert!(s.view().vips["192.0.2.1/32"].1.is_empty());
    // Undrained: announce after `rise` = 3 intervals.
    assert_eq!(s.step(&c, &bgp, &HEALTHY), None);
    assert_eq!(s.step(&c, &bgp, &HEALTHY), None);
    let text = s.step(&c, &bgp, &HEALTHY).expect("third healthy interval announces");
    assert!(text.contains("route 192.0.2.1/32 via \"eth0\";"), "{text}");
    assert_eq!(s.view().vips["2001:db8::1/128"].0, Route::Announce);
    assert_eq!(s.view().vips["2001:db8::1/128"].1[&Route::Announce], 1);
    assert!(!s.view().in_sync);
    // A failed apply is counted and retried: the next step returns the same text.
    let err = BirdError::Refused { command: "birdc".into(), answer: "8002 syntax error".into() };
    s.applied(text.clone(), Err(err), &bgp);
    assert_eq!(s.view().apply_failures, 1);
    assert_eq!(s.step(&c, &bgp, &HEALTHY), Some(text.clone()));
    s.applied(text, Ok(()), &bgp);
    assert_eq!(s.step(&c, &bgp, &HEALTHY), None, "nothing to apply once BIRD has it");
    // Overloaded with no headroom: de-preferred after `fall` = 2 intervals.
    let full = signals(true, false, true, true);
    assert_eq!(s.step(&c, &bgp, &full), None);
    let text = s.step(&c, &bgp, &full).expect("de-preferred");
    assert!(text.contains("route 192.0.2.1/32 via \"eth0\" { bgp_med = 500;"), "{text}");
    assert_eq!(s.view().vips["192.0.2.1/32"].0, Route::Deprefer);
}

#[test]
fn speaker_follows_vips_added_and_removed() {
    let c = config(KNOBS);
    let bgp = c.bgp.clone().unwrap();
    let mut s = Speaker::default();
    s.step(&c, &bgp, &HEALTHY).unwrap();
    let mut fewer = c.clone();
    fewer.vips.retain(|v| v.address.is_ipv4());
    let text = s.step(&fewer, &bgp, &HEALTHY).expect("a VIP less changes the file");
    assert!(!text.contains("2001:db8::1"), "{text}");
    assert_eq!(s.view().vips.keys().collect::<Vec<_>>(), ["192.0.2.1/32"]);
}

#[test]
fn config_bgp_defaults_and_errors() {
    let c = config("deprefer_med = 1");
    let b = c.bgp.unwrap();
    assert_eq!(b.socket, Path::new(crate::config::DEFAULT_BIRD_SOCKET));
    assert_eq!(b.include, Path::new(crate::config::DEFAULT_BIRD_INCLUDE));
    assert_eq!((b.rise, b.fall, b.interval, b.deprefer_prepend), (3, 2, Duration::from_secs(1), 0));
    assert_eq!(b.graceful_shutdown, Duration::from_secs(30));

    let base =
        "[local]\ninterfaces = [\"eth0\"]\n[[sites]]\nname = \"a\"\nlocal = true\ncapacity = 1\n[bgp]\n";
    let problems = |extra: &str| match Config::parse(&format!("{base}{extra}"), "t.toml") {
        Ok(_) => panic!("accepted {extra:?}"),
        Err(crate::config::ConfigError::Invalid { problems, .. }) => problems,
        Err(e) => panic!("{e}"),
    };
    // Each case: the line (in the file) and a piece of the message.
    for (extra, line, needle) in [
        ("", 7, "neither deprefer_med nor deprefer_prepend"),
        ("deprefer_prepend = 2\n", 8, "needs local_as"),
        ("deprefer_prepend = 17\nlocal_as = 1\n", 8, "out of range 0..=16"),
        ("deprefer_med = 1\nlocal_as = 0\n", 9, "reserved"),
        ("deprefer_med = 1\nrise = 0\n", 9, "rise 0 is out of range"),
        ("deprefer_med = 1\ninterval_ms = 5\n", 9, "interval_ms 5 is out of range"),
        (
            "deprefer_med = 1\ngraceful_shutdown_ms = 600001\n",
            9,
            "graceful_shutdown_ms 600001 is out of range 0..=600000",
        ),
        ("deprefer_med = 1\ninclude = \"anycast.conf\"\n", 9, "include must be an absolute path"),
        ("deprefer_med = 1\nsocket = 3\n", 9, "invalid type"),
        ("deprefer_med = 1\nmed = 3\n", 9, "unknown field"),
    ] {
        let p = problems(extra);
        assert_eq!(p.len(), 1, "{extra:?}: {p:#?}");
        assert_eq!(p[0].line, line, "{extra:?}: {p:#?}");
        assert!(p[0].message.contains(needle), "{extra:?}: {:?} lacks {needle:?}", p[0].message);
    }
}

#[test]
fn birdc_failure_is_an_error() {
    let c = config("deprefer_med = 1\nsocket = \"/nonexistent/bird.ctl\"");
    let mut bgp = c.bgp.unwrap();
    // birdc (from bird2) cannot connect: its exit status and message make the error.
    match configure(&bgp) {
        Err(BirdError::Refused { answer, .. }) => {
            assert!(answer.contains("/nonexistent/bird.ctl"), "{answer}")
        }
        Err(BirdError::Spawn { .. }) => {} // no birdc on this machine: also an error
        other => panic!("{other:?}"),
    }
    bgp.birdc = "/nonexistent/birdc".into();
    assert!(matches!(configure(&bgp), Err(BirdError::Spawn { .. })));
}

#[test]
fn include_is_written_atomically() {
    let dir = std::env::temp_dir().join(format!("anycast-bgp-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("anycast.conf");
    write_include(&path, "one\n").unwrap();
    write_include(&path, "two\n").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("anycast.conf")], "no temporary file left");
    assert!(matches!(write_include(&dir.join("missing/x.conf"), "x"), Err(BirdError::Write { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn metrics_expose_state_and_transitions() {
    let mut into = BTreeMap::new();
    into.insert(Route::Withdraw, 2);
    into.insert(Route::Announce, 1);
    let view = BgpView {
        vips: [("192.0.2.1/32".to_owned(), (Route::Announce, into))].into(),
        apply_failures: 3,
        in_sync: true,
        withdraw_at: BTreeMap::new(),
    };
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(view));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "# TYPE anycast_bgp_state gauge",
        "anycast_bgp_state{vip=\"192.0.2.1/32\",state=\"announce\"} 1",
        "anycast_bgp_state{vip=\"192.0.2.1/32\",state=\"deprefer\"} 0",
        "anycast_bgp_state{vip=\"192.0.2.1/32\",state=\"graceful_shutdown\"} 0",
        "anycast_bgp_state{vip=\"192.0.2.1/32\",state=\"withdraw\"} 0",
        "anycast_bgp_transitions_total{vip=\"192.0.2.1/32\",to=\"withdraw\"} 2",
        "anycast_bgp_transitions_total{vip=\"192.0.2.1/32\",to=\"deprefer\"} 0",
        "anycast_bgp_apply_failures_total 3",
        "anycast_bgp_in_sync 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
}

/// The commented `[bgp]` example of deploy/anycast.toml, uncommented, is a valid config.
#[test]
fn deploy_example_bgp_section_is_valid() {
    let example = include_str!("../../../deploy/anycast.toml");
    let section: Vec<&str> = example
        .lines()
        .skip_while(|l| *l != "#[bgp]")
        .take_while(|l| l.starts_with("#[bgp]") || (l.starts_with('#') && l.contains(" = ")))
        .map(|l| &l[1..])
        .collect();
    assert!(section.len() > 5, "no [bgp] example in deploy/anycast.toml: {section:?}");
    let c = Config::parse(&format!("{example}\n{}\n", section.join("\n")), "anycast.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    let bgp = c.bgp.unwrap();
    assert_eq!((bgp.deprefer_med, bgp.deprefer_prepend, bgp.local_as), (Some(1000), 3, Some(64512)));
    assert_eq!(bgp.include, Path::new(crate::config::DEFAULT_BIRD_INCLUDE));
}

#[test]
fn resume_keeps_the_state_bird_holds() {
    let c = config(KNOBS);
    let dir = tempfile::tempdir().unwrap();
    let mut bgp = c.bgp.clone().unwrap();
    bgp.include = dir.path().join("anycast.conf");
    // The previous run left 192.0.2.1 de-preferred and 2001:db8::1 announced.
    let mut before = Speaker::default();
    let full = signals(true, false, true, true);
    let text = before.step(&c, &bgp, &full).unwrap();
    std::fs::write(&bgp.include, &text).unwrap();
    assert_eq!(
        parse_states(&text),
        BTreeMap::from([
            ("192.0.2.1/32".to_owned(), Route::Deprefer.into()),
            ("2001:db8::1/128".to_owned(), Route::Deprefer.into())
        ])
    );
    // The restarted speaker sees healthy signals at first (nothing measured has built up
    // the overload yet): it stays de-preferred for `rise` - 1 intervals, with nothing to
    // tell BIRD and no transition, instead of announcing and de-preferring again.
    let mut s = Speaker::resume(&bgp);
    assert_eq!(s.step(&c, &bgp, &HEALTHY), None, "the restart re-applied an identical file");
    assert_eq!(s.view().vips["192.0.2.1/32"].0, Route::Deprefer);
    assert!(s.view().vips["192.0.2.1/32"].1.is_empty(), "a transition at restart");
    // Still overloaded: no change at all.
    assert_eq!(s.step(&c, &bgp, &full), None);
    assert_eq!(s.view().vips["192.0.2.1/32"].0, Route::Deprefer);
    // A speaker without the file starts in the wanted state, as before.
    std::fs::remove_file(&bgp.include).unwrap();
    let mut fresh = Speaker::resume(&bgp);
    assert!(fresh.step(&c, &bgp, &HEALTHY).is_some());
    assert_eq!(fresh.view().vips["192.0.2.1/32"].0, Route::Announce);
}

#[test]
fn graceful_shutdown_comes_before_the_withdraw() {
    let p = Pacing { graceful_shutdown: 5, ..paced(3, 2, 0, 0) };
    let mut h = Hysteresis::new(Route::Announce);
    // `fall` intervals to leave, then `graceful_shutdown` intervals of the community.
    assert_eq!(h.step(Route::Withdraw, &p), None);
    assert_eq!(h.step(Route::Withdraw, &p), Some(Route::Shutdown));
    assert_eq!(h.shutting_down_from(), Some(Route::Announce));
    for _ in 1..5 {
        assert_eq!(h.step(Route::Withdraw, &p), None);
    }
    assert_eq!(h.step(Route::Withdraw, &p), Some(Route::Withdraw), "withdrawn after 5 intervals");
    assert_eq!(h.shutting_down_from(), None);
    // Back: `rise` intervals, as always.
    let steps = (1..10).find(|_| h.step(Route::Announce, &p).is_some()).unwrap();
    assert_eq!((steps, h.current()), (3, Route::Announce));
    // Off: straight to withdraw.
    assert_eq!(h.step(Route::Withdraw, &paced(3, 1, 0, 0)), Some(Route::Withdraw));
}

#[test]
fn a_cancelled_graceful_shutdown_returns_at_once_and_keeps_the_hold_down() {
    let p = Pacing { graceful_shutdown: 5, ..paced(3, 2, 0, 10) };
    let mut h = Hysteresis::new(Route::Deprefer);
    assert_eq!(h.step(Route::Withdraw, &p), None);
    assert_eq!(h.step(Route::Withdraw, &p), Some(Route::Shutdown));
    assert_eq!(h.shutting_down_from(), Some(Route::Deprefer), "keeps the de-preferred attributes");
    assert_eq!(h.step(Route::Withdraw, &p), None);
    // The drain undone: told as before at the next interval, not after `rise`.
    assert_eq!(h.step(Route::Announce, &p), Some(Route::Deprefer));
    assert_eq!(h.shutting_down_from(), None);
    // The hold-down counts from the entry into de-prefer (4 intervals ago): 6 more.
    let steps = (1..20).find(|_| h.step(Route::Announce, &p).is_some()).unwrap();
    assert_eq!((steps, h.current()), (6, Route::Announce));
    // A flap of the wish inside the graceful shutdown: cancelled, then `fall` again.
    assert_eq!(h.step(Route::Withdraw, &p), None);
    assert_eq!(h.step(Route::Withdraw, &p), Some(Route::Shutdown));
    assert_eq!(h.step(Route::Announce, &p), Some(Route::Announce));
    assert_eq!(h.step(Route::Withdraw, &p), None);
}

const GRACEFUL: &str = "deprefer_med = 500\ndeprefer_prepend = 2\nlocal_as = 65001\nrise = 3\nfall = 2\n\
                        deprefer_after_ms = 0\nhold_down_ms = 0\ngraceful_shutdown_ms = 2500";

fn drained() -> SiteSignals {
    signals(true, true, false, false)
}

#[test]
fn render_graceful_shutdown_keeps_the_attributes_and_adds_the_community() {
    let c = config(GRACEFUL);
    let bgp = c.bgp.clone().unwrap();
    let until = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_222_400_042);
    let routes: BTreeMap<IpAddr, Export> = [
        (
            "192.0.2.1".parse().unwrap(),
            Export { route: Route::Shutdown, shutdown: Some((Route::Deprefer, until)) },
        ),
        (
            "2001:db8::1".parse().unwrap(),
            Export { route: Route::Shutdown, shutdown: Some((Route::Announce, until)) },
        ),
    ]
    .into();
    let text = render(&bgp, "eth0", &addresses(&c), &routes);
    for line in [
        "# 192.0.2.1/32 (dns, dns-tcp): graceful_shutdown from deprefer until 1796222400.042",
        "# 2001:db8::1/128 (web6): graceful_shutdown from announce until 1796222400.042",
        "    route 192.0.2.1/32 via \"eth0\" { bgp_med = 500; bgp_path.prepend(65001); bgp_path.prepend(65001); \
         bgp_community.add((65535, 0)); bgp_local_pref = 0; };",
        "    route 2001:db8::1/128 via \"eth0\" { bgp_community.add((65535, 0)); bgp_local_pref = 0; };",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    // What the file says reads back exactly: a restart resumes it.
    let names = ["192.0.2.1/32", "2001:db8::1/128"].map(String::from);
    assert_eq!(parse_states(&text), names.into_iter().zip(routes.values().copied()).collect());
    // A damaged shutdown line is not resumed (the VIP enters its wanted state).
    for bad in [
        "graceful_shutdown",
        "graceful_shutdown from withdraw until 1.000",
        "graceful_shutdown from announce until x",
    ] {
        assert!(parse_states(&format!("# 192.0.2.1/32 (dns): {bad}\n")).is_empty(), "{bad}");
    }
}

#[test]
fn speaker_shuts_down_gracefully_then_withdraws_or_cancels() {
    let c = config(GRACEFUL);
    let bgp = c.bgp.clone().unwrap();
    let mut s = Speaker::default();
    let text = s.step(&c, &bgp, &HEALTHY).unwrap();
    s.applied(text, Ok(()), &bgp);
    // Drained: `fall` = 2 intervals, then 3 intervals (2.5 s at 1 s) of the community.
    assert_eq!(s.step(&c, &bgp, &drained()), None);
    let t0 = SystemTime::now();
    let text = s.step(&c, &bgp, &drained()).expect("graceful shutdown");
    assert!(
        text.contains(
            "route 192.0.2.1/32 via \"eth0\" { bgp_community.add((65535, 0)); bgp_local_pref = 0; };"
        ),
        "{text}"
    );
    assert!(text.contains("# 192.0.2.1/32 (dns, dns-tcp): graceful_shutdown from announce until "), "{text}");
    assert_eq!(s.view().vips["192.0.2.1/32"].0, Route::Shutdown);
    let until = s.view().withdraw_at["192.0.2.1/32"];
    let wait = until.duration_since(t0).unwrap();
    assert!(wait >= Duration::from_millis(2500) && wait < Duration::from_millis(3100), "{wait:?}");
    let status = s.view().routes(t0);
    assert_eq!(status[0].state, "graceful_shutdown");
    assert!(status[0].withdraw_in.is_some_and(|w| (2.5..3.1).contains(&w)), "{status:?}");
    s.applied(text, Ok(()), &bgp);
    assert_eq!(s.step(&c, &bgp, &drained()), None, "nothing new while it lasts");
    assert_eq!(s.step(&c, &bgp, &drained()), None);
    let text = s.step(&c, &bgp, &drained()).expect("withdrawn");
    assert!(!text.contains("    route "), "{text}");
    assert_eq!(s.view().vips["192.0.2.1/32"].0, Route::Withdraw);
    assert!(s.view().withdraw_at.is_empty());
    let into = &s.view().vips["192.0.2.1/32"].1;
    assert_eq!((into[&Route::Shutdown], into[&Route::Withdraw]), (1, 1));
    s.applied(text, Ok(()), &bgp);

    // Undrained inside the graceful shutdown: announced again at the next interval.
    for _ in 0..3 {
        s.step(&c, &bgp, &HEALTHY);
    }
    assert_eq!(s.view().vips["192.0.2.1/32"].0, Route::Announce);
    s.step(&c, &bgp, &drained());
    s.step(&c, &bgp, &drained()).expect("graceful shutdown");
    let text = s.step(&c, &bgp, &HEALTHY).expect("cancelled");
    assert!(text.contains("    route 192.0.2.1/32 via \"eth0\";\n"), "{text}");
    assert!(!text.contains("65535"), "{text}");
    assert_eq!(s.view().vips["192.0.2.1/32"].0, Route::Announce);
    assert!(s.view().withdraw_at.is_empty());
}

#[test]
fn restart_in_a_graceful_shutdown_resumes_it_with_the_time_left() {
    let c = config(GRACEFUL);
    let dir = tempfile::tempdir().unwrap();
    let mut bgp = c.bgp.clone().unwrap();
    bgp.include = dir.path().join("anycast.conf");
    // The previous run started a graceful shutdown 1.5 s ago (1 s of 2.5 s left), de-preferred before.
    let names = addresses(&c);
    let until = SystemTime::now() + Duration::from_millis(1000);
    let routes = names
        .keys()
        .map(|a| (*a, Export { route: Route::Shutdown, shutdown: Some((Route::Deprefer, until)) }))
        .collect();
    let text = render(&bgp, "eth0", &names, &routes);
    std::fs::write(&bgp.include, &text).unwrap();

    // Still drained: the same file (nothing re-applied, no transition), withdrawn when its
    // time is up (the interval after), not after a new 2.5 s.
    let mut s = Speaker::resume(&bgp);
    assert_eq!(s.step(&c, &bgp, &drained()), None, "the restart re-applied an identical file");
    assert_eq!(s.view().vips["192.0.2.1/32"].0, Route::Shutdown);
    assert_eq!(s.view().withdraw_at["192.0.2.1/32"], parse_states(&text)["192.0.2.1/32"].shutdown.unwrap().1);
    let text = s.step(&c, &bgp, &drained()).expect("withdrawn one interval (1 s) later");
    assert!(!text.contains("    route "), "{text}");
    assert_eq!(s.view().vips["192.0.2.1/32"].1[&Route::Withdraw], 1);

    // Undrained while the daemon was down: the resumed shutdown is cancelled at once, back
    // to the de-preferred route it came from.
    std::fs::write(&bgp.include, render(&bgp, "eth0", &names, &routes)).unwrap();
    let mut s = Speaker::resume(&bgp);
    let text = s.step(&c, &bgp, &HEALTHY).expect("cancelled");
    assert!(text.contains("route 192.0.2.1/32 via \"eth0\" { bgp_med = 500;"), "{text}");
    assert!(!text.contains("65535"), "{text}");
    assert_eq!(s.view().vips["192.0.2.1/32"].0, Route::Deprefer);

    // Its time long past (the daemon was down longer): withdrawn at the first interval.
    let past = SystemTime::now() - Duration::from_secs(60);
    let routes = names
        .keys()
        .map(|a| (*a, Export { route: Route::Shutdown, shutdown: Some((Route::Announce, past)) }))
        .collect();
    std::fs::write(&bgp.include, render(&bgp, "eth0", &names, &routes)).unwrap();
    let mut s = Speaker::resume(&bgp);
    let text = s.step(&c, &bgp, &drained()).expect("withdrawn at once");
    assert!(!text.contains("    route "), "{text}");
}

#[test]
fn detach_shuts_down_what_is_exported_and_keeps_a_shutdown_in_progress() {
    let c = config(GRACEFUL);
    let names = addresses(&c);
    let now = SystemTime::now();
    let (sooner, until) = (now + Duration::from_secs(5), now + Duration::from_secs(30));
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    let held = |r4: Export, r6: Export| BTreeMap::from([(prefix(v4), r4), (prefix(v6), r6)]);
    let routes = shut_down(&held(Route::Deprefer.into(), Route::Withdraw.into()), &names, until);
    assert_eq!(routes[&v4], Export { route: Route::Shutdown, shutdown: Some((Route::Deprefer, until)) });
    assert_eq!(routes[&v6], Route::Withdraw.into(), "a withdrawn route stays withdrawn");
    let in_progress = Export { route: Route::Shutdown, shutdown: Some((Route::Announce, sooner)) };
    let routes = shut_down(&held(in_progress, Route::Announce.into()), &names, until);
    assert_eq!(routes[&v4], in_progress, "a shutdown in progress keeps its time");
    assert_eq!(routes[&v6], Export { route: Route::Shutdown, shutdown: Some((Route::Announce, until)) });
    // No file (BIRD holds nothing of ours): nothing to shut down.
    assert!(shut_down(&BTreeMap::new(), &names, until).values().all(|e| e.route == Route::Withdraw));
}
