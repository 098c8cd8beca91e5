//! meridian-store-worker: drives a Meridian store from its own OS process.
//!
//! It is the process driver of the store's conformance suite: the
//! multi-process tests (`store/tests/sqlite_multiprocess.rs`) start it to
//! share one SQLite file between processes, the way the replicas of a region
//! share their store. It is also a debugging tool: point it at a store file
//! to read a key, write one, or hold a write transaction open.
//!
//! Every command prints what it did on stdout, one fact per line, and ends
//! with `done errors=N`. Failures are described on stderr; the exit status is
//! 0 only when nothing failed (2 for a bad command line).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;

use meridian_store::tuple::{Subspace, Versionstamp};
use meridian_store::{Database, StoreError};

const USAGE: &str = "\
usage: meridian-store-worker COMMAND --url URL [OPTIONS]

commands:
  increment --key KEY --count N [--start stdin]
      increments the little-endian i64 counter at KEY N times, each time by
      reading it and writing the sum in one transaction; prints increments=N
      and retries=R (attempts beyond the first, from conflicts)
  stamp --id ID --count N [--prefix PREFIX] [--start stdin]
      commits N transactions, each setting one versionstamped key
      PREFIX + tuple(versionstamp) (PREFIX defaults to \"stamps\") to \"ID:SEQ\";
      prints `stamp SEQ HEX` per commit with the commit's versionstamp
  set --key KEY --value VALUE
      sets KEY to VALUE in one transaction; prints committed
  get --key KEY
      prints `value VALUE` or `missing`
  hold --prefix PREFIX --count N [--value-bytes B]
      opens a transaction, sets N keys PREFIX + 8-digit index to B bytes
      (default 1000), reads once so the writes reach the database and its
      write lock is held, prints holding, then waits without committing until
      stdin closes (then exits 1, the transaction rolled back) or it is killed

With --start stdin, the command opens the store, prints ready and waits for
a line on stdin before it starts, so several processes can start together.

URL is sqlite:PATH, sqlite::memory: or fdb:CLUSTER_FILE. Keys, prefixes and
values are taken as raw UTF-8 bytes.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, options) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("meridian-store-worker: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("meridian-store-worker: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(&command, &options));
    let errors = match outcome {
        Ok(errors) => errors,
        Err(e) => {
            eprintln!("meridian-store-worker: {command}: {e}");
            1
        }
    };
    println!("done errors={errors}");
    let _ = std::io::stdout().flush();
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Options(HashMap<String, String>);

impl Options {
    fn text(&self, name: &str) -> Result<&str, String> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("missing --{name}"))
    }

    fn number(&self, name: &str, default: Option<u64>) -> Result<u64, String> {
        match (self.0.get(name), default) {
            (Some(raw), _) => raw
                .parse()
                .map_err(|e| format!("--{name} {raw:?} is not a number: {e}")),
            (None, Some(default)) => Ok(default),
            (None, None) => Err(format!("missing --{name}")),
        }
    }
}

fn parse(args: &[String]) -> Result<(String, Options), String> {
    let (command, rest) = args.split_first().ok_or("missing command")?;
    if command == "--help" || command == "-h" {
        return Err("help requested".into());
    }
    if !["increment", "stamp", "set", "get", "hold"].contains(&command.as_str()) {
        return Err(format!("unknown command {command:?}"));
    }
    let mut options = HashMap::new();
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {flag:?}"))?;
        let value = rest
            .next()
            .ok_or_else(|| format!("--{name} needs a value"))?;
        options.insert(name.to_string(), value.clone());
    }
    Ok((command.clone(), Options(options)))
}

/// Runs one command; returns how many operations failed.
async fn run(command: &str, options: &Options) -> Result<u64, String> {
    let url = options.text("url")?;
    let db = meridian_store::open(url)
        .await
        .map_err(|e| format!("opening {url}: {e}"))?;
    match options.0.get("start").map(String::as_str) {
        None => {}
        Some("stdin") => wait_for_start().await?,
        Some(other) => return Err(format!("--start {other:?}: expected stdin")),
    }
    match command {
        "increment" => increment(&db, options).await,
        "stamp" => stamp(&db, options).await,
        "set" => set(&db, options).await,
        "get" => get(&db, options).await,
        "hold" => hold(&db, options).await,
        other => Err(format!("unknown command {other:?}")),
    }
}

/// Says `ready` and waits for one line on stdin.
async fn wait_for_start() -> Result<(), String> {
    println!("ready");
    std::io::stdout()
        .flush()
        .map_err(|e| format!("writing to stdout: {e}"))?;
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|e| format!("waiting on stdin: {e}"))?
    .map_err(|e| format!("reading stdin: {e}"))?;
    if line.is_empty() {
        return Err("stdin closed before the start signal".into());
    }
    Ok(())
}

async fn increment(db: &Database, options: &Options) -> Result<u64, String> {
    let key = options.text("key")?.as_bytes().to_vec();
    let count = options.number("count", None)?;
    let mut errors = 0;
    let mut done = 0;
    let mut attempts = 0u64;
    for _ in 0..count {
        let outcome = db
            .run(|tx, _| {
                let key = key.clone();
                attempts += 1;
                async move {
                    let current = match tx.get(&key).await? {
                        None => 0,
                        Some(bytes) => {
                            let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                                StoreError::Backend(format!(
                                    "the counter holds {} bytes, not 8",
                                    bytes.len()
                                ))
                            })?;
                            i64::from_le_bytes(raw)
                        }
                    };
                    tx.set(&key, &(current + 1).to_le_bytes())
                }
            })
            .await;
        match outcome {
            Ok(()) => done += 1,
            Err(e) => {
                errors += 1;
                eprintln!("increment failed: {e}");
            }
        }
    }
    println!("increments={done}");
    println!("retries={}", attempts.saturating_sub(done + errors));
    Ok(errors)
}

async fn stamp(db: &Database, options: &Options) -> Result<u64, String> {
    let id = options.text("id")?;
    let count = options.number("count", None)?;
    let prefix = options.0.get("prefix").map_or("stamps", String::as_str);
    let template = Subspace::from_bytes(prefix.as_bytes())
        .pack_with_versionstamp(&(Versionstamp::incomplete(0),));
    let mut errors = 0;
    let mut previous: Option<[u8; 10]> = None;
    for seq in 0..count {
        let value = format!("{id}:{seq}").into_bytes();
        let outcome = db
            .run_with_info(|tx, _| {
                let (template, value) = (template.clone(), value.clone());
                async move { tx.set_versionstamped_key(&template, &value) }
            })
            .await;
        match outcome {
            Ok((_, info)) => match info.versionstamp {
                Some(stamp) => {
                    if previous.is_some_and(|p| p >= stamp) {
                        errors += 1;
                        eprintln!("commit {seq} got a stamp no larger than the previous one");
                    }
                    previous = Some(stamp);
                    println!("stamp {seq} {}", hex(&stamp));
                }
                None => {
                    errors += 1;
                    eprintln!("commit {seq} reported no versionstamp");
                }
            },
            Err(e) => {
                errors += 1;
                eprintln!("stamped commit {seq} failed: {e}");
            }
        }
    }
    Ok(errors)
}

async fn set(db: &Database, options: &Options) -> Result<u64, String> {
    let key = options.text("key")?.as_bytes().to_vec();
    let value = options.text("value")?.as_bytes().to_vec();
    db.run(|tx, _| {
        let (key, value) = (key.clone(), value.clone());
        async move { tx.set(&key, &value) }
    })
    .await
    .map_err(|e| format!("set: {e}"))?;
    println!("committed");
    Ok(0)
}

async fn get(db: &Database, options: &Options) -> Result<u64, String> {
    let key = options.text("key")?.as_bytes().to_vec();
    let value = db
        .run(|tx, _| {
            let key = key.clone();
            async move { tx.get(&key).await }
        })
        .await
        .map_err(|e| format!("get: {e}"))?;
    match value {
        Some(v) => println!("value {}", String::from_utf8_lossy(&v)),
        None => println!("missing"),
    }
    Ok(0)
}

async fn hold(db: &Database, options: &Options) -> Result<u64, String> {
    let prefix = options.text("prefix")?;
    let count = options.number("count", None)?;
    let value_bytes = options.number("value-bytes", Some(1000))?;
    let value = vec![b'h'; usize::try_from(value_bytes).map_err(|e| e.to_string())?];
    let tx = db.begin().await.map_err(|e| format!("begin: {e}"))?;
    for i in 0..count {
        tx.set(format!("{prefix}{i:08}").as_bytes(), &value)
            .map_err(|e| format!("set {i}: {e}"))?;
    }
    // A read is a round trip: the buffered writes go into SQLite first, which
    // takes its write lock.
    tx.get(prefix.as_bytes())
        .await
        .map_err(|e| format!("flushing the writes: {e}"))?;
    println!("holding");
    std::io::stdout()
        .flush()
        .map_err(|e| format!("writing to stdout: {e}"))?;
    // Wait for the end: a kill, or stdin closing.
    tokio::task::spawn_blocking(|| std::io::stdin().lock().lines().count())
        .await
        .map_err(|e| format!("waiting on stdin: {e}"))?;
    drop(tx);
    Err("stdin closed; the transaction was dropped without committing".into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
