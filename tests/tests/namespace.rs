//! Versions, trash and listing.

use std::collections::BTreeSet;

use strata_proto::v1 as pb;
use strata_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_trash_and_purge() {
    let node = Node::start_with(&[
        ("STRATA_TRASH_RETENTION", "2s"),
        ("STRATA_JANITOR_INTERVAL", "200ms"),
        ("STRATA_GC_GRACE", "1s"),
    ]);
    let mut s = node.storage().await;
    let v1 = data(5 * 1024 * 1024, 1);
    let v2 = data(3 * 1024 * 1024, 2);
    let a = put(&mut s, node.root.path(), "docs", "report.pdf", &v1)
        .await
        .info;
    let b = put(&mut s, node.root.path(), "docs", "report.pdf", &v2)
        .await
        .info;
    assert!(b.version > a.version);
    let versions = s
        .list_versions(pb::ListVersionsRequest {
            bucket: "docs".into(),
            key: "report.pdf".into(),
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![b.version, a.version],
        "newest first"
    );
    assert!(
        get(&mut s, "docs", "report.pdf", 0, 0, 0)
            .await
            .expect("current")
            == v2
    );
    assert!(
        get(&mut s, "docs", "report.pdf", a.version, 0, 0)
            .await
            .expect("older")
            == v1
    );

    let del = s
        .delete(pb::DeleteRequest {
            bucket: "docs".into(),
            key: "report.pdf".into(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert!(del.purge_at_ms > 0);
    assert_eq!(
        code(stat(&mut s, "docs", "report.pdf").await),
        Code::NotFound
    );
    let live = s
        .list(pb::ListRequest {
            bucket: "docs".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(live.objects.is_empty());
    let trash = s
        .list(pb::ListRequest {
            bucket: "docs".into(),
            trash: true,
            ..Default::default()
        })
        .await
        .expect("trash")
        .into_inner();
    assert_eq!(trash.objects.len(), 1);
    assert!(trash.objects[0].deleted_at_ms > 0);
    assert_eq!(
        code(
            s.delete(pb::DeleteRequest {
                bucket: "docs".into(),
                key: "report.pdf".into()
            })
            .await
        ),
        Code::NotFound
    );

    let back = s
        .undelete(pb::UndeleteRequest {
            bucket: "docs".into(),
            key: "report.pdf".into(),
        })
        .await
        .expect("undelete")
        .into_inner();
    assert_eq!(back.version, b.version);
    assert!(
        get(&mut s, "docs", "report.pdf", 0, 0, 0)
            .await
            .expect("after undelete")
            == v2
    );
    assert_eq!(
        code(
            s.undelete(pb::UndeleteRequest {
                bucket: "docs".into(),
                key: "report.pdf".into()
            })
            .await
        ),
        Code::FailedPrecondition
    );

    // Deleted again, it is purged after the retention period, with its chunks.
    assert!(node.status().await.chunk_count > 0);
    s.delete(pb::DeleteRequest {
        bucket: "docs".into(),
        key: "report.pdf".into(),
    })
    .await
    .expect("delete");
    wait_until(20, "the trashed key to be purged", || {
        let mut s = s.clone();
        async move {
            s.list_versions(pb::ListVersionsRequest {
                bucket: "docs".into(),
                key: "report.pdf".into(),
            })
            .await
            .is_err()
        }
    })
    .await;
    assert_eq!(
        code(
            s.undelete(pb::UndeleteRequest {
                bucket: "docs".into(),
                key: "report.pdf".into()
            })
            .await
        ),
        Code::NotFound
    );
    wait_until(20, "the purged chunks to be collected", || async {
        node.status().await.chunk_count == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_with_folders_and_pages() {
    let node = Node::start();
    let mut s = node.storage().await;
    let mut keys = BTreeSet::new();
    for d in ["a", "b", "c"] {
        for i in 0..7 {
            keys.insert(format!("{d}/file{i}"));
        }
        keys.insert(format!("{d}/sub/deep"));
    }
    for top in ["top1", "top2", "zz"] {
        keys.insert(top.to_owned());
    }
    for k in &keys {
        put(&mut s, node.root.path(), "tree", k, k.as_bytes()).await;
    }
    let list =
        |prefix: &str, delimiter: &str, page_size: u32, page_token: String| pb::ListRequest {
            bucket: "tree".into(),
            prefix: prefix.into(),
            delimiter: delimiter.into(),
            page_size,
            page_token,
            trash: false,
            stale: false,
        };

    // Folders at the top.
    let top = s
        .list(list("", "/", 0, String::new()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(top.folders, vec!["a/", "b/", "c/"]);
    assert_eq!(
        top.objects
            .iter()
            .map(|o| o.key.as_str())
            .collect::<Vec<_>>(),
        vec!["top1", "top2", "zz"]
    );
    assert!(top.next_page_token.is_empty());

    // Inside a folder.
    let a = s
        .list(list("a/", "/", 0, String::new()))
        .await
        .expect("list a")
        .into_inner();
    assert_eq!(a.folders, vec!["a/sub/"]);
    assert_eq!(a.objects.len(), 7);

    // Pages of 4, with and without folders: every name once, in order.
    for (delim, expected) in [
        ("", keys.iter().cloned().collect::<Vec<_>>()),
        (
            "/",
            vec!["a/", "b/", "c/", "top1", "top2", "zz"]
                .into_iter()
                .map(String::from)
                .collect(),
        ),
    ] {
        let mut seen = Vec::new();
        let mut token = String::new();
        for _ in 0..100 {
            let page = s
                .list(list("", delim, 4, token.clone()))
                .await
                .expect("page")
                .into_inner();
            assert!(page.folders.len() + page.objects.len() <= 4);
            seen.extend(page.folders);
            seen.extend(page.objects.into_iter().map(|o| o.key));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        seen.sort();
        assert_eq!(seen, expected, "delimiter {delim:?}");
    }

    assert_eq!(
        code(s.list(list("", "/", 5000, String::new())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(s.list(list("", "/", 0, "garbage".into())).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            s.list(pb::ListRequest {
                bucket: "nope".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
}
