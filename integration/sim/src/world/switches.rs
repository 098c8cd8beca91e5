//! The planted-bug switches of one run.
//!
//! Owns turning the test-only defects a [`super::SimConfig`] asks for on
//! before a run and off after it (the unfenced binding commit of
//! `meridian-regional`, and one [`Bug`] of `meridian_control::planted`).
//! Must never leave a switch on past the run that asked for it, nor turn
//! one on in a build without the cargo feature that compiles it in (that is
//! an error the run reports).

use meridian_control::planted::Bug;

use super::SimError;

pub(super) fn set_bug(on: bool) -> Result<(), SimError> {
    #[cfg(feature = "unfenced-writes-for-tests")]
    {
        meridian_regional::pipeline::unfenced_for_tests::set(on);
        Ok(())
    }
    #[cfg(not(feature = "unfenced-writes-for-tests"))]
    {
        if on {
            Err(SimError::NoBugSwitch)
        } else {
            Ok(())
        }
    }
}

pub(super) fn set_planted(bug: Option<Bug>, on: bool) -> Result<(), SimError> {
    let Some(bug) = bug else {
        return Ok(());
    };
    #[cfg(feature = "planted-bugs-for-tests")]
    {
        meridian_control::planted::set(bug, on);
        Ok(())
    }
    #[cfg(not(feature = "planted-bugs-for-tests"))]
    {
        if on {
            Err(SimError::NoPlantedBugs(bug))
        } else {
            Ok(())
        }
    }
}
