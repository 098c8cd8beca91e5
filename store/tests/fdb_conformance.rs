//! The conformance suite (`common/conformance.rs`) on a real FoundationDB
//! cluster.
//!
//! Runs only with the cargo feature `fdb` and only where `FDB_CLUSTER_FILE`
//! names a cluster file; elsewhere every test says it skipped and passes.
//! Every check works in its own fresh subspace, so the suite may run against
//! a long-lived cluster and must never touch data outside those subspaces.
#![cfg(feature = "fdb")]

use crate::common;

use common::conformance;
use meridian_store::Database;

/// Opens the cluster named by `FDB_CLUSTER_FILE`, or `None` when it is unset.
async fn cluster() -> Option<Database> {
    let Ok(cluster_file) = std::env::var("FDB_CLUSTER_FILE") else {
        println!("FDB_CLUSTER_FILE is not set: FoundationDB conformance skipped");
        return None;
    };
    let db = meridian_store::open(&format!("fdb:{cluster_file}"))
        .await
        .expect("opening the FoundationDB cluster");
    assert_eq!(db.backend_name(), "fdb");
    Some(db)
}

macro_rules! check {
    ($name:ident, $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(db) = cluster().await else {
                return;
            };
            conformance::$check(&db).await;
        }
    };
}

for_each_check!(check);
