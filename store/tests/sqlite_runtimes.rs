//! The store works from every place tokio can run a future: worker threads,
//! the thread in `block_on`, a `LocalSet`, a current-thread runtime.

use meridian_store::StoreError;

async fn write_then_read(db: &meridian_store::Database, key: &'static [u8]) -> Option<Vec<u8>> {
    db.run(|tx, _| async move {
        tx.set(key, b"value")?;
        tx.get(key).await
    })
    .await
    .map_err(|e: StoreError| e)
    .expect("transaction")
}

#[test]
fn transactions_work_inside_a_local_set_on_a_multi_thread_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    runtime.block_on(local.run_until(async {
        let db = meridian_store::open("sqlite::memory:").await.expect("open");
        let in_local_task = tokio::task::spawn_local({
            let db = db.clone();
            async move { write_then_read(&db, b"local").await }
        })
        .await
        .expect("local task");
        assert_eq!(in_local_task.as_deref(), Some(&b"value"[..]));
        assert_eq!(
            write_then_read(&db, b"block_on").await.as_deref(),
            Some(&b"value"[..])
        );
        let on_worker = tokio::spawn(async move { write_then_read(&db, b"worker").await })
            .await
            .expect("worker task");
        assert_eq!(on_worker.as_deref(), Some(&b"value"[..]));
    }));
}

#[test]
fn transactions_work_on_a_current_thread_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let db = meridian_store::open("sqlite::memory:").await.expect("open");
        assert_eq!(
            write_then_read(&db, b"k").await.as_deref(),
            Some(&b"value"[..])
        );
    });
}
