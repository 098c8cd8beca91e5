//! The region registry: region records, region leases, capacity reports and
//! drain flags.
//!
//! Owns the `RegionInfo` record of every region and the region lease
//! protocol of `region.proto` (register, renew, epoch checks). Lease expiry
//! is judged on the global leader's clock and only decides liveness; every
//! region call is accepted or refused by comparing epochs inside the
//! transaction. It must never extend an expired lease (the region must
//! register again, with a new epoch) and never let a lower region leader
//! epoch take the lease back.

use std::time::Duration;

use meridian_control::SharedClock;
use meridian_control::lease::Fence;
use meridian_proto::v1::{
    DrainRegionRequest, ListRegionsResponse, RegionInfo, RegionState, RegisterRegionRequest,
    RegisterRegionResponse, RenewRegionLeaseRequest, RenewRegionLeaseResponse,
    ReportCapacityRequest, ReportCapacityResponse, Verdict,
};
use meridian_store::{Database, RangeOption, Transaction};
use prost::Message;

use crate::error::{GlobalError, Result};
use crate::keys::Keys;
use crate::validate;

/// Reads a region record inside `tx`.
pub async fn read_region(tx: &Transaction, keys: &Keys, name: &str) -> Result<Option<RegionInfo>> {
    match tx.get(&keys.region(name)).await? {
        Some(raw) => Ok(Some(RegionInfo::decode(raw.as_slice())?)),
        None => Ok(None),
    }
}

/// Writes a region record inside `tx`.
pub fn write_region(tx: &Transaction, keys: &Keys, info: &RegionInfo) -> Result<()> {
    tx.set(&keys.region(&info.name), &info.encode_to_vec())?;
    Ok(())
}

/// Whether the region's lease is live at `now_ms` (global clock).
pub fn lease_live(info: &RegionInfo, now_ms: u64) -> bool {
    info.lease_epoch > 0 && now_ms < info.lease_expires_at_unix_ms
}

/// Checks a region call's lease epoch inside `tx`: `Ok(None)` when it is
/// the current one, `Ok(Some(current))` when it is not.
pub async fn check_lease(
    tx: &Transaction,
    keys: &Keys,
    region: &str,
    epoch: u64,
) -> Result<Option<u64>> {
    let current = read_region(tx, keys, region)
        .await?
        .map_or(0, |r| r.lease_epoch);
    Ok((current == 0 || current != epoch).then_some(current))
}

/// The region registry.
#[derive(Clone)]
pub struct Registry {
    db: Database,
    keys: Keys,
    clock: SharedClock,
    lease: Duration,
}

impl Registry {
    /// A registry granting region leases of `lease`.
    pub fn new(db: Database, keys: Keys, clock: SharedClock, lease: Duration) -> Self {
        Registry {
            db,
            keys,
            clock,
            lease,
        }
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// RegisterRegion: issue (or return) the region lease.
    pub async fn register(
        &self,
        fence: &Fence,
        req: &RegisterRegionRequest,
    ) -> Result<RegisterRegionResponse> {
        validate::region_name("region", &req.region)?;
        let replica = req
            .replica
            .clone()
            .ok_or_else(|| GlobalError::invalid("replica", "required"))?;
        if replica.replica_id.is_empty() || replica.replica_id.len() > 128 {
            return Err(GlobalError::invalid("replica.replica_id", "1 to 128 bytes"));
        }
        if replica.boot_id.is_empty() {
            return Err(GlobalError::invalid("replica.boot_id", "required"));
        }
        let (keys, lease_ms) = (self.keys.clone(), self.lease_ms());
        let now = self.clock.now_unix_ms();
        self.db
            .run_locked(|tx, _| {
                let (keys, fence, replica) = (keys.clone(), fence.clone(), replica.clone());
                async move {
                    fence.check(&tx).await?;
                    let epoch_key = keys.region_leader_epoch(&req.region);
                    let seen = match tx.get(&epoch_key).await? {
                        Some(raw) => decode_u64(&raw)?,
                        None => 0,
                    };
                    if req.leader_epoch < seen {
                        return Ok(RegisterRegionResponse {
                            verdict: Verdict::StaleEpoch as i32,
                            current_leader_epoch: seen,
                            ..RegisterRegionResponse::default()
                        });
                    }
                    tx.set(&epoch_key, &req.leader_epoch.to_be_bytes())?;
                    let mut info =
                        read_region(&tx, &keys, &req.region)
                            .await?
                            .unwrap_or(RegionInfo {
                                name: req.region.clone(),
                                ..RegionInfo::default()
                            });
                    let same_holder = info.leader.as_ref().is_some_and(|l| {
                        l.replica_id == replica.replica_id && l.boot_id == replica.boot_id
                    }) && lease_live(&info, now);
                    if !same_holder {
                        info.lease_epoch += 1;
                        info.leader = Some(replica);
                    }
                    info.lease_expires_at_unix_ms = now.saturating_add(lease_ms);
                    info.state = RegionState::Ready as i32;
                    info.zones = req.zones.clone();
                    info.admin_endpoint = req.admin_endpoint.clone();
                    write_region(&tx, &keys, &info)?;
                    Ok::<_, GlobalError>(RegisterRegionResponse {
                        verdict: Verdict::Accepted as i32,
                        region_lease_epoch: info.lease_epoch,
                        lease_duration_ms: lease_ms,
                        renew_interval_ms: lease_ms / 3,
                        current_leader_epoch: req.leader_epoch,
                    })
                }
            })
            .await
    }

    /// RenewRegionLease: extend a live lease held at the given epoch.
    pub async fn renew(
        &self,
        fence: &Fence,
        req: &RenewRegionLeaseRequest,
    ) -> Result<RenewRegionLeaseResponse> {
        validate::region_name("region", &req.region)?;
        let (keys, lease_ms) = (self.keys.clone(), self.lease_ms());
        let now = self.clock.now_unix_ms();
        self.db
            .run_locked(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    let Some(mut info) = read_region(&tx, &keys, &req.region).await? else {
                        return Ok(RenewRegionLeaseResponse {
                            verdict: Verdict::NotFound as i32,
                            ..RenewRegionLeaseResponse::default()
                        });
                    };
                    let verdict = if info.lease_epoch != req.region_lease_epoch {
                        Verdict::StaleEpoch
                    } else if !lease_live(&info, now) {
                        Verdict::NotFound
                    } else {
                        info.lease_expires_at_unix_ms = now.saturating_add(lease_ms);
                        write_region(&tx, &keys, &info)?;
                        Verdict::Accepted
                    };
                    Ok::<_, GlobalError>(RenewRegionLeaseResponse {
                        verdict: verdict as i32,
                        current_epoch: info.lease_epoch,
                        lease_duration_ms: if verdict == Verdict::Accepted {
                            lease_ms
                        } else {
                            0
                        },
                    })
                }
            })
            .await
    }

    /// ReportCapacity: replace the region's capacity figures.
    pub async fn report_capacity(
        &self,
        fence: &Fence,
        req: &ReportCapacityRequest,
    ) -> Result<ReportCapacityResponse> {
        validate::region_name("region", &req.region)?;
        let keys = self.keys.clone();
        let now = self.clock.now_unix_ms();
        self.db
            .run_locked(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    if let Some(current) =
                        check_lease(&tx, &keys, &req.region, req.region_lease_epoch).await?
                    {
                        return Ok(ReportCapacityResponse {
                            verdict: Verdict::StaleEpoch as i32,
                            current_epoch: current,
                        });
                    }
                    let Some(mut info) = read_region(&tx, &keys, &req.region).await? else {
                        return Err(GlobalError::NotFound(format!("region {}", req.region)));
                    };
                    info.capacity = req.capacity.clone();
                    info.capacity_reported_at_unix_ms = now;
                    write_region(&tx, &keys, &info)?;
                    Ok::<_, GlobalError>(ReportCapacityResponse {
                        verdict: Verdict::Accepted as i32,
                        current_epoch: info.lease_epoch,
                    })
                }
            })
            .await
    }

    /// Every region, ordered by name, with its state judged now.
    pub async fn list(&self) -> Result<ListRegionsResponse> {
        let keys = self.keys.clone();
        let now = self.clock.now_unix_ms();
        let mut regions = self
            .db
            .run(|tx, _| {
                let keys = keys.clone();
                async move {
                    let rows = tx
                        .get_range(RangeOption::from(keys.regions().range()))
                        .await?;
                    let mut out = Vec::with_capacity(rows.len());
                    for kv in rows {
                        let mut info = RegionInfo::decode(kv.value.as_slice())?;
                        let held = tx
                            .get_range(RangeOption::from(keys.helds(&info.name).range()))
                            .await?;
                        info.assigned_jobs = held.len() as u64;
                        out.push(info);
                    }
                    Ok::<_, GlobalError>(out)
                }
            })
            .await?;
        for info in &mut regions {
            info.state = if lease_live(info, now) {
                RegionState::Ready as i32
            } else {
                RegionState::Unreachable as i32
            };
        }
        Ok(ListRegionsResponse { regions })
    }

    /// DrainRegion (`drain = true`) or UndrainRegion: set or clear the
    /// drain flags. The controller moves an evacuating region's jobs.
    pub async fn set_drain(
        &self,
        fence: &Fence,
        req: &DrainRegionRequest,
        drain: bool,
    ) -> Result<RegionInfo> {
        validate::region_name("region", &req.region)?;
        validate::reason("reason", &req.reason)?;
        let keys = self.keys.clone();
        self.db
            .run_locked(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    let Some(mut info) = read_region(&tx, &keys, &req.region).await? else {
                        return Err(GlobalError::NotFound(format!("region {}", req.region)));
                    };
                    info.draining = drain;
                    info.drain_reason = if drain {
                        req.reason.clone()
                    } else {
                        String::new()
                    };
                    info.evacuating = drain && req.evacuate;
                    write_region(&tx, &keys, &info)?;
                    Ok::<_, GlobalError>(info)
                }
            })
            .await
    }
}

/// Decodes a big-endian u64 record.
pub fn decode_u64(raw: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = raw
        .try_into()
        .map_err(|_| GlobalError::Corrupt("expected an 8-byte integer".into()))?;
    Ok(u64::from_be_bytes(bytes))
}
