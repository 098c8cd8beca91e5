//! Shard balancing between replicas, in process: a replica alone leads every
//! shard; when a second one appears, the first gives away its excess
//! fence-first (its worker has stopped before the other's starts) and the
//! newcomer takes those shards at a higher epoch.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use meridian_control::SystemClock;
use meridian_control::lease::{Identity, LeaseRuntime};
use meridian_regional::model::Keys;
use meridian_regional::shard::{ManagerConfig, ShardManager, ShardTerm, ShardWork, ensure_layout};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Leads {
        replica: String,
        shard: u32,
        epoch: u64,
    },
    Stopped {
        replica: String,
        shard: u32,
    },
}

/// Work that only reports when it starts and stops.
struct Probe {
    replica: String,
    events: mpsc::UnboundedSender<Event>,
}

impl ShardWork for Probe {
    fn lead(&self, term: ShardTerm, mut stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        let replica = self.replica.clone();
        let events = self.events.clone();
        Box::pin(async move {
            let _ = events.send(Event::Leads {
                replica: replica.clone(),
                shard: term.shard,
                epoch: term.epoch,
            });
            let _ = stop.wait_for(|s| *s).await;
            let _ = events.send(Event::Stopped {
                replica,
                shard: term.shard,
            });
        })
    }
}

fn manager(
    db: &meridian_store::Database,
    keys: &Keys,
    name: &str,
    events: &mpsc::UnboundedSender<Event>,
) -> ShardManager {
    // Short leases on the system clock: the electors run on their own; the
    // test awaits their effects and never sleeps.
    let lease = Duration::from_millis(400);
    ShardManager::new(
        db.clone(),
        keys.clone(),
        SystemClock::shared(),
        Identity::new_boot(name),
        ManagerConfig {
            replica: name.into(),
            endpoint: format!("http://{name}"),
            lease,
            safety_margin: lease / 10,
            seed: 7,
            leases: LeaseRuntime::inline(),
            lease_store: db.clone(),
        },
        Arc::new(Probe {
            replica: name.into(),
            events: events.clone(),
        }),
    )
}

async fn next(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event in time")
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_takes_half_the_shards_after_the_first_gives_them_away_fence_first() {
    let db = meridian_store::open("sqlite::memory:")
        .await
        .expect("store");
    let keys = Keys::new("r1");
    ensure_layout(&db, &keys, 4).await.expect("layout");
    let (tx, mut events) = mpsc::unbounded_channel();

    let mut a = manager(&db, &keys, "a", &tx);
    a.tick().await.expect("tick");
    let mut first_epochs = [0u64; 4];
    for _ in 0..4 {
        match next(&mut events).await {
            Event::Leads {
                replica,
                shard,
                epoch,
            } if replica == "a" => first_epochs[shard as usize] = epoch,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(a.leading().lock().len(), 4, "alone, a leads every shard");

    let mut b = manager(&db, &keys, "b", &tx);
    b.tick().await.expect("tick");
    a.tick().await.expect("tick");

    // a stops two workers; b starts them, each only after a's has stopped.
    let mut stopped = Vec::new();
    let mut taken = Vec::new();
    while taken.len() < 2 {
        match next(&mut events).await {
            Event::Stopped { replica, shard } if replica == "a" => stopped.push(shard),
            Event::Leads {
                replica,
                shard,
                epoch,
            } if replica == "b" => {
                assert!(
                    stopped.contains(&shard),
                    "b leads {shard} before a stopped it"
                );
                assert!(epoch > first_epochs[shard as usize], "a new term");
                taken.push(shard);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    taken.sort();
    assert_eq!(taken.len(), 2);
    b.tick().await.expect("tick");
    a.tick().await.expect("tick");
    let a_leads: Vec<u32> = a.leading().lock().keys().copied().collect();
    let b_leads: Vec<u32> = b.leading().lock().keys().copied().collect();
    assert_eq!(b_leads, taken);
    assert_eq!(a_leads.len(), 2);
    assert!(a_leads.iter().all(|s| !taken.contains(s)));
}
