//! The conformance suite (`common/conformance.rs`) on the SQLite backend: once
//! on a database file in a temporary directory (`sqlite:PATH`), once on a
//! private throw-away database (`sqlite::memory:`).

mod common;

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

            check!(
                concurrent_read_modify_write_increments_lose_no_update,
                check_concurrent_read_modify_write_loses_no_update
            );
            check!(
                concurrent_atomic_adds_lose_no_update,
                check_concurrent_atomic_adds_lose_no_update
            );
            check!(
                reads_inside_a_transaction_see_its_own_writes,
                check_reads_see_own_writes
            );
            check!(
                range_reads_are_ordered_and_paginated,
                check_range_reads_are_ordered_and_paginated
            );
            check!(
                versionstamps_increase_in_commit_order,
                check_versionstamps_increase_in_commit_order
            );
            check!(
                a_watch_fires_after_another_transaction_commits_a_change,
                check_watch_fires_after_another_transaction_commits_a_change
            );
            check!(
                a_watch_ignores_a_write_of_the_same_value,
                check_watch_ignores_a_write_of_the_same_value
            );
            check!(
                a_watch_of_a_dropped_transaction_fails,
                check_watch_of_an_uncommitted_transaction_fails
            );
            check!(
                an_oversize_key_is_refused_and_nothing_is_written,
                check_key_size_limit
            );
            check!(
                an_oversize_value_is_refused_and_nothing_is_written,
                check_value_size_limit
            );
            check!(
                an_oversize_transaction_is_refused_and_nothing_is_written,
                check_transaction_size_limit
            );
            check!(
                a_transaction_older_than_five_seconds_is_refused_and_retried,
                check_transaction_age_limit
            );
            check!(
                run_once_applies_at_most_once_per_marker,
                check_run_once_applies_at_most_once
            );
            check!(
                unknown_commit_results_do_not_apply_a_marked_transaction_twice,
                check_unknown_commit_results_do_not_apply_twice
            );
            check!(
                a_stale_read_fails_to_commit_and_run_retries_it,
                check_stale_read_conflicts
            );
            check!(
                conflicts_are_retryable_and_limits_are_not,
                check_errors_classify_retryable
            );
        }
    };
}

conformance_tests!(file, on_file);
conformance_tests!(memory, in_memory);
// The simulator and most unit tests use a current-thread runtime.
conformance_tests!(file_on_current_thread, on_file, flavor = "current_thread");
