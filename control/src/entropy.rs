//! Where fresh identities and unseeded random values come from.
//!
//! Owns the one seam through which a process draws randomness that no
//! configured seed covers: boot ids ([`crate::lease::Identity::new_boot`],
//! the agents' node boot ids), trace and span ids ([`crate::trace`]), and
//! anything else that must be unique rather than reproducible. In
//! production every draw comes from the operating system's randomness
//! (through `uuid` and `rand`'s thread generator), as before this seam
//! existed. A deterministic simulation calls [`seed_this_thread`] for the
//! length of a run: every host of a `turmoil` simulation runs on the thread
//! that drives it, so from then on every draw on that thread comes from one
//! generator seeded by the run's seed, and replaying the seed replays the
//! ids.
//!
//! Must never: be seeded outside a simulation or a test (a seeded process
//! would reuse boot ids across restarts of the whole process, and a
//! restarted holder must never be mistaken for its previous incarnation);
//! serve secrets (the seeded generator is predictable by design); or be
//! used where a configured seed already exists (backoff jitter, elector
//! timing and store retries take their seeds from their configs, so that a
//! seed names their behaviour in production too).

use std::cell::RefCell;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

thread_local! {
    static SEEDED: RefCell<Option<ChaCha8Rng>> = const { RefCell::new(None) };
}

/// Draws on this thread come from a generator seeded with `seed` until the
/// guard drops; then whatever was there before (usually the operating
/// system) is back. For deterministic simulations and tests only.
pub fn seed_this_thread(seed: u64) -> SeededGuard {
    // A fixed tweak keeps this stream apart from the generators other
    // components seed with the same run seed.
    let rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6964_656e_7469_7479);
    let previous = SEEDED.with(|s| s.borrow_mut().replace(rng));
    SeededGuard { previous }
}

/// Restores the thread's previous source when dropped.
#[must_use = "the thread is seeded only while the guard lives"]
pub struct SeededGuard {
    previous: Option<ChaCha8Rng>,
}

impl Drop for SeededGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SEEDED.with(|s| *s.borrow_mut() = previous);
    }
}

impl std::fmt::Debug for SeededGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededGuard").finish_non_exhaustive()
    }
}

/// Whether draws on this thread are seeded (inside a simulation run).
pub fn is_seeded() -> bool {
    SEEDED.with(|s| s.borrow().is_some())
}

/// Fills `buf` with random bytes: seeded on a seeded thread, from the
/// operating system's randomness otherwise.
pub fn fill(buf: &mut [u8]) {
    let seeded = SEEDED.with(|s| match s.borrow_mut().as_mut() {
        Some(rng) => {
            rng.fill_bytes(buf);
            true
        }
        None => false,
    });
    if !seeded {
        rand::rng().fill_bytes(buf);
    }
}

/// A random (version 4) UUID from this thread's source.
pub fn uuid_v4() -> Uuid {
    if !is_seeded() {
        return Uuid::new_v4();
    }
    let mut bytes = [0u8; 16];
    fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseeded_draws_are_never_the_same_twice() {
        assert!(!is_seeded());
        assert_ne!(uuid_v4(), uuid_v4());
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        fill(&mut a);
        fill(&mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn one_seed_gives_the_same_draws_and_another_seed_different_ones() {
        let first: Vec<Uuid> = {
            let _g = seed_this_thread(7);
            (0..3).map(|_| uuid_v4()).collect()
        };
        let again: Vec<Uuid> = {
            let _g = seed_this_thread(7);
            (0..3).map(|_| uuid_v4()).collect()
        };
        let other: Vec<Uuid> = {
            let _g = seed_this_thread(8);
            (0..3).map(|_| uuid_v4()).collect()
        };
        assert_eq!(first, again);
        assert_ne!(first, other);
        assert_ne!(first[0], first[1], "a seeded stream still gives fresh ids");
        assert!(first.iter().all(|u| u.get_version_num() == 4));
    }

    #[test]
    fn the_seed_ends_with_its_guard_and_other_threads_never_see_it() {
        let _g = seed_this_thread(7);
        assert!(is_seeded());
        let elsewhere = std::thread::spawn(is_seeded).join().expect("thread runs");
        assert!(!elsewhere);
        drop(_g);
        assert!(!is_seeded());
    }
}
