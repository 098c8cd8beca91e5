//! The conformance suite (`common/conformance.rs`) on the SQLite backend: once
//! on a database file in a temporary directory (`sqlite:PATH`), once on a
//! private throw-away database (`sqlite::memory:`).

use crate::common;

use common::conformance;
use meridian_store::Database;

/// A database and whatever must outlive it.
struct Fixture {
    db: Database,
    _dir: Option<tempfile::TempDir>,
}

async fn on_file() -> Fixture {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite:{}", dir.path().join("store.db").display());
    let db = meridian_store::open(&url)
        .await
        .expect("opening a sqlite file");
    assert_eq!(db.backend_name(), "sqlite");
    Fixture {
        db,
        _dir: Some(dir),
    }
}

async fn in_memory() -> Fixture {
    let db = meridian_store::open("sqlite::memory:")
        .await
        .expect("opening sqlite::memory:");
    assert_eq!(db.backend_name(), "sqlite");
    Fixture { db, _dir: None }
}

macro_rules! conformance_tests {
    ($module:ident, $open:ident) => {
        conformance_tests!($module, $open, flavor = "multi_thread", worker_threads = 2);
    };
    ($module:ident, $open:ident, $($runtime:tt)*) => {
        mod $module {
            use super::*;

            macro_rules! check {
                ($name:ident, $check:ident) => {
                    #[tokio::test($($runtime)*)]
                    async fn $name() {
                        let fixture = $open().await;
                        // Spawned, so the check runs where servers run their
                        // handlers: on a runtime worker thread.
                        tokio::spawn(async move { conformance::$check(&fixture.db).await })
                            .await
                            .expect("the check runs to completion");
                    }
                };
            }

            for_each_check!(check);
        }
    };
}

conformance_tests!(file, on_file);
conformance_tests!(memory, in_memory);
// The simulator and most unit tests use a current-thread runtime.
conformance_tests!(file_on_current_thread, on_file, flavor = "current_thread");
