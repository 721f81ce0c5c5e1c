//! No corrupt byte is served; crash leftovers are cleaned up.

use futures::StreamExt;
use strata_proto::v1 as pb;
use strata_tests::*;

fn chunk_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(data_dir.join("chunks"))
        .expect("chunks dir")
        .flatten()
    {
        if sub.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for f in std::fs::read_dir(sub.path()).expect("subdir").flatten() {
            out.push(f.path());
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_is_never_served() {
    let node = Node::start();
    let mut s = node.storage().await;
    let bytes = data(12 * 1024 * 1024, 1);
    put(&mut s, node.root.path(), "integrity", "file", &bytes).await;
    // Flip one bit in the chunk that holds bytes 4..8 MiB.
    let second = &bytes[4 << 20..8 << 20];
    let victim = node
        .data_dir
        .join("chunks")
        .join(&blake3::hash(second).to_hex()[..2])
        .join(blake3::hash(second).to_hex().as_str());
    assert!(chunk_files(&node.data_dir).contains(&victim));
    let mut raw = std::fs::read(&victim).expect("read chunk");
    raw[12345] ^= 0x10;
    std::fs::write(&victim, raw).expect("corrupt chunk");

    let mut stream = s
        .get(pb::GetRequest {
            bucket: "integrity".into(),
            key: "file".into(),
            ..Default::default()
        })
        .await
        .expect("get starts")
        .into_inner();
    let mut got = Vec::new();
    let mut error = None;
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(m) => got.extend_from_slice(&m.data),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let error = error.expect("the download must fail");
    assert_eq!(error.code(), tonic::Code::DataLoss, "{error:?}");
    assert!(
        got.len() <= 4 << 20,
        "bytes past the corrupt chunk's start were served"
    );
    assert!(
        got == bytes[..got.len()],
        "served bytes differ from the original"
    );
    assert!(!victim.exists(), "the corrupt chunk was not quarantined");
    assert!(
        node.data_dir
            .join("chunks/.quarantine")
            .join(blake3::hash(second).to_hex().as_str())
            .exists()
    );

    // A range that avoids the corrupt chunk still reads.
    assert!(
        get(&mut s, "integrity", "file", 0, 0, 4 << 20)
            .await
            .expect("first chunk")
            == bytes[..4 << 20]
    );
    let (_, metrics) = http_get(&node.metrics).await;
    assert!(
        metrics.contains("strata_chunk_corrupt_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_chunk_files_are_collected_at_start() {
    let mut node = Node::start();
    let mut s = node.storage().await;
    let bytes = data(5 * 1024 * 1024, 2);
    put(&mut s, node.root.path(), "integrity", "kept", &bytes).await;
    let kept = chunk_files(&node.data_dir);
    assert_eq!(kept.len(), 2);

    // A chunk written durably whose AddChunk never happened (a crash in between), long ago.
    node.kill();
    let orphan = b"orphan chunk bytes".to_vec();
    let id = blake3::hash(&orphan).to_hex();
    let dir = node.data_dir.join("chunks").join(&id[..2]);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join(id.as_str()), &orphan).expect("orphan");
    // Written an hour ago: younger files are spared (a replica may precede its AddChunk).
    let f = std::fs::File::options()
        .write(true)
        .open(dir.join(id.as_str()))
        .expect("open orphan");
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .expect("set mtime");
    drop(f);
    node.restart();

    let path = dir.join(id.as_str());
    wait_until(15, "the orphan chunk to be deleted", || {
        let path = path.clone();
        async move { !path.exists() }
    })
    .await;
    assert_eq!(
        chunk_files(&node.data_dir),
        kept,
        "referenced chunks were touched"
    );
    let mut s = node.storage().await;
    assert!(
        get(&mut s, "integrity", "kept", 0, 0, 0)
            .await
            .expect("get")
            == bytes
    );
}
