//! A full disk or a read-only data directory: a clear error at the call, and the node stays up.
//! The data directory is a small tmpfs this test mounts (the suite runs as root; a test that
//! cannot mount fails, it does not skip).

use std::path::{Path, PathBuf};
use std::process::Command;

use strata_proto::v1 as pb;
use strata_tests::*;
use tonic::Code;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (these tests need root): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_owned())
    }

    fn remount(&self, mode: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount {mode} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_resource_exhausted_and_the_node_stays_up() {
    let root = tempfile::Builder::new()
        .prefix("strata-test-")
        .tempdir()
        .expect("tempdir");
    let mount = Mount::tmpfs(&root.path().join("mnt"), "40m");
    let work = tempfile::tempdir().expect("work dir");
    let mut node = Node::start_in(
        root,
        mount.0.join("data"),
        &[
            ("STRATA_JANITOR_INTERVAL", "200ms"),
            ("STRATA_GC_GRACE", "1s"),
        ],
    );
    let mut s = node.storage().await;
    let small = data(10_000, 1);
    put(&mut s, work.path(), "full", "small", &small).await;

    let big = data(64 * 1024 * 1024, 2);
    let path = write_file(work.path(), "big", &big);
    let err = strata_admin::transfer::upload(
        &mut s,
        &path,
        "full",
        "big",
        "",
        4 << 20,
        std::sync::Arc::new(strata_admin::transfer::NoProgress),
    )
    .await
    .expect_err("64 MiB cannot fit in 40 MiB");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("ResourceExhausted") && msg.contains("full"),
        "unexpected error: {msg}"
    );

    assert!(node.is_running(), "the node died on a full disk");
    assert!(
        get(&mut s, "full", "small", 0, 0, 0)
            .await
            .expect("read while full")
            == small
    );
    assert_eq!(code(stat(&mut s, "full", "big").await), Code::NotFound);

    // Aborting the failed upload frees its chunks; then writes work again.
    let sessions = node.status().await.open_sessions;
    assert_eq!(sessions, 1);
    let plan = strata_admin::transfer::plan(&path, 4 << 20, &strata_admin::transfer::NoProgress)
        .expect("plan");
    let manifest = plan
        .chunks
        .iter()
        .map(|(id, len)| pb::ChunkRef {
            id: id.to_vec().into(),
            len: *len,
        })
        .collect();
    let up = s
        .create_upload(pb::CreateUploadRequest {
            bucket: "full".into(),
            key: "big".into(),
            size: plan.size,
            manifest,
            content_type: String::new(),
        })
        .await
        .expect("resume the failed session")
        .into_inner();
    assert!(up.resumed);
    s.abort_upload(pb::AbortUploadRequest {
        session_id: up.session_id,
    })
    .await
    .expect("abort");
    wait_until(
        20,
        "the aborted upload's chunks to be collected",
        || async { node.status().await.chunk_count == 1 },
    )
    .await;
    put(&mut s, work.path(), "full", "after", &data(5_000_000, 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_data_dir_is_a_clear_error_and_the_node_stays_up() {
    // Linux refuses to remount a filesystem read-only while files on it are open for writing
    // (the metadata store's are), so the chunk store, the bulk of the data directory, gets its
    // own filesystem, which goes read-only under the running node.
    let root = tempfile::Builder::new()
        .prefix("strata-test-")
        .tempdir()
        .expect("tempdir");
    let data_dir = root.path().join("data");
    let mount = Mount::tmpfs(&data_dir.join("chunks"), "64m");
    let work = tempfile::tempdir().expect("work dir");
    let mut node = Node::start_in(root, data_dir, &[]);
    let mut s = node.storage().await;
    let first = data(100_000, 1);
    put(&mut s, work.path(), "rodir", "first", &first).await;

    mount.remount("ro");
    let path = write_file(work.path(), "second", &data(3_000_000, 2));
    let err = strata_admin::transfer::upload(
        &mut s,
        &path,
        "rodir",
        "second",
        "",
        4 << 20,
        std::sync::Arc::new(strata_admin::transfer::NoProgress),
    )
    .await
    .expect_err("read-only data dir");
    let msg = format!("{err:#}");
    assert!(msg.contains("read-only"), "unexpected error: {msg}");
    assert!(node.is_running(), "the node died on a read-only data dir");
    assert!(
        get(&mut s, "rodir", "first", 0, 0, 0)
            .await
            .expect("reads still work")
            == first
    );
    node.status().await;
}
