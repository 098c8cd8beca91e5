//! Leader election on one lease: follow, take over, renew, step down.
//!
//! Owns the candidate's loop and the leadership notifications. The loop is a
//! sequence of [`Elector::tick`] calls, so tests and simulations can drive it
//! step by step with a manual clock, and production runs the same steps from
//! [`Elector::run`]. It must never report leadership past the local deadline:
//! a leader that cannot renew in time steps down by itself, even while a
//! renewal is still hanging in the store.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::watch;

use super::{Acquired, Fence, Held, Lease, LeaseError};
use crate::clock::{Instant, SharedClock};

/// Timings of an elector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectorConfig {
    /// How often a leader renews.
    pub renew_every: Duration,
    /// How often a follower retries at most while the lease is held (it also
    /// wakes when the observed lease should expire). Jittered by up to a half.
    pub retry_every: Duration,
}

impl ElectorConfig {
    /// Renew three times per lease; retry four times per lease.
    pub fn for_lease(duration: Duration) -> Self {
        ElectorConfig {
            renew_every: duration / 3,
            retry_every: duration / 4,
        }
    }
}

/// Whether this candidate leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Another candidate (or nobody) holds the lease.
    Follower,
    /// This candidate holds the lease and may act until the deadline.
    Leader,
}

/// The latest leadership view, published to subscribers on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderStatus {
    /// This candidate's role.
    pub role: Role,
    /// The epoch of the holder last seen (ours when leading).
    pub epoch: u64,
    /// The holder last seen, as `name#boot`.
    pub holder: Option<String>,
}

/// One candidate for one lease.
pub struct Elector {
    lease: Lease,
    config: ElectorConfig,
    clock: SharedClock,
    held: Option<Held>,
    status: watch::Sender<LeaderStatus>,
    rng: SmallRng,
    name: String,
}

impl Elector {
    /// A follower of `lease`; `seed` drives the retry jitter; `name` labels
    /// metrics (for example "global" or "shard-3").
    pub fn new(lease: Lease, config: ElectorConfig, seed: u64, name: impl Into<String>) -> Self {
        let name = name.into();
        crate::telemetry::register_lease(&name);
        let clock = lease.clock.clone();
        let (status, _) = watch::channel(LeaderStatus {
            role: Role::Follower,
            epoch: 0,
            holder: None,
        });
        Elector {
            lease,
            config,
            clock,
            held: None,
            status,
            rng: SmallRng::seed_from_u64(seed),
            name,
        }
    }

    /// Leadership changes, as they happen.
    pub fn subscribe(&self) -> watch::Receiver<LeaderStatus> {
        self.status.subscribe()
    }

    /// The fence to put in writes, if this candidate leads right now.
    pub fn fence(&self) -> Option<Fence> {
        let held = self.held.as_ref()?;
        (self.clock.now() < held.act_until).then(|| held.fence.clone())
    }

    /// The local deadline of the current term, if leading.
    pub fn act_until(&self) -> Option<Instant> {
        self.held.as_ref().map(|h| h.act_until)
    }

    /// The lease this elector competes for.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// One step: step down if the deadline passed, otherwise renew (leader)
    /// or try to take over (follower). Returns how long to wait before the
    /// next step. A renewal still pending at the deadline is abandoned and the
    /// leader steps down.
    pub async fn tick(&mut self) -> Duration {
        if let Some(held) = self.held.clone() {
            if self.clock.now() >= held.act_until {
                self.step_down("deadline passed before renewal");
                // Our record may not have expired in the store yet; trying to
                // take it over now would only find it busy.
                return self.jittered(self.config.retry_every);
            } else {
                let renewal = self.lease.renew(&held);
                let deadline = self.clock.sleep_until(held.act_until);
                tokio::select! {
                    result = renewal => match result {
                        Ok(renewed) => {
                            self.held = Some(renewed);
                            return self.config.renew_every;
                        }
                        Err(LeaseError::Fenced { found, .. }) => {
                            crate::telemetry::renew_failed(&self.name, "fenced");
                            self.step_down(&format!("fenced by {found}"));
                            return self.jittered(self.config.retry_every);
                        }
                        Err(err) => {
                            crate::telemetry::renew_failed(&self.name, "error");
                            tracing::warn!(lease = %self.name, error = %err, "lease renewal failed; retrying until the deadline");
                            let left = held.act_until.saturating_duration_since(self.clock.now());
                            return (self.config.renew_every / 4).min(left);
                        }
                    },
                    _ = deadline => {
                        crate::telemetry::renew_failed(&self.name, "timeout");
                        self.step_down("renewal did not finish before the deadline");
                        return self.jittered(self.config.retry_every);
                    }
                }
            }
        }
        self.follow().await
    }

    async fn follow(&mut self) -> Duration {
        match self.lease.try_acquire().await {
            Ok(Acquired::Held(held)) => {
                let epoch = held.fence.epoch();
                self.held = Some(held);
                record_transition(&self.name, "leader", epoch);
                tracing::info!(lease = %self.name, epoch, holder = %self.lease.identity(), "became leader");
                self.publish(Role::Leader, epoch, Some(self.lease.identity().to_string()));
                self.config.renew_every
            }
            Ok(Acquired::Busy(record)) => {
                self.publish(
                    Role::Follower,
                    record.epoch,
                    Some(record.holder.to_string()),
                );
                let until_expiry = Duration::from_millis(
                    record
                        .expires_at_unix_ms
                        .saturating_sub(self.clock.now_unix_ms()),
                );
                self.jittered(until_expiry.min(self.config.retry_every))
            }
            Err(err) => {
                tracing::warn!(lease = %self.name, error = %err, "lease acquire failed");
                self.jittered(self.config.retry_every)
            }
        }
    }

    fn step_down(&mut self, why: &str) {
        if let Some(held) = self.held.take() {
            let epoch = held.fence.epoch();
            record_transition(&self.name, "follower", epoch);
            tracing::warn!(lease = %self.name, epoch, reason = why, "stepped down");
            self.publish(Role::Follower, epoch, None);
        }
    }

    fn publish(&self, role: Role, epoch: u64, holder: Option<String>) {
        let next = LeaderStatus {
            role,
            epoch,
            holder,
        };
        self.status.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }

    // Followers spread their retries so a crowd of them does not hit the store
    // in the same instant when a lease expires.
    fn jittered(&mut self, base: Duration) -> Duration {
        crate::backoff::spread(base, 0.5, &mut self.rng)
    }

    /// Runs until `shutdown` resolves, then releases the lease if held so a
    /// standby can take over at once.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let wait = self.tick().await;
            let sleep = self.clock.sleep(wait);
            let deadline = match self.act_until() {
                Some(at) => self.clock.sleep_until(at),
                None => self.clock.sleep(Duration::MAX),
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = sleep => {}
                // Stepping down on time does not wait for the next renew slot.
                _ = deadline => {}
            }
        }
        if let Some(held) = self.held.take() {
            if let Err(err) = self.lease.release(&held).await {
                tracing::warn!(lease = %self.name, error = %err, "releasing the lease failed; it will expire");
            }
            record_transition(&self.name, "released", held.fence.epoch());
            self.publish(Role::Follower, held.fence.epoch(), None);
        }
    }
}

/// Counts lease transitions (`meridian_control_lease_transitions_total`, labels
/// `lease` and `to`) and exposes the epoch of this candidate's last term
/// (`meridian_control_lease_epoch`, label `lease`).
fn record_transition(lease: &str, to: &'static str, epoch: u64) {
    metrics::counter!(
        "meridian_control_lease_transitions_total",
        "lease" => lease.to_string(),
        "to" => to
    )
    .increment(1);
    metrics::gauge!("meridian_control_lease_epoch", "lease" => lease.to_string()).set(epoch as f64);
}
