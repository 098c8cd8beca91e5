//! The conformance suite (`common/conformance`) on the in-memory backend
//! (`memory:`), on a multi-threaded runtime and on the current-thread
//! runtime a simulation uses.

use crate::common;

use common::conformance;
use meridian_store::Database;

async fn in_memory() -> Database {
    let db = meridian_store::open("memory:")
        .await
        .expect("opening memory:");
    assert_eq!(db.backend_name(), "memory");
    db
}

macro_rules! conformance_tests {
    ($module:ident, $($runtime:tt)*) => {
        mod $module {
            use super::*;

            macro_rules! check {
                ($name:ident, $check:ident) => {
                    #[tokio::test($($runtime)*)]
                    async fn $name() {
                        let db = in_memory().await;
                        tokio::spawn(async move { conformance::$check(&db).await })
                            .await
                            .expect("the check runs to completion");
                    }
                };
            }

            for_each_check!(check);
        }
    };
}

conformance_tests!(multi_thread, flavor = "multi_thread", worker_threads = 2);
conformance_tests!(current_thread, flavor = "current_thread");
