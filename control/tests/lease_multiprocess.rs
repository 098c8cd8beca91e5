//! Leader election across real processes sharing one SQLite file, under
//! randomized pauses and kills. Time is driven by this test (each candidate
//! runs a manual clock), so a round costs only its store round trips and a
//! seed replays the same schedule.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use meridian_store::tuple::{self, Subspace};
use meridian_store::{RangeOption, StoreError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const LEASE_MS: u64 = 1_000;
const MARGIN_MS: u64 = 200;
const ROUNDS: usize = 1_200;

struct Candidate {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    boot: String,
    skew_ms: i64,
    holding: Option<u64>,
}

impl Candidate {
    fn spawn(url: &str, name: &str, skew_ms: i64) -> Candidate {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian-lease-candidate"))
            .args([url, name, &LEASE_MS.to_string(), &MARGIN_MS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("candidate starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut c = Candidate {
            child,
            stdin,
            stdout,
            boot: String::new(),
            skew_ms,
            holding: None,
        };
        let ready = c.read_line();
        c.boot = ready
            .strip_prefix("ready ")
            .expect("ready line")
            .to_string();
        c
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("read from candidate");
        assert!(n > 0, "candidate exited unexpectedly");
        line.trim().to_string()
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write to candidate");
        self.stdin.flush().expect("flush");
        self.read_line()
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

fn epoch_of(reply: &str) -> u64 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no epoch in {reply:?}"))
}

#[test]
fn two_candidate_processes_never_share_an_epoch_and_a_live_one_leads_within_two_leases() {
    let seed: u64 = std::env::var("LEASE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    println!("seed {seed} (replay: LEASE_SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("lease.db").display());

    let names = ["a", "b"];
    let mut slots: Vec<Option<Candidate>> = names
        .iter()
        .map(|n| Some(Candidate::spawn(&url, n, rng.random_range(-50..=50))))
        .collect();
    let mut paused_until = [0usize; 2];
    let wall_base: i64 = 1_700_000_000_000;
    let mut mono: u64 = 0;

    // epoch -> boot ids that reported leading it
    let mut leaders: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut highest_term = 0u64;
    let mut leaderless_since: Option<u64> = None;
    let mut worst_gap = 0u64;
    let (mut kills, mut pauses, mut stale_commits_rejected, mut fenced_writes) = (0, 0, 0, 0);

    for round in 0..ROUNDS {
        mono += rng.random_range(50..=400);
        // Faults first: kill or pause one candidate now and then.
        let victim = rng.random_range(0..2);
        let roll: f64 = rng.random();
        if roll < 0.03 {
            if let Some(c) = slots[victim].take() {
                c.kill();
                kills += 1;
            }
        } else if roll < 0.08 && paused_until[victim] <= round {
            paused_until[victim] = round + rng.random_range(1..=12);
            pauses += 1;
        }

        let mut someone_leads = false;
        let mut someone_live = false;
        for i in 0..2 {
            if slots[i].is_none() && rng.random_bool(0.5) {
                slots[i] = Some(Candidate::spawn(&url, names[i], rng.random_range(-50..=50)));
            }
            if paused_until[i] > round {
                continue;
            }
            let Some(c) = slots[i].as_mut() else { continue };
            someone_live = true;

            // A process waking from a pause may act before it reads its clock:
            // its write must then be stopped by the fence, not by its clock.
            if rng.random_bool(0.3) {
                let r = c.ask("write");
                if r.starts_with("fenced") {
                    fenced_writes += 1;
                }
            }
            if let Some(began) = c.holding.take() {
                let r = c.ask("commit");
                if r.starts_with("rejected") {
                    stale_commits_rejected += 1;
                } else {
                    assert!(
                        highest_term == began,
                        "a transaction begun at epoch {began} committed after epoch {highest_term} took over: {r}"
                    );
                }
            }

            let wall = (wall_base + mono as i64 + c.skew_ms) as u64;
            let r = c.ask(&format!("tick {mono} {wall}"));
            if r.starts_with("leader") {
                let epoch = epoch_of(&r);
                let holders = leaders.entry(epoch).or_default();
                holders.insert(c.boot.clone());
                assert_eq!(
                    holders.len(),
                    1,
                    "two leaders for epoch {epoch}: {holders:?}"
                );
                assert!(
                    epoch >= highest_term,
                    "epoch went backwards: {epoch} after {highest_term}"
                );
                highest_term = epoch;
                someone_leads = true;
                if rng.random_bool(0.1) {
                    let r = c.ask("begin");
                    if r.starts_with("began") {
                        c.holding = Some(epoch_of(&r));
                    }
                }
            }
        }

        // Liveness: with a live candidate and no live leader, one must lead
        // within two lease lengths.
        if someone_leads || !someone_live {
            leaderless_since = None;
        } else {
            let since = *leaderless_since.get_or_insert(mono);
            worst_gap = worst_gap.max(mono - since);
            assert!(
                mono - since <= 2 * LEASE_MS,
                "round {round}: no leader for {} ms with a live candidate",
                mono - since
            );
        }
    }
    for c in slots.into_iter().flatten() {
        c.kill();
    }

    // The store's own history: fenced writes in commit order never go back an
    // epoch, and each epoch's writes come from one process.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let log = rt.block_on(async {
        let db = meridian_store::open(&url).await.expect("open");
        let prefix = Subspace::from_bytes(tuple::pack(&("log",)));
        db.run(|tx, _| {
            let range = RangeOption::prefix(prefix.bytes());
            async move { tx.get_range(range).await }
        })
        .await
        .map_err(|e: StoreError| e)
        .expect("read log")
    });
    let mut last_epoch = 0u64;
    let mut writers: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for kv in &log {
        let (epoch, boot): (u64, String) = tuple::unpack(&kv.value).expect("log entry");
        assert!(
            epoch >= last_epoch,
            "fenced owner's write committed: epoch {epoch} after {last_epoch}"
        );
        last_epoch = epoch;
        writers.entry(epoch).or_default().insert(boot);
    }
    for (epoch, boots) in &writers {
        assert_eq!(boots.len(), 1, "epoch {epoch} written by {boots:?}");
    }
    println!(
        "rounds {ROUNDS}, terms {}, log writes {}, kills {kills}, pauses {pauses}, \
         fenced writes {fenced_writes}, stale commits rejected {stale_commits_rejected}, \
         longest leaderless gap {worst_gap} ms",
        leaders.len(),
        log.len()
    );
    assert!(leaders.len() > 10, "too few terms to mean anything");
    assert!(
        fenced_writes + stale_commits_rejected > 0,
        "the fence was never exercised"
    );
}
