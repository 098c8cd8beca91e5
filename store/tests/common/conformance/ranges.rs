//! Range reads: order, direction, limits, batched streaming.

use super::*;

/// Range reads return keys in order (or reverse order), honour limits and
/// `[begin, end)` bounds, stream correctly in batches smaller than the
/// range, stay inside a prefix, page by hand without gaps or repeats, and
/// return nothing for empty ranges.
pub async fn check_range_reads_are_ordered_and_paginated(db: &Database) {
    const N: i64 = 50;
    let space = fresh_space("range");
    let rows = space.subspace(&("r",));
    let key = |i: i64| rows.pack(&(i,));
    let value = |i: i64| format!("value-{i}").into_bytes();
    let keys: Vec<Vec<u8>> = (0..N).map(key).collect();
    let before = space.pack(&("q", 1));
    let after = space.pack(&("s", 1));
    db.run(|tx, _| {
        let keys = keys.clone();
        let (before, after) = (before.clone(), after.clone());
        async move {
            // Written out of order on purpose.
            for (i, k) in keys.iter().enumerate().rev() {
                tx.set(k, &value(i as i64))?;
            }
            tx.set(&before, b"before")?;
            tx.set(&after, b"after")?;
            Ok::<_, StoreError>(())
        }
    })
    .await
    .expect("seeding the range");

    let indices = |kvs: &[KeyValue]| -> Vec<i64> {
        kvs.iter()
            .map(|kv| {
                let (i,) = rows.unpack::<(i64,)>(&kv.key).expect("a row key");
                assert_eq!(kv.value, value(i), "the value read belongs to its key");
                i
            })
            .collect()
    };
    let up = |from: i64, to: i64| (from..to).collect::<Vec<_>>();
    let down = |from: i64, to: i64| (to..from).rev().collect::<Vec<_>>();
    let (begin, end) = rows.range();
    let whole = || RangeOption::new(begin.clone(), end.clone());

    let tx = db.begin().await.expect("begin");
    let read = |range: RangeOption| {
        let tx = tx.clone();
        async move { tx.get_range(range).await.expect("range read") }
    };
    assert_eq!(indices(&read(whole()).await), up(0, N), "forward");
    assert_eq!(
        indices(&read(whole().reverse(true)).await),
        down(N, 0),
        "reverse"
    );
    assert_eq!(indices(&read(whole().limit(10)).await), up(0, 10), "limit");
    assert_eq!(
        indices(&read(whole().limit(10).reverse(true)).await),
        down(N, N - 10),
        "reverse limit"
    );
    assert_eq!(
        indices(&read(whole().limit(N as usize + 10)).await),
        up(0, N),
        "a limit past the end"
    );
    assert_eq!(
        indices(&read(RangeOption::new(key(10), key(20))).await),
        up(10, 20),
        "begin inclusive, end exclusive"
    );
    assert_eq!(
        indices(&read(RangeOption::new(key(10), key(20)).reverse(true)).await),
        down(20, 10),
        "a bounded reverse read"
    );
    assert_eq!(
        indices(&read(RangeOption::prefix(rows.bytes())).await),
        up(0, N),
        "a prefix range excludes its neighbours"
    );
    let everything = read(RangeOption::prefix(space.bytes())).await;
    assert_eq!(everything.len(), N as usize + 2);
    assert_eq!(everything.first().map(|kv| &kv.key), Some(&before));
    assert_eq!(everything.last().map(|kv| &kv.key), Some(&after));

    // Streaming in batches of 7: 8 round trips for 50 keys.
    assert_eq!(indices(&collect_stream(&tx, whole(), 7).await), up(0, N));
    assert_eq!(
        indices(&collect_stream(&tx, whole().reverse(true), 7).await),
        down(N, 0)
    );
    assert_eq!(
        indices(&collect_stream(&tx, whole().limit(23), 7).await),
        up(0, 23)
    );
    assert_eq!(
        indices(&collect_stream(&tx, whole().limit(23).reverse(true), 7).await),
        down(N, N - 23)
    );
    assert_eq!(indices(&collect_stream(&tx, whole(), 1).await), up(0, N));
    assert_eq!(indices(&collect_stream(&tx, whole(), 50).await), up(0, N));

    // Paging by hand: continue after the last key of each page.
    let mut pages = Vec::new();
    let mut from = begin.clone();
    loop {
        let page = read(RangeOption::new(from.clone(), end.clone()).limit(8)).await;
        let Some(last) = page.last() else { break };
        from = last.key.clone();
        from.push(0);
        pages.push(indices(&page));
    }
    assert_eq!(pages.len(), 7, "50 keys in pages of 8");
    assert!(pages[..6].iter().all(|p| p.len() == 8));
    assert_eq!(pages.concat(), up(0, N), "pages neither skip nor repeat");
    // Paging backwards.
    let mut pages = Vec::new();
    let mut to = end.clone();
    loop {
        let page = read(
            RangeOption::new(begin.clone(), to.clone())
                .limit(8)
                .reverse(true),
        )
        .await;
        let Some(last) = page.last() else { break };
        to = last.key.clone();
        pages.push(indices(&page));
    }
    assert_eq!(pages.concat(), down(N, 0));

    // Empty ranges.
    let empty = space.subspace(&("empty",));
    assert!(read(RangeOption::prefix(empty.bytes())).await.is_empty());
    assert!(read(RangeOption::new(key(7), key(7))).await.is_empty());
    assert!(
        collect_stream(&tx, RangeOption::prefix(empty.bytes()), 3)
            .await
            .is_empty()
    );
    assert!(
        read(RangeOption::new(key(7), key(8)).limit(1).reverse(true))
            .await
            .len()
            == 1
    );
    tx.commit().await.expect("a read-only commit");
}
