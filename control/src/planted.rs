//! Planted bugs: test-only switches that break one invariant each.
//!
//! Owns the list of deliberate defects ([`Bug`]) the simulation turns on,
//! one run at a time, to prove that its checker reports the invariant each
//! one breaks (docs/simulation.md, "Planted bugs"). A tier asks [`on`] at
//! the one place its bug lives; without the cargo feature
//! `planted-bugs-for-tests` [`on`] is a constant `false` and [`set`] does
//! not exist, so nothing outside a test build can turn a bug on. With the
//! feature, a switch is per thread and off until a test sets it (every host
//! of a simulation runs on the thread that drives it).
//!
//! Must never: be enabled by a production crate's default features, or hold
//! anything but on/off switches (the defects themselves live beside the
//! code they break, each one line behind [`on`]).

/// One deliberate defect, named by what it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// 7.1: an agent keeps its `failover` tasks running past its view of
    /// the region lease, so a lost region's exclusive task still runs when
    /// the global tier hands its job to another region.
    AgentIgnoresRegionLease,
    /// 7.7: an agent stops its `keep_running` tasks when its view of the
    /// region lease runs out, as if they were `failover` tasks.
    AgentStopsKeepRunningOnLeaseLoss,
    /// 7.2: the global tier creates a new job for a request id it has seen
    /// before instead of answering with the job it made then.
    SubmitIgnoresRequestId,
    /// 7.6: a region takes a task its agent stopped on its own (its view
    /// of the region lease ran out) as ended for good, though the job
    /// stays in the region and nobody else will run it.
    AgentStopTakenAsFinal,
    /// 7.5: the region leaves memory out of every fit check (the room a
    /// placement round counts, the solver's choice of node, the check of a
    /// solve before it is used, and the binding commit's own check), so it
    /// binds a task to a node whose memory is already taken.
    PlacerIgnoresMemory,
}

#[cfg(feature = "planted-bugs-for-tests")]
mod switch {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use super::Bug;

    thread_local! {
        static ON: RefCell<BTreeSet<Bug>> = const { RefCell::new(BTreeSet::new()) };
    }

    pub fn set(bug: Bug, on: bool) {
        ON.with(|s| {
            let mut s = s.borrow_mut();
            if on {
                s.insert(bug);
            } else {
                s.remove(&bug);
            }
        });
    }

    pub fn on(bug: Bug) -> bool {
        ON.with(|s| s.borrow().contains(&bug))
    }
}

/// Turns `bug` on or off for the calling thread.
#[cfg(feature = "planted-bugs-for-tests")]
pub fn set(bug: Bug, on: bool) {
    switch::set(bug, on);
}

/// Whether `bug` is on for the calling thread.
#[cfg(feature = "planted-bugs-for-tests")]
pub fn on(bug: Bug) -> bool {
    switch::on(bug)
}

/// Whether `bug` is on: never, in a build without the test feature.
#[cfg(not(feature = "planted-bugs-for-tests"))]
#[inline(always)]
pub const fn on(_bug: Bug) -> bool {
    false
}
