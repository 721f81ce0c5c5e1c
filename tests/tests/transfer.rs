//! Uploads and downloads through a real node: sizes from 0 bytes to 100+ MiB, byte for byte,
//! ranges, chunk shapes, dedup.

use strata_tests::*;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_of_many_sizes() {
    let node = Node::start();
    let mut s = node.storage().await;
    let sizes = [
        0,
        1,
        1023,
        1024,
        4 * MIB - 1,
        4 * MIB,
        4 * MIB + 1,
        10 * MIB + 7,
    ];
    for (i, size) in sizes.iter().enumerate() {
        let bytes = data(*size, i as u64);
        let key = format!("sizes/{size}");
        let r = put(&mut s, node.root.path(), "bucket", &key, &bytes).await;
        assert_eq!(r.info.size, *size as u64);
        assert_eq!(r.info.file_hash.as_ref(), blake3::hash(&bytes).as_bytes());
        let back = get(&mut s, "bucket", &key, 0, 0, 0).await.expect("get");
        assert!(back == bytes, "size {size} differs after the round trip");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_of_a_100_mib_file_and_its_ranges() {
    let node = Node::start();
    let mut s = node.storage().await;
    let size = 100 * MIB + 13;
    let bytes = data(size, 99);
    let r = put(&mut s, node.root.path(), "big", "file.bin", &bytes).await;
    assert_eq!(r.info.chunk_count, 26);
    let back = get(&mut s, "big", "file.bin", 0, 0, 0).await.expect("get");
    assert!(back == bytes, "100 MiB file differs after the round trip");
    let c = 4 * MIB as u64;
    for (off, len) in [
        (0, 1),
        (c - 1, 2),
        (c, c),
        (5, 3 * c + 17),
        (size as u64 - 10, 10),
        (size as u64 - 1, 0),
        (size as u64, 0),
    ] {
        let got = get(&mut s, "big", "file.bin", 0, off, len)
            .await
            .expect("range");
        let end = if len == 0 { size } else { (off + len) as usize };
        assert!(got == bytes[off as usize..end], "range {off}+{len} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uneven_chunks_and_uploads_without_manifest() {
    let node = Node::start();
    let mut s = node.storage().await;
    // Chunks of 3,000,000 bytes: not a power of two, so the node hashes the bytes to check the
    // whole-file BLAKE3 (the slow path).
    let bytes = data(7_654_321, 5);
    let chunks = chunks_of(&bytes, 3_000_000);
    let up = create(
        &mut s,
        "odd",
        "shape",
        bytes.len() as u64,
        manifest_of(&chunks),
    )
    .await
    .expect("create");
    put_raw(&mut s, &up.session_id, chunks).await.expect("put");
    complete(&mut s, &up.session_id, &bytes)
        .await
        .expect("complete");
    assert!(get(&mut s, "odd", "shape", 0, 0, 0).await.expect("get") == bytes);

    // No manifest: chunks at any offsets, sent out of order over two streams.
    let chunks = chunks_of(&bytes, 1 << 20);
    let up = create(&mut s, "odd", "nomanifest", bytes.len() as u64, vec![])
        .await
        .expect("create");
    let (even, odd): (Vec<_>, Vec<_>) = chunks.into_iter().partition(|c| (c.0 >> 20) % 2 == 0);
    put_raw(&mut s, &up.session_id, odd).await.expect("put odd");
    put_raw(&mut s, &up.session_id, even)
        .await
        .expect("put even");
    complete(&mut s, &up.session_id, &bytes)
        .await
        .expect("complete");
    assert!(
        get(&mut s, "odd", "nomanifest", 0, 0, 0)
            .await
            .expect("get")
            == bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_upload_of_the_same_file_sends_no_chunk_bytes() {
    let node = Node::start();
    let mut s = node.storage().await;
    let bytes = data(20 * MIB + 5, 7);
    let first = put(&mut s, node.root.path(), "dedup", "one", &bytes).await;
    assert_eq!(first.sent_bytes, bytes.len() as u64);
    let chunks_before = node.status().await.chunk_count;
    let second = put(&mut s, node.root.path(), "dedup", "two", &bytes).await;
    assert_eq!(second.sent_bytes, 0, "the second upload sent chunk bytes");
    assert_eq!(second.skipped_bytes, bytes.len() as u64);
    assert_eq!(node.status().await.chunk_count, chunks_before);
    assert!(get(&mut s, "dedup", "two", 0, 0, 0).await.expect("get") == bytes);

    // Dedup is per tenant: another tenant sends everything and learns nothing.
    let other = node.new_tenant("other").await;
    let mut s2 = node.storage_as(&other).await;
    let third = put(&mut s2, node.root.path(), "dedup", "three", &bytes).await;
    assert_eq!(
        third.sent_bytes,
        bytes.len() as u64,
        "dedup leaked across tenants"
    );
}
