//! Keeping warnings a guest or a host peer can repeat at will from flooding the host log.
//!
//! * [`WarnBudget`]: the first [`WARN_BUDGET`] problems of a kind are logged at `warn`, then
//!   one line says the rest go to `debug` (for problems worth seeing individually: failed
//!   disk requests, malformed control messages).
//! * [`sparse`]: log the 1st, 2nd, 4th, 8th, … occurrence of a counted problem, with the
//!   count (for steady streams: dropped frames).

use log::{warn, Level};

/// How many problems of one kind are logged at `warn` level before the rest go to `debug`.
pub const WARN_BUDGET: u32 = 32;

/// Counts the warnings left for one kind of problem.
#[derive(Debug, Clone)]
pub struct WarnBudget {
    what: &'static str,
    left: u32,
}

impl WarnBudget {
    /// A full budget for problems described as `what` (e.g. `block: failed requests`).
    pub const fn new(what: &'static str) -> Self {
        WarnBudget {
            what,
            left: WARN_BUDGET,
        }
    }

    /// The level for the next problem.
    pub fn level(&mut self) -> Level {
        match self.left {
            0 => Level::Debug,
            1 => {
                self.left = 0;
                warn!(
                    "{}: too many, logging further ones at debug level",
                    self.what
                );
                Level::Warn
            }
            _ => {
                self.left -= 1;
                Level::Warn
            }
        }
    }

    /// Refills the budget (a device reset by the guest starts afresh).
    pub fn refill(&mut self) {
        self.left = WARN_BUDGET;
    }
}

/// True for the 1st, 2nd, 4th, 8th, … occurrence (`count` counts from 1).
pub fn sparse(count: u64) -> bool {
    count.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_warn_budget_runs_out_and_refills() {
        let mut b = WarnBudget::new("test: problems");
        for _ in 0..WARN_BUDGET {
            assert_eq!(b.level(), Level::Warn);
        }
        assert_eq!(b.level(), Level::Debug);
        assert_eq!(b.level(), Level::Debug);
        b.refill();
        assert_eq!(b.level(), Level::Warn);
    }

    #[test]
    fn test_sparse_logs_powers_of_two() {
        let logged: Vec<u64> = (1..=20).filter(|c| sparse(*c)).collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16]);
        assert!(!sparse(0));
    }
}
