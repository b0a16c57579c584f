//! `anycast plan FILE`: what a reload of FILE would change, computed from two plans and
//! the state the maps hold, without writing anything. One section per kind of change, so
//! that more (a map-layout migration, BGP routes) can be added beside the others.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use anycast_common::site::MAGLEV_SITE;

use super::{Plan, State, diff};
use crate::config::Config;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    /// Sites added, removed, or whose effective weight changes.
    pub sites: Vec<SiteChange>,
    /// Every VIP of either config, with the share of its Maglev table that changes owner.
    pub vips: Vec<VipChange>,
    pub interfaces_attached: Vec<String>,
    pub interfaces_detached: Vec<String>,
    /// Map writes the reload would do (0: nothing changes in the data path).
    pub writes: usize,
    /// Changes the reload cannot apply (they need a restart), and other warnings.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    /// Kept, with a different effective weight (sites) or table (VIPs).
    Changed,
    Unchanged,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteChange {
    pub name: String,
    pub change: Change,
    pub weight_before: Option<u32>,
    pub weight_after: Option<u32>,
    /// A new site in a slot another site used: flows remembered for that one re-steer.
    pub new_generation: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipChange {
    pub name: String,
    pub change: Change,
    /// Share of the Maglev table's slots whose site changes: the share of new flows that go
    /// elsewhere (established TCP flows stay where they are pinned; a VIP with
    /// `affinity = "none"` moves its established flows too).
    pub moved: f64,
}

/// The share of slots of `after` whose site differs from `before` (1 when the sizes
/// differ: the table is rebuilt from scratch), a slot re-used by a new site counting as
/// changed. Only the site moves flows: the entries' flags (`MAGLEV_CHECK`) do not.
fn moved(before: &[u32], after: &[u32], renumbered: &dyn Fn(u32) -> bool) -> f64 {
    if before.len() != after.len() || after.is_empty() {
        return 1.0;
    }
    let site = |e: &u32| e & MAGLEV_SITE;
    let n = before.iter().zip(after).filter(|(b, a)| site(b) != site(a) || renumbered(site(a))).count();
    n as f64 / after.len() as f64
}

/// `before`/`old`: the running config and its plan; `config`/`plan`: the new ones;
/// `current`: what the maps hold.
pub fn preview(before: &Config, old: &Plan, config: &Config, plan: &Plan, current: &State) -> Preview {
    let mut out = Preview { writes: diff(&plan.state, current).len(), ..Preview::default() };
    let renumbered = |slot: u32| {
        let (Some(have), Some(want)) =
            (current.sites.get(slot as usize), plan.state.sites.get(slot as usize))
        else {
            return false;
        };
        have.generation != want.generation
    };
    for (name, slot) in &plan.sites {
        let weight_before = old.weights.get(name).copied();
        let weight_after = plan.weights.get(name).copied();
        let change = match weight_before {
            None => Change::Added,
            Some(w) if Some(w) != weight_after => Change::Changed,
            Some(_) => Change::Unchanged,
        };
        let new_generation =
            weight_before.is_none() && renumbered(*slot) && current.sites[*slot as usize].generation != 0;
        if change != Change::Unchanged || new_generation {
            out.sites.push(SiteChange {
                name: name.clone(),
                change,
                weight_before,
                weight_after,
                new_generation,
            });
        }
    }
    for (name, _) in old.sites.iter().filter(|(n, _)| !plan.weights.contains_key(n)) {
        out.sites.push(SiteChange {
            name: name.clone(),
            change: Change::Removed,
            weight_before: old.weights.get(name).copied(),
            weight_after: None,
            new_generation: false,
        });
    }
    let old_vips: BTreeMap<&str, u32> = old.vips.iter().map(|(n, i)| (n.as_str(), *i)).collect();
    for (name, index) in &plan.vips {
        let after = plan.state.maglev.get(index).map(|t| &t[..]).unwrap_or(&[]);
        let (change, share) = match old_vips.get(name.as_str()).and_then(|i| current.maglev.get(i)) {
            None => (Change::Added, 1.0),
            Some(t) => {
                let m = moved(t, after, &renumbered);
                (if m > 0.0 { Change::Changed } else { Change::Unchanged }, m)
            }
        };
        out.vips.push(VipChange { name: name.clone(), change, moved: share });
    }
    for (name, _) in old.vips.iter().filter(|(n, _)| !plan.vips.iter().any(|(m, _)| m == n)) {
        out.vips.push(VipChange { name: name.clone(), change: Change::Removed, moved: 1.0 });
    }
    let (was, now) = (&before.local.interfaces, &config.local.interfaces);
    out.interfaces_attached = now.iter().filter(|i| !was.contains(i)).cloned().collect();
    out.interfaces_detached = was.iter().filter(|i| !now.contains(i)).cloned().collect();
    if config.datapath.pin_dir != before.datapath.pin_dir {
        out.notes.push("datapath.pin_dir changes: the reload is refused (restart the controller)".into());
    }
    if config.datapath.maglev_table_size != before.datapath.maglev_table_size {
        out.notes.push(
            "datapath.maglev_table_size changes: the reload is refused (restart the controller)".into(),
        );
    }
    if config.datapath.flow_table_size != before.datapath.flow_table_size {
        out.notes.push("flow_table_size changes only after `anycast detach` and a start".into());
    }
    if config.admin != before.admin {
        out.notes.push("[admin] changes take effect at the next controller start".into());
    }
    out
}

impl Preview {
    /// The human-readable report of `anycast plan`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.writes == 0 && self.notes.is_empty() {
            out += "no change: the data path already matches this config\n";
        }
        let w = |w: Option<u32>| w.map_or("-".to_owned(), |w| w.to_string());
        for s in &self.sites {
            let _ = writeln!(
                out,
                "site {:<16} {:<9} weight {} -> {}{}",
                s.name,
                change_name(&s.change),
                w(s.weight_before),
                w(s.weight_after),
                if s.new_generation {
                    " (re-used slot: flows remembered for its former site re-steer)"
                } else {
                    ""
                }
            );
        }
        for v in &self.vips {
            let _ = writeln!(
                out,
                "vip  {:<16} {:<9} {:.1} % of new flows move",
                v.name,
                change_name(&v.change),
                v.moved * 100.0
            );
        }
        for i in &self.interfaces_attached {
            let _ = writeln!(out, "interface {i}: attach");
        }
        for i in &self.interfaces_detached {
            let _ = writeln!(out, "interface {i}: detach");
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        let _ = writeln!(out, "{} map writes", self.writes);
        out
    }
}

fn change_name(c: &Change) -> &'static str {
    match c {
        Change::Added => "added",
        Change::Removed => "removed",
        Change::Changed => "changed",
        Change::Unchanged => "unchanged",
    }
}
