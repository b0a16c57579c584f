//! A sibling site's load report (the body of its `GET /load`, which the controller polls and
//! feeds into the load policy): any bytes a broken or hostile peer could answer. The body
//! must parse or be refused without a panic; a report that parses must not make the policy's
//! decision meaningless: the share kept local in [0, 1], every sibling's share finite and not
//! negative, the shares adding up to what is not kept, and the Maglev weights within scale.

#![no_main]

use anycast_user::{
    model::{LoadReport, WEIGHT_SCALE},
    steering::policy::{self, Knobs, Local, Report, Sibling, State},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = serde_json::from_slice::<LoadReport>(data) else { return };
    // As the steering task hands a fresh report to the policy.
    let hostile = Report {
        utilisation: report.utilisation,
        served: report.served,
        capacity: report.capacity,
        target: report.target,
        drained: report.drained || !report.attached,
    };
    let honest = Report { utilisation: 0.3, served: 300.0, capacity: 1000.0, target: 0.8, drained: false };
    let sibling = |name: &str, report| Sibling {
        name: name.to_owned(),
        up: true,
        drained: false,
        static_share: 0.5,
        ours: 0.0,
        report: Some(report),
    };
    let siblings = [sibling("hostile", hostile), sibling("honest", honest)];
    let knobs = Knobs { target: 0.8, high: 0.9, low: 0.7, max_step: 0.25 };
    // This site overloaded (twice its capacity offered): it sheds, by the siblings' room.
    let local = Local { offered: 2000.0, received: 0.0, served: 1000.0, capacity: 1000.0, cpu: None };
    let mut state = State::default();
    for _ in 0..8 {
        let d = policy::decide(&knobs, &mut state, &local, &siblings);
        assert!((0.0..=1.0).contains(&d.keep), "keep {} for {report:?}", d.keep);
        for (name, share) in &d.shares {
            assert!(share.is_finite() && *share >= 0.0, "{name}'s share {share} for {report:?}");
        }
        let given: f64 = d.shares.values().sum();
        assert!((given + d.keep - 1.0).abs() < 1e-6, "shares {given} + keep {} for {report:?}", d.keep);
        let weights = policy::weights("local", &d);
        let total: u64 = weights.values().map(|&w| u64::from(w)).sum();
        assert!(total.abs_diff(WEIGHT_SCALE as u64) <= 3, "weights {weights:?} for {report:?}");
    }
});
