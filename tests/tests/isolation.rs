//! Tenant isolation on the write path: whether another tenant stores the same bytes must not
//! show. `PutChunkAck.written` says "new to this tenant", and a chunk another tenant holds is
//! written, synced and acknowledged like a fresh one, so its ack comes no sooner.

use std::time::{Duration, Instant};

use strata_admin::client::Storage;
use strata_tests::*;

const CHUNK: usize = 4 << 20;
const ROUNDS: usize = 40;

/// Uploads one chunk as its own object and returns how long its PutChunks took (the ack of a
/// durable chunk) and the ack's `written`.
async fn timed_put(s: &mut Storage, key: &str, bytes: &[u8]) -> (Duration, bool) {
    let chunks = chunks_of(bytes, CHUNK);
    let created = create(s, "shared", key, bytes.len() as u64, manifest_of(&chunks))
        .await
        .expect("create");
    assert!(
        created.existing.is_empty() && created.bytes_present == 0,
        "{key}: CreateUpload told this tenant about chunks it never stored: {created:?}"
    );
    let t = Instant::now();
    let acks = put_raw(s, &created.session_id, chunks)
        .await
        .expect("put chunks");
    let took = t.elapsed();
    complete(s, &created.session_id, bytes)
        .await
        .expect("complete");
    assert_eq!(acks.len(), 1);
    (took, acks[0].written)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_timing_and_written_do_not_reveal_another_tenants_chunks() {
    let node = Node::start();
    let mut alice = node.storage_as(&node.new_tenant("alice").await).await;
    let mut bob = node.storage_as(&node.new_tenant("bob").await).await;

    // Alice stores ROUNDS chunks; Bob then sends the same bytes and fresh bytes, alternating
    // (so drift in the machine's speed lands on both sides alike).
    // Both sides' bytes are made up front, so neither is fresher in the client's caches.
    let held: Vec<Vec<u8>> = (0..ROUNDS).map(|i| data(CHUNK, 1000 + i as u64)).collect();
    let fresh_bytes: Vec<Vec<u8>> = (0..ROUNDS).map(|i| data(CHUNK, 5000 + i as u64)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, bytes) in held.iter().enumerate() {
        put(&mut alice, dir.path(), "shared", &format!("a{i}"), bytes).await;
    }
    let (mut theirs, mut fresh) = (Vec::new(), Vec::new());
    for (i, (bytes, new)) in held.iter().zip(&fresh_bytes).enumerate() {
        // Which goes first alternates, and each put starts on a settled node (as a prober's
        // would): what one leaves behind (a journal commit) lands on neither side.
        for theirs_now in [i % 2 == 0, i % 2 != 0] {
            tokio::time::sleep(Duration::from_millis(30)).await;
            if theirs_now {
                let (t, written) = timed_put(&mut bob, &format!("theirs{i}"), bytes).await;
                assert!(
                    written,
                    "round {i}: alice's bytes acked as not written to bob"
                );
                theirs.push(t);
            } else {
                let (t, written) = timed_put(&mut bob, &format!("fresh{i}"), new).await;
                assert!(written, "round {i}: fresh bytes acked as not written");
                fresh.push(t);
            }
        }
    }
    let (m_theirs, m_fresh) = (median(theirs.clone()), median(fresh.clone()));
    let ratio = m_theirs.as_secs_f64() / m_fresh.as_secs_f64();
    println!(
        "median ack: another tenant's bytes {m_theirs:.2?}, fresh bytes {m_fresh:.2?} (ratio {ratio:.3})\n  theirs {theirs:?}\n  fresh  {fresh:?}"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "median ack for another tenant's bytes is {ratio:.3} of fresh bytes' ({m_theirs:.2?} vs {m_fresh:.2?}): over 10% apart"
    );

    // Bob's own re-send of a chunk he now holds is "not new" to him, as before.
    let (_, written) = {
        let bytes = &held[0];
        let chunks = chunks_of(bytes, CHUNK);
        let created = create(
            &mut bob,
            "shared",
            "again",
            bytes.len() as u64,
            manifest_of(&chunks),
        )
        .await
        .expect("create");
        assert_eq!(
            created.existing,
            vec![0],
            "bob's own chunk is listed as existing"
        );
        let acks = put_raw(&mut bob, &created.session_id, chunks)
            .await
            .expect("put");
        (acks.len(), acks[0].written)
    };
    assert!(!written, "a chunk bob holds is acked as written again");
}
