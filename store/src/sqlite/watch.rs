//! Watches: wake a waiter once a key's value differs from what it was at the
//! commit that registered the watch.
//!
//! Owns one background thread per database with its own connection. Commits
//! of other processes are noticed by polling `PRAGMA data_version` (it changes
//! whenever another connection commits); commits of this process poke the
//! thread directly. The thread idles on its channel when nothing is watched.
//! It must never hold a lock that a writer needs: each check is one short read
//! in autocommit mode.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::SqliteOptions;
use super::pool::open_connection;
use super::{apply, map_err};
use crate::error::{Result, StoreError};

type Waiter = (Option<Vec<u8>>, oneshot::Sender<Result<()>>);

enum Message {
    Register {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        sender: oneshot::Sender<Result<()>>,
    },
    Poke,
}

pub(crate) struct WatchHub {
    path: PathBuf,
    options: SqliteOptions,
    // The thread starts on the first watch; a database nobody watches pays
    // nothing.
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    active: Arc<AtomicUsize>,
}

impl WatchHub {
    pub(crate) fn new(path: PathBuf, options: SqliteOptions) -> Self {
        WatchHub {
            path,
            options,
            sender: Mutex::new(None),
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Wakes the thread after a commit of this process, if anything is watched.
    pub(crate) fn poke(&self) {
        if self.active.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Ok(guard) = self.sender.lock()
            && let Some(sender) = guard.as_ref()
        {
            let _ = sender.send(Message::Poke);
        }
    }

    /// Starts watching `key`, whose value at the registering commit was `value`.
    pub(crate) fn register(
        &self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        sender: oneshot::Sender<Result<()>>,
    ) {
        let mut guard = match self.sender.lock() {
            Ok(guard) => guard,
            Err(_) => {
                let _ = sender.send(Err(StoreError::Backend("watch hub poisoned".into())));
                return;
            }
        };
        if guard.is_none() {
            match self.start() {
                Ok(s) => *guard = Some(s),
                Err(e) => {
                    let _ = sender.send(Err(e));
                    return;
                }
            }
        }
        if let Some(s) = guard.as_ref() {
            self.active.fetch_add(1, Ordering::AcqRel);
            if let Err(mpsc::SendError(Message::Register { sender, .. })) =
                s.send(Message::Register { key, value, sender })
            {
                self.active.fetch_sub(1, Ordering::AcqRel);
                let _ = sender.send(Err(StoreError::Backend("watch thread stopped".into())));
            }
        }
    }

    fn start(&self) -> Result<mpsc::Sender<Message>> {
        let (sender, receiver) = mpsc::channel();
        let conn = open_connection(
            &self.path,
            self.options.busy_timeout,
            self.options.synchronous,
        )?;
        let poll = self.options.watch_poll;
        let active = self.active.clone();
        std::thread::Builder::new()
            .name("meridian-store-watch".into())
            .spawn(move || watch_loop(conn, receiver, poll, active))
            .map_err(|e| StoreError::Backend(format!("starting the watch thread: {e}")))?;
        Ok(sender)
    }
}

fn data_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA data_version", [], |row| row.get(0))
        .map_err(map_err)
}

fn watch_loop(
    conn: Connection,
    receiver: mpsc::Receiver<Message>,
    poll: Duration,
    active: Arc<AtomicUsize>,
) {
    let mut waiting: BTreeMap<Vec<u8>, Vec<Waiter>> = BTreeMap::new();
    let mut seen_version = data_version(&conn).unwrap_or(0);
    loop {
        let first = if waiting.is_empty() {
            match receiver.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        } else {
            match receiver.recv_timeout(poll) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        let mut must_check = false;
        for message in first.into_iter().chain(receiver.try_iter()) {
            match message {
                Message::Register { key, value, sender } => {
                    waiting.entry(key).or_default().push((value, sender));
                    // A change may have landed between the commit and now.
                    must_check = true;
                }
                Message::Poke => must_check = true,
            }
        }
        match data_version(&conn) {
            Ok(v) if v != seen_version => {
                seen_version = v;
                must_check = true;
            }
            Ok(_) => {}
            Err(e) => {
                fail_all(&mut waiting, &active, e);
                continue;
            }
        }
        if must_check {
            check(&conn, &mut waiting, &active);
        } else {
            drop_abandoned(&mut waiting, &active);
        }
    }
}

fn check(conn: &Connection, waiting: &mut BTreeMap<Vec<u8>, Vec<Waiter>>, active: &AtomicUsize) {
    let mut emptied = Vec::new();
    for (key, waiters) in waiting.iter_mut() {
        let current = match apply::get(conn, key) {
            Ok(v) => v,
            // A transient read failure: try again at the next poll.
            Err(_) => continue,
        };
        let mut kept = Vec::new();
        for (value, sender) in std::mem::take(waiters) {
            if sender.is_closed() {
                active.fetch_sub(1, Ordering::AcqRel);
            } else if value != current {
                active.fetch_sub(1, Ordering::AcqRel);
                // The waiter may have gone away meanwhile; nothing to do then.
                let _ = sender.send(Ok(()));
            } else {
                kept.push((value, sender));
            }
        }
        *waiters = kept;
        if waiters.is_empty() {
            emptied.push(key.clone());
        }
    }
    for key in emptied {
        waiting.remove(&key);
    }
}

fn drop_abandoned(waiting: &mut BTreeMap<Vec<u8>, Vec<Waiter>>, active: &AtomicUsize) {
    waiting.retain(|_, waiters| {
        let before = waiters.len();
        waiters.retain(|(_, sender)| !sender.is_closed());
        active.fetch_sub(before - waiters.len(), Ordering::AcqRel);
        !waiters.is_empty()
    });
}

fn fail_all(waiting: &mut BTreeMap<Vec<u8>, Vec<Waiter>>, active: &AtomicUsize, err: StoreError) {
    for (_, waiters) in std::mem::take(waiting) {
        for (_, sender) in waiters {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = sender.send(Err(err.clone()));
        }
    }
}
