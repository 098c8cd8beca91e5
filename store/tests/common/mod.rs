//! Code shared by the store's integration tests.
//!
//! Each test file that needs it declares `mod common;`; a file uses only some
//! of the checks, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod conformance;

/// Calls `$check!(test_name, check_function)` once per conformance check, so
/// every backend's test file runs the same list.
#[allow(unused_macros)]
macro_rules! for_each_check {
    ($check:ident) => {
        $check!(
            concurrent_read_modify_write_increments_lose_no_update,
            check_concurrent_read_modify_write_loses_no_update
        );
        $check!(
            concurrent_atomic_adds_lose_no_update,
            check_concurrent_atomic_adds_lose_no_update
        );
        $check!(
            reads_inside_a_transaction_see_its_own_writes,
            check_reads_see_own_writes
        );
        $check!(
            get_many_reads_in_order_with_own_writes_and_conflicts,
            check_get_many_reads_in_order_with_own_writes_and_conflicts
        );
        $check!(
            range_reads_are_ordered_and_paginated,
            check_range_reads_are_ordered_and_paginated
        );
        $check!(
            versionstamps_increase_in_commit_order,
            check_versionstamps_increase_in_commit_order
        );
        $check!(
            a_watch_fires_after_another_transaction_commits_a_change,
            check_watch_fires_after_another_transaction_commits_a_change
        );
        $check!(
            a_watch_ignores_a_write_of_the_same_value,
            check_watch_ignores_a_write_of_the_same_value
        );
        $check!(
            a_watch_of_a_dropped_transaction_fails,
            check_watch_of_an_uncommitted_transaction_fails
        );
        $check!(
            an_oversize_key_is_refused_and_nothing_is_written,
            check_key_size_limit
        );
        $check!(
            an_oversize_value_is_refused_and_nothing_is_written,
            check_value_size_limit
        );
        $check!(
            an_oversize_transaction_is_refused_and_nothing_is_written,
            check_transaction_size_limit
        );
        $check!(
            a_transaction_older_than_five_seconds_is_refused_and_retried,
            check_transaction_age_limit
        );
        $check!(
            run_once_applies_at_most_once_per_marker,
            check_run_once_applies_at_most_once
        );
        $check!(
            unknown_commit_results_do_not_apply_a_marked_transaction_twice,
            check_unknown_commit_results_do_not_apply_twice
        );
        $check!(
            a_stale_read_fails_to_commit_and_run_retries_it,
            check_stale_read_conflicts
        );
        $check!(
            conflicts_are_retryable_and_limits_are_not,
            check_errors_classify_retryable
        );
    };
}
