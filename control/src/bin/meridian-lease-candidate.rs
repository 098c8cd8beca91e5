//! A lease candidate driven line by line over stdin, with time given by the
//! driver. The multi-process election tests run several of these against one
//! SQLite file; it is also handy for watching a lease by hand.
//!
//! Usage: `meridian-lease-candidate STORE_URL NAME LEASE_MS MARGIN_MS`
//!
//! Commands (one reply line each):
//! - `tick MONO_MS WALL_MS` — set the clock, run one election step:
//!   `leader EPOCH` or `follower EPOCH`
//! - `write` — a fenced write of a log entry: `wrote EPOCH`, `fenced EPOCH`
//!   or `notleader`
//! - `begin` — start a fenced write and hold its transaction open:
//!   `began EPOCH` or `notleader`
//! - `commit` — commit the held transaction: `committed EPOCH` or
//!   `rejected EPOCH REASON`

use std::io::{BufRead, Write};
use std::time::Duration;

use meridian_control::clock::{Instant, ManualClock};
use meridian_control::lease::{Elector, ElectorConfig, Fence, Identity, Lease, LeaseError};
use meridian_store::tuple::{self, Subspace, Versionstamp};
use meridian_store::{Database, Transaction};

/// Where fenced writes land: `("log", versionstamp) -> (epoch, boot id)`, so
/// the log reads back in commit order.
pub const LOG_PREFIX: &str = "log";

fn log_entry(tx: &Transaction, fence: &Fence) -> Result<(), LeaseError> {
    let key = Subspace::from_bytes(tuple::pack(&(LOG_PREFIX,)))
        .pack_with_versionstamp(&(Versionstamp::incomplete(0),));
    let value = tuple::pack(&(fence.epoch(), fence.holder().boot_id.to_string()));
    tx.set_versionstamped_key(&key, &value)?;
    Ok(())
}

async fn fenced_write(db: &Database, fence: Fence) -> Result<(), LeaseError> {
    db.run(|tx, _| {
        let fence = fence.clone();
        async move {
            fence.check(&tx).await?;
            log_entry(&tx, &fence)
        }
    })
    .await
}

fn reply(out: &mut impl Write, line: &str) -> std::io::Result<()> {
    writeln!(out, "{line}")?;
    out.flush()
}

async fn serve(args: &[String]) -> Result<(), String> {
    let [url, name, lease_ms, margin_ms] = args else {
        return Err("usage: meridian-lease-candidate STORE_URL NAME LEASE_MS MARGIN_MS".into());
    };
    let lease_ms: u64 = lease_ms.parse().map_err(|e| format!("LEASE_MS: {e}"))?;
    let margin_ms: u64 = margin_ms.parse().map_err(|e| format!("MARGIN_MS: {e}"))?;
    let db = meridian_store::open(url).await.map_err(|e| e.to_string())?;
    let clock = ManualClock::new();
    let identity = Identity::new_boot(name.clone());
    let lease = Lease::new(
        db.clone(),
        tuple::pack(&("lease", "candidates")),
        identity.clone(),
        clock.shared(),
        Duration::from_millis(lease_ms),
        Duration::from_millis(margin_ms),
    );
    let duration = Duration::from_millis(lease_ms);
    let mut elector = Elector::new(lease, ElectorConfig::for_lease(duration), 0, "candidates");
    let mut held: Option<(Transaction, u64)> = None;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    reply(&mut out, &format!("ready {}", identity.boot_id)).map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["tick", mono, wall] => {
                let mono: u64 = mono.parse().map_err(|e| format!("MONO_MS: {e}"))?;
                let wall: u64 = wall.parse().map_err(|e| format!("WALL_MS: {e}"))?;
                clock
                    .advance_to(Instant::from_epoch(Duration::from_millis(mono)))
                    .map_err(|e| e.to_string())?;
                clock.set_unix_ms(wall);
                elector.tick().await;
                match elector.fence() {
                    Some(f) => format!("leader {}", f.epoch()),
                    None => format!("follower {}", elector.subscribe().borrow().epoch),
                }
            }
            ["write"] => match elector.fence() {
                None => "notleader".to_string(),
                Some(fence) => {
                    let epoch = fence.epoch();
                    match fenced_write(&db, fence).await {
                        Ok(()) => format!("wrote {epoch}"),
                        Err(LeaseError::Fenced { .. }) => format!("fenced {epoch}"),
                        Err(e) => return Err(format!("write failed: {e}")),
                    }
                }
            },
            ["begin"] => match elector.fence() {
                None => "notleader".to_string(),
                Some(fence) => {
                    let tx = db.begin().await.map_err(|e| e.to_string())?;
                    match fence.check(&tx).await {
                        Ok(()) => {
                            log_entry(&tx, &fence).map_err(|e| e.to_string())?;
                            held = Some((tx, fence.epoch()));
                            format!("began {}", fence.epoch())
                        }
                        Err(_) => "notleader".to_string(),
                    }
                }
            },
            ["commit"] => match held.take() {
                None => return Err("commit without begin".into()),
                Some((tx, epoch)) => match tx.commit().await {
                    Ok(_) => format!("committed {epoch}"),
                    Err(e) => format!("rejected {epoch} {e}"),
                },
            },
            _ => return Err(format!("unknown command {line:?}")),
        };
        reply(&mut out, &answer).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = serve(&args).await {
        eprintln!("meridian-lease-candidate: {e}");
        std::process::exit(1);
    }
}
