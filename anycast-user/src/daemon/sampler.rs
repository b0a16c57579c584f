//! The sampler task: every few seconds, the flow-table count (a walk of the whole table,
//! seconds for the largest) and a counter snapshot for the rates of `anycast status`,
//! read through the read-only handle on a blocking thread and published. Nobody waits for
//! it: readers take the latest samples.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, time::MissedTickBehavior};

use crate::{
    datapath::counters::{Counters, Samples},
    model::DataPathView,
};

pub async fn run(
    counters: Arc<Counters>,
    datapath: watch::Receiver<Arc<DataPathView>>,
    out: watch::Sender<Arc<Samples>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    // A walk that takes longer than the period delays the next one instead of queueing.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let dp = datapath.borrow().clone();
        let c = counters.clone();
        let sites: Vec<u32> = dp.sites.iter().map(|(_, i)| *i).collect();
        let vips: Vec<u32> = dp.vips.iter().map(|(_, i)| *i).collect();
        let read = tokio::task::spawn_blocking(move || (c.flow_count(), c.snapshot(sites, vips))).await;
        match read {
            Ok((flows, Ok(snap))) => {
                failing = false;
                let previous = out.borrow().last.clone();
                out.send_replace(Arc::new(Samples {
                    flow_entries: flows as u64,
                    previous,
                    last: Some(snap),
                }));
            }
            Ok((_, Err(e))) if !failing => {
                failing = true;
                log::warn!("sampling counters: {e}");
            }
            Err(e) => log::error!("sampling counters: {e}"),
            Ok(_) => {}
        }
    }
}
