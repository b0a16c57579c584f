//! Rise/fall hysteresis of a remote site's health: `fall` failed checks in a row take an up
//! site down, `rise` good ones bring it back, so one lost probe does not move flows. The
//! checks themselves (a probe through the data path) are run by `task.rs`; a site starts
//! in the state the data path holds it in, so that a controller restart moves nothing.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    up: bool,
    /// Consecutive results that disagree with `up`.
    streak: u32,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker { up: true, streak: 0 }
    }
}

impl Tracker {
    pub fn new(up: bool) -> Tracker {
        Tracker { up, streak: 0 }
    }

    pub fn up(&self) -> bool {
        self.up
    }

    /// Folds in one check; `Some(new state)` when the state changes.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak >= if self.up { fall } else { rise } {
            self.up = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut t = Tracker::default();
        let run = |t: &mut Tracker, checks: &[bool]| -> Vec<Option<bool>> {
            checks.iter().map(|&ok| t.record(ok, 2, 3)).collect()
        };
        // A failure streak broken by a success does not count.
        assert_eq!(run(&mut t, &[false, false, true, false, false]), [None; 5]);
        assert_eq!(run(&mut t, &[false]), [Some(false)]);
        assert!(!t.up());
        assert_eq!(run(&mut t, &[true, false, true, true]), [None, None, None, Some(true)]);
        assert!(t.up());
    }
}
