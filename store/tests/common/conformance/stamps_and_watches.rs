//! Versionstamps in commit order, and watches.

use super::*;

/// Commits report strictly increasing versionstamps; versionstamped keys
/// sort in commit order even when the transactions began in the other
/// order; a versionstamped value holds the stamp of its commit.
pub async fn check_versionstamps_increase_in_commit_order(db: &Database) {
    const COMMITS: u32 = 20;
    let space = fresh_space("versionstamps");
    let log = space.subspace(&("log",));
    let template = log.pack_with_versionstamp(&(Versionstamp::incomplete(0),));

    let mut stamps = Vec::new();
    for i in 0..COMMITS {
        let (_, info) = db
            .run_with_info(|tx, _| {
                let template = template.clone();
                async move { tx.set_versionstamped_key(&template, &i.to_le_bytes()) }
            })
            .await
            .expect("a versionstamped commit");
        stamps.push(
            info.versionstamp
                .expect("a versionstamped commit reports its stamp"),
        );
    }
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "commit stamps strictly increase: {stamps:?}"
    );
    let logged = read_space(db, &log).await;
    assert_eq!(
        logged.len(),
        COMMITS as usize,
        "every stamped key is distinct"
    );
    for (i, kv) in logged.iter().enumerate() {
        assert_eq!(
            kv.value,
            (i as u32).to_le_bytes(),
            "keys sort in commit order"
        );
        let (stamp,) = log
            .unpack::<(Versionstamp,)>(&kv.key)
            .expect("a versionstamped key unpacks");
        assert!(stamp.is_complete());
        assert_eq!(
            stamp.transaction_version(),
            &stamps[i][..],
            "the key holds its commit's stamp"
        );
        assert_eq!(stamp.user_version(), 0);
    }

    // Began first, committed last: sorts last.
    let order = space.subspace(&("order",));
    let template = order.pack_with_versionstamp(&(Versionstamp::incomplete(0),));
    let first = db.begin().await.expect("begin");
    let second = db.begin().await.expect("begin");
    first
        .set_versionstamped_key(&template, b"began first")
        .expect("stamped set");
    second
        .set_versionstamped_key(&template, b"began second")
        .expect("stamped set");
    let second_info = second.commit().await.expect("commit");
    let first_info = first.commit().await.expect("commit");
    let (second_stamp, first_stamp) = (
        second_info.versionstamp.expect("stamp"),
        first_info.versionstamp.expect("stamp"),
    );
    assert!(
        second_stamp < first_stamp,
        "the later commit has the larger stamp"
    );
    assert!(*stamps.last().expect("stamps") < second_stamp);
    let values: Vec<Vec<u8>> = read_space(db, &order)
        .await
        .into_iter()
        .map(|kv| kv.value)
        .collect();
    assert_eq!(
        values,
        vec![b"began second".to_vec(), b"began first".to_vec()]
    );

    // A versionstamped value.
    let stamped_value_key = space.pack(&("value",));
    let mut value_template = b"v:".to_vec();
    value_template.extend_from_slice(&[0xff; 10]);
    value_template.extend_from_slice(&2u32.to_le_bytes());
    let (_, info) = db
        .run_with_info(|tx, _| {
            let (key, value) = (stamped_value_key.clone(), value_template.clone());
            async move { tx.set_versionstamped_value(&key, &value) }
        })
        .await
        .expect("a versionstamped value commit");
    let stamp = info.versionstamp.expect("stamp");
    assert!(first_stamp < stamp);
    let stored = db
        .run(|tx, _| {
            let key = stamped_value_key.clone();
            async move { tx.get(&key).await }
        })
        .await
        .expect("get")
        .expect("the stamped value exists");
    let mut expected = b"v:".to_vec();
    expected.extend_from_slice(&stamp);
    assert_eq!(stored, expected);

    // An explicitly requested stamp on a plain write.
    let (_, info) = db
        .run_with_info(|tx, _| {
            let key = space.pack(&("plain",));
            async move {
                tx.request_versionstamp();
                tx.set(&key, b"x")
            }
        })
        .await
        .expect("a plain commit");
    assert!(stamp < info.versionstamp.expect("a requested stamp is reported"));
}

/// A watch registered by a committed transaction resolves once another
/// transaction changes the key, and once another transaction creates a
/// key that was absent.
pub async fn check_watch_fires_after_another_transaction_commits_a_change(db: &Database) {
    let space = fresh_space("watch-fires");
    let present = space.pack(&("present",));
    let absent = space.pack(&("absent",));
    set(db, &present, b"v1").await;

    let tx = db.begin().await.expect("begin");
    let on_present = tx.watch(&present).expect("watch");
    let on_absent = tx.watch(&absent).expect("watch");
    tx.commit().await.expect("committing the watches");

    set(db, &present, b"v2").await;
    tokio::time::timeout(EVENT_GUARD, on_present)
        .await
        .expect("the watch fires after the change is committed")
        .expect("a fired watch reports success");
    set(db, &absent, b"created").await;
    tokio::time::timeout(EVENT_GUARD, on_absent)
        .await
        .expect("the watch fires after the key is created")
        .expect("a fired watch reports success");
}

/// Rewriting a watched key with the value it already has does not fire the
/// watch; a real change afterwards does. (Observed without waiting: a second
/// watch, on a key changed after the same-value write, fires first.)
pub async fn check_watch_ignores_a_write_of_the_same_value(db: &Database) {
    let space = fresh_space("watch-same-value");
    let same = space.pack(&("same",));
    let probe = space.pack(&("probe",));
    set(db, &same, b"v1").await;
    set(db, &probe, b"v1").await;

    let tx = db.begin().await.expect("begin");
    let mut on_same = tx.watch(&same).expect("watch");
    let on_probe = tx.watch(&probe).expect("watch");
    tx.commit().await.expect("committing the watches");

    set(db, &same, b"v1").await;
    set(db, &probe, b"v2").await;
    tokio::time::timeout(EVENT_GUARD, on_probe)
        .await
        .expect("the probe watch fires")
        .expect("a fired watch reports success");
    assert!(
        (&mut on_same).now_or_never().is_none(),
        "a write of the same value does not fire the watch"
    );
    set(db, &same, b"v3").await;
    tokio::time::timeout(EVENT_GUARD, on_same)
        .await
        .expect("the watch fires after a real change")
        .expect("a fired watch reports success");
}

/// A watch whose transaction is dropped without committing resolves with an
/// error, and the transaction's writes are not applied.
pub async fn check_watch_of_an_uncommitted_transaction_fails(db: &Database) {
    let space = fresh_space("watch-dropped");
    let key = space.pack(&("k",));
    let tx = db.begin().await.expect("begin");
    let watch = tx.watch(&key).expect("watch");
    tx.set(&key, b"never committed").expect("set");
    drop(tx);
    let outcome = tokio::time::timeout(EVENT_GUARD, watch)
        .await
        .expect("the watch of a dropped transaction resolves");
    assert!(
        outcome.is_err(),
        "it resolves with an error, got {outcome:?}"
    );
    assert!(read_space(db, &space).await.is_empty());
}
