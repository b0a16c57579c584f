//! Data-driven fixture runner: a table of [`Case`]s, each a sequence of [`Step`]s (frames
//! with their expected action, output frame and counter changes; map changes between
//! frames; checks of map state), run against the real program through BPF_PROG_RUN.
//!
//! Every case runs to the end of the table whatever fails before it; the [`Report`] lists
//! all failures with readable frame diffs ([`crate::diff`]) and fails the test once, at the
//! end. Set `FIXTURE_FILTER=substring` to run only the cases whose names contain it.
//!
//! Isolation: [`Instance::Shared`] cases run on one loaded program whose map state is the
//! suite's world and which they never change; the flow table, the embryonic table and the
//! next-hop cache are emptied before each of them (so each case's first forwarded packet
//! asks the FIB) and counters are compared as deltas. Cases that change maps get
//! [`Instance::Own`]: the world written anew into a second loaded program (reused, since
//! a load costs about a second of verification), or into a freshly loaded one when the case
//! needs another flow-table size.

use std::time::{Duration, Instant};

use anycast_common::{
    Action as Verdict, Event, Exception, SiteCounters, VipCounters,
    counters::{EXCEPTION_SLOTS, exception_index, exception_slot},
};
use anycast_user::datapath::maps::DataPathMaps;

use crate::{
    diff,
    harness::{Action, DataPath},
};

/// A map operation of a scenario or a world.
pub type MapsOp = Box<dyn Fn(&mut DataPathMaps) -> anyhow::Result<()> + Send + Sync>;
/// A check of map state; `Err` describes what is wrong.
pub type MapsCheck = Box<dyn Fn(&DataPathMaps) -> Result<(), String> + Send + Sync>;

/// What the program must do with a frame.
#[derive(Clone, Debug)]
pub enum Expect {
    /// XDP_PASS with the frame untouched.
    Pass,
    /// XDP_PASS with this frame (a decapsulated packet).
    PassAs(Vec<u8>),
    /// XDP_TX with this frame (encapsulated back out, or an ICMP reply).
    Tx(Vec<u8>),
    /// XDP_REDIRECT with this frame.
    Redirect(Vec<u8>),
    /// XDP_DROP (the frame is not looked at).
    Drop,
}

impl Expect {
    fn action(&self) -> Action {
        match self {
            Expect::Pass | Expect::PassAs(_) => Action::Pass,
            Expect::Tx(_) => Action::Tx,
            Expect::Redirect(_) => Action::Redirect,
            Expect::Drop => Action::Drop,
        }
    }
}

/// One counter change a frame causes. Packet counters go up by one and byte counters by
/// the input frame's length (the document counts the frame as received everywhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// `EXCEPTIONS[(e, action)]` += 1.
    Exc(Exception, Verdict),
    /// `EVENTS[e]` += 1.
    Ev(Event),
    /// `VIP_STATS[index]`.
    Vip(u32),
    /// `SITE_STATS[site].local_*`.
    Local(u32),
    /// `SITE_STATS[site].forwarded_*`.
    Fwd(u32),
    /// `SITE_STATS[site].received_*`.
    Rcvd(u32),
    /// `SITE_STATS[site].probe_packets` (a packet counter only).
    Probe(u32),
}

/// A frame sent through the program and what must come of it. Every counter not named in
/// `counts` (of the sites and VIPs the suite watches, and every exception) must not move.
pub struct Frame {
    pub input: Vec<u8>,
    pub expect: Expect,
    pub counts: Vec<Count>,
}

pub enum Step {
    Send(Frame),
    /// Changes map state between frames (a table swap, a site going down), described.
    Maps(&'static str, MapsOp),
    /// Checks map state (e.g. where the flow table says a flow goes), described.
    Check(&'static str, MapsCheck),
}

/// Which loaded program a case runs on (see the module documentation).
pub enum Instance {
    Shared,
    Own {
        /// `FLOWS` capacity override.
        flows: Option<u32>,
        /// Applied after the world.
        tweak: Option<MapsOp>,
    },
}

pub struct Case {
    pub name: &'static str,
    pub instance: Instance,
    pub steps: Vec<Step>,
}

type Loaded = (DataPath, DataPathMaps);

/// An error with its causes ("a: b: c"): aya's syscall errors keep the errno in a source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// A load failure, with at most the last 40 lines of a verifier log (the rejected
/// instruction and the state leading to it are at the end).
fn load_error(e: anyhow::Error) -> String {
    let text = format!("{e:#}");
    let lines: Vec<&str> = text.lines().collect();
    let keep = lines.len().saturating_sub(40);
    let mut out = String::from("  loading the program failed:\n");
    if keep > 0 {
        out += &format!("    ... {keep} lines of the verifier log omitted\n");
    }
    for l in &lines[keep..] {
        out += &format!("    {l}\n");
    }
    out
}

/// The environment all cases share.
pub struct Suite<'a> {
    /// Writes the map state every case starts from into a freshly loaded program.
    pub world: &'a (dyn Fn(&mut DataPathMaps) -> anyhow::Result<()> + Sync),
    /// `ctx_in.ingress_ifindex` of every run (resolved in the calling thread's namespace).
    pub ingress: Option<u32>,
    /// Sites whose counters are compared.
    pub sites: Vec<u32>,
    /// VIP indices whose counters are compared.
    pub vips: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    exceptions: [u64; EXCEPTION_SLOTS as usize],
    events: [u64; Event::COUNT as usize],
    sites: Vec<SiteCounters>,
    vips: Vec<VipCounters>,
}

/// Outcome of one case.
pub struct Outcome {
    pub name: &'static str,
    pub failure: Option<String>,
    pub elapsed: Duration,
}

/// Outcome of a whole table.
pub struct Report {
    pub outcomes: Vec<Outcome>,
    pub elapsed: Duration,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.failure.is_some())
    }

    /// One line per case (pass/FAIL, time), then every failure in full.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for o in &self.outcomes {
            let verdict = if o.failure.is_some() { "FAIL" } else { "pass" };
            s += &format!("  {verdict}  {:<48} {:>6.1} ms\n", o.name, o.elapsed.as_secs_f64() * 1e3);
        }
        let failed = self.failures().count();
        s += &format!(
            "{} cases, {} passed, {} failed, {:.2} s\n",
            self.outcomes.len(),
            self.outcomes.len() - failed,
            failed,
            self.elapsed.as_secs_f64()
        );
        for o in self.failures() {
            s += &format!("\n=== FAILED: {}\n{}", o.name, o.failure.as_deref().unwrap_or(""));
        }
        s
    }

    /// Panics with the rendered report if any case failed; prints it otherwise.
    pub fn assert_all_passed(&self) {
        let text = self.render();
        if self.failures().next().is_some() {
            panic!("fixture failures:\n{text}");
        }
        println!("{text}");
    }
}

impl Suite<'_> {
    fn load(&self, flows: Option<u32>, tweak: Option<&MapsOp>) -> anyhow::Result<Loaded> {
        let mut dp = DataPath::load_anycast(flows)?;
        let mut maps = dp.maps()?;
        (self.world)(&mut maps)?;
        if let Some(t) = tweak {
            t(&mut maps)?;
        }
        Ok((dp, maps))
    }

    fn snapshot(&self, maps: &DataPathMaps) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
            exceptions: maps.exceptions()?,
            events: maps.events()?,
            sites: self.sites.iter().map(|&s| maps.site_counters(s)).collect::<Result<_, _>>()?,
            vips: self.vips.iter().map(|&v| maps.vip_counters(v)).collect::<Result<_, _>>()?,
        })
    }

    /// `before` plus the expected `counts` for a frame of `len` bytes.
    fn predict(&self, before: &Snapshot, counts: &[Count], len: u64) -> Result<Snapshot, String> {
        let pos = |list: &[u32], i: u32, what: &str| {
            list.iter().position(|&x| x == i).ok_or(format!("{what} {i} is not watched by the suite"))
        };
        let mut s = before.clone();
        for c in counts {
            match *c {
                Count::Exc(e, a) => s.exceptions[exception_index(e, a) as usize] += 1,
                Count::Ev(e) => s.events[e as usize] += 1,
                Count::Vip(i) => {
                    let v = &mut s.vips[pos(&self.vips, i, "VIP")?];
                    v.packets += 1;
                    v.bytes += len;
                }
                Count::Probe(i) => s.sites[pos(&self.sites, i, "site")?].probe_packets += 1,
                Count::Local(i) | Count::Fwd(i) | Count::Rcvd(i) => {
                    let sc = &mut s.sites[pos(&self.sites, i, "site")?];
                    let (packets, bytes) = match c {
                        Count::Local(_) => (&mut sc.local_packets, &mut sc.local_bytes),
                        Count::Fwd(_) => (&mut sc.forwarded_packets, &mut sc.forwarded_bytes),
                        _ => (&mut sc.received_packets, &mut sc.received_bytes),
                    };
                    *packets += 1;
                    *bytes += len;
                }
            }
        }
        Ok(s)
    }

    fn describe_counters(&self, before: &Snapshot, want: &Snapshot, got: &Snapshot) -> String {
        let mut lines = Vec::new();
        let d = |b: u64, x: u64| x as i128 - b as i128;
        for i in 0..EXCEPTION_SLOTS as usize {
            if want.exceptions[i] != got.exceptions[i] {
                let (e, a) = exception_slot(i as u32);
                lines.push(format!(
                    "exception {} ({}): expected {:+}, got {:+}",
                    e.name(),
                    a.name(),
                    d(before.exceptions[i], want.exceptions[i]),
                    d(before.exceptions[i], got.exceptions[i])
                ));
            }
        }
        for e in Event::ALL {
            let i = e as usize;
            if want.events[i] != got.events[i] {
                lines.push(format!(
                    "event {}: expected {:+}, got {:+}",
                    e.name(),
                    d(before.events[i], want.events[i]),
                    d(before.events[i], got.events[i])
                ));
            }
        }
        for (k, &site) in self.sites.iter().enumerate() {
            let (b, w, g) = (&before.sites[k], &want.sites[k], &got.sites[k]);
            for (name, bv, wv, gv) in [
                ("local packets", b.local_packets, w.local_packets, g.local_packets),
                ("local bytes", b.local_bytes, w.local_bytes, g.local_bytes),
                ("forwarded packets", b.forwarded_packets, w.forwarded_packets, g.forwarded_packets),
                ("forwarded bytes", b.forwarded_bytes, w.forwarded_bytes, g.forwarded_bytes),
                ("received packets", b.received_packets, w.received_packets, g.received_packets),
                ("received bytes", b.received_bytes, w.received_bytes, g.received_bytes),
                ("probe packets", b.probe_packets, w.probe_packets, g.probe_packets),
            ] {
                if wv != gv {
                    lines.push(format!("site {site} {name}: expected {:+}, got {:+}", d(bv, wv), d(bv, gv)));
                }
            }
        }
        for (k, &vip) in self.vips.iter().enumerate() {
            let (b, w, g) = (&before.vips[k], &want.vips[k], &got.vips[k]);
            for (name, bv, wv, gv) in
                [("packets", b.packets, w.packets, g.packets), ("bytes", b.bytes, w.bytes, g.bytes)]
            {
                if wv != gv {
                    lines.push(format!("VIP {vip} {name}: expected {:+}, got {:+}", d(bv, wv), d(bv, gv)));
                }
            }
        }
        lines.iter().map(|l| format!("    counter {l}\n")).collect()
    }

    /// Runs one frame; `Err` describes every way it went wrong.
    fn send(&self, dp: &DataPath, maps: &DataPathMaps, f: &Frame) -> Result<(), String> {
        let before = self.snapshot(maps).map_err(|e| format!("reading counters: {e:#}"))?;
        let want = self.predict(&before, &f.counts, f.input.len() as u64)?;
        let run =
            dp.run(&f.input, self.ingress).map_err(|e| format!("    BPF_PROG_RUN: {}\n", error_chain(&e)))?;
        let got = self.snapshot(maps).map_err(|e| format!("reading counters: {e:#}"))?;
        let mut problems = String::new();
        if run.action != f.expect.action() {
            problems += &format!("    action: expected {:?}, got {:?}\n", f.expect.action(), run.action);
        }
        let want_frame = match &f.expect {
            Expect::Pass => Some(&f.input),
            Expect::PassAs(x) | Expect::Tx(x) | Expect::Redirect(x) => Some(x),
            Expect::Drop => None,
        };
        if let Some(w) = want_frame {
            if let Some(text) = diff::explain(w, &run.frame) {
                problems += "    output frame differs:\n";
                if run.frame == f.input {
                    problems += "    (the program left the input frame untouched)\n";
                }
                problems += &text;
            }
        }
        if want != got {
            problems += &self.describe_counters(&before, &want, &got);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            problems += "    input frame:\n";
            problems += &diff::hexdump(&f.input);
            Err(problems)
        }
    }

    /// Empties the state a case leaves behind: flows, embryos, cached next hops.
    fn clean(&self, maps: &mut DataPathMaps) -> Result<(), String> {
        maps.clear_flows().map_err(|e| format!("emptying the flow table: {}", error_chain(&e)))?;
        maps.clear_embryos().map_err(|e| format!("emptying the embryonic table: {}", error_chain(&e)))?;
        for &site in &self.sites {
            maps.clear_next_hop(site)
                .map_err(|e| format!("emptying the next-hop cache: {}", error_chain(&e)))?;
        }
        Ok(())
    }

    fn run_case(
        &self,
        case: &Case,
        shared: &mut Option<Result<Loaded, String>>,
        scratch: &mut Option<Result<Loaded, String>>,
    ) -> Result<(), String> {
        let mut own = None;
        let (dp, maps) = match &case.instance {
            Instance::Shared => {
                let loaded = match shared.get_or_insert_with(|| self.load(None, None).map_err(load_error)) {
                    Ok(l) => l,
                    Err(e) => return Err(format!("  the shared program did not load:\n{e}")),
                };
                let (dp, maps) = (&loaded.0, &mut loaded.1);
                self.clean(maps)?;
                (dp, maps)
            }
            Instance::Own { flows: None, tweak } => {
                let loaded = match scratch.get_or_insert_with(|| self.load(None, None).map_err(load_error)) {
                    Ok(l) => l,
                    Err(e) => return Err(format!("  the scratch program did not load:\n{e}")),
                };
                let (dp, maps) = (&loaded.0, &mut loaded.1);
                self.clean(maps)?;
                (self.world)(maps).map_err(|e| format!("  writing the world anew: {e:#}\n"))?;
                if let Some(t) = tweak {
                    t(maps).map_err(|e| format!("  tweak: {e:#}\n"))?;
                }
                (dp, maps)
            }
            Instance::Own { flows, tweak } => {
                let loaded = self.load(*flows, tweak.as_ref()).map_err(load_error)?;
                let (dp, maps) = own.insert(loaded);
                (&*dp, maps)
            }
        };
        for (i, step) in case.steps.iter().enumerate() {
            let n = i + 1;
            match step {
                Step::Send(f) => self.send(dp, maps, f).map_err(|e| format!("  step {n} (frame):\n{e}"))?,
                Step::Maps(what, op) => op(maps).map_err(|e| format!("  step {n} ({what}): {e:#}\n"))?,
                Step::Check(what, check) => {
                    check(maps).map_err(|e| format!("  step {n} (check {what}): {e}\n"))?
                }
            }
        }
        Ok(())
    }

    /// Runs every case (those matching `FIXTURE_FILTER`, if set) and reports them all.
    pub fn run(&self, cases: &[Case]) -> Report {
        let filter = std::env::var("FIXTURE_FILTER").ok();
        let start = Instant::now();
        let mut shared = None;
        let mut scratch = None;
        let mut outcomes = Vec::new();
        for case in cases.iter().filter(|c| filter.as_deref().is_none_or(|f| c.name.contains(f))) {
            let t = Instant::now();
            let failure = self.run_case(case, &mut shared, &mut scratch).err();
            outcomes.push(Outcome { name: case.name, failure, elapsed: t.elapsed() });
        }
        Report { outcomes, elapsed: start.elapsed() }
    }
}
