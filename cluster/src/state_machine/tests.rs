//! State machine tests: scenarios, and a property test that runs random command sequences and
//! checks determinism and the reference-count invariants after every step.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::query::ListQuery;

fn sm() -> (tempfile::TempDir, StateMachine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sm = StateMachine::open(&dir.path().join("meta")).expect("open");
    (dir, sm)
}

fn chunk_bytes(i: u8) -> Vec<u8> {
    vec![i; 100 + i as usize]
}

fn entry(i: u8) -> ManifestEntry {
    let b = chunk_bytes(i);
    ManifestEntry {
        id: ChunkId::of(&b),
        len: b.len() as u32,
    }
}

fn sid(n: u8) -> SessionId {
    SessionId::from_bytes([n; 16])
}

fn bucket() -> BucketName {
    BucketName::new("bucket").expect("bucket")
}

fn key(n: u8) -> ObjectKey {
    ObjectKey::new(&format!("dir/key{n}")).expect("key")
}

fn open(s: SessionId, tenant: u64, k: u8, chunks: &[u8]) -> Command {
    let manifest: Vec<ManifestEntry> = chunks.iter().map(|c| entry(*c)).collect();
    Command::OpenSession {
        session: s,
        tenant: TenantId(tenant),
        bucket: bucket(),
        key: key(k),
        size: manifest.iter().map(|e| e.len as u64).sum(),
        manifest: Some(manifest),
        content_type: String::new(),
        now_ms: 1,
    }
}

fn add_all(sm: &StateMachine, s: SessionId, tenant: u64, chunks: &[u8]) {
    let mut offset = 0;
    for c in chunks {
        let e = entry(*c);
        let r = sm.apply(&Command::AddChunk {
            session: s,
            tenant: TenantId(tenant),
            offset,
            id: e.id,
            len: e.len,
            cv: None,
            now_ms: 2,
        });
        assert!(r.is_ok(), "{r:?}");
        offset += e.len as u64;
    }
}

#[test]
fn join_tokens_admit_their_uses_until_expiry_and_never_a_revoked_node() {
    let (_d, sm) = sm();
    let token = TokenHash([7; 32]);
    let create = Command::CreateJoinToken {
        token,
        expires_ms: 1_000,
        uses: 2,
        now_ms: 0,
    };
    sm.apply(&create).unwrap();
    let use_for = |node: u64, now_ms: i64| {
        sm.apply(&Command::UseJoinToken {
            token,
            node,
            now_ms,
        })
    };
    let rejected = |r: Result<Response, ApplyError>| match r {
        Err(ApplyError::Rejected(x)) => x,
        other => panic!("expected a refusal, got {other:?}"),
    };
    sm.apply(&Command::RevokeNode { node: 9, now_ms: 1 })
        .unwrap();
    assert_eq!(rejected(use_for(9, 10)), Rejection::NodeRevoked(9));
    assert!(sm.is_revoked(9).unwrap());
    assert!(!sm.is_revoked(1).unwrap());
    use_for(1, 10).unwrap();
    assert_eq!(rejected(use_for(2, 1_000)), Rejection::JoinTokenExpired);
    use_for(2, 999).unwrap();
    assert_eq!(rejected(use_for(3, 20)), Rejection::JoinTokenUsed);
    let other = TokenHash([8; 32]);
    assert_eq!(
        rejected(sm.apply(&Command::UseJoinToken {
            token: other,
            node: 4,
            now_ms: 5
        })),
        Rejection::JoinTokenUnknown
    );
    assert_eq!(sm.revoked_nodes().unwrap(), vec![9]);
    sm.apply(&Command::SetClusterCa {
        cert_pem: "first".into(),
    })
    .unwrap();
    sm.apply(&Command::SetClusterCa {
        cert_pem: "second".into(),
    })
    .unwrap();
    assert_eq!(sm.cluster_ca().unwrap().as_deref(), Some("first"));
    sm.apply(&Command::SetSigner { node: 5 }).unwrap();
    assert_eq!(sm.ca_signer().unwrap(), Some(5));
}

#[test]
fn upload_complete_read_back() {
    let (_d, sm) = sm();
    let s = sid(1);
    let Response::SessionOpened {
        existing, resumed, ..
    } = sm.apply(&open(s, 1, 0, &[1, 2, 3])).expect("open")
    else {
        panic!()
    };
    assert!(existing.is_empty() && !resumed);
    add_all(&sm, s, 1, &[1, 2, 3]);
    let Response::Committed(view) = sm
        .apply(&Command::CompleteSession {
            session: s,
            tenant: TenantId(1),
            file_hash: [9; 32],
            now_ms: 3,
        })
        .expect("complete")
    else {
        panic!()
    };
    assert_eq!(
        view.info.size,
        entry(1).len as u64 + entry(2).len as u64 + entry(3).len as u64
    );
    let v = sm
        .version(TenantId(1), &bucket(), &key(0), view.info.version)
        .expect("read")
        .expect("version");
    assert_eq!(v.chunks.len(), 3);
    assert_eq!(v.chunks[1].offset, entry(1).len as u64);
    assert!(
        sm.session(&s).expect("read").is_none(),
        "completed session is gone"
    );
    assert_eq!(sm.chunk_refs(&entry(2).id).expect("refs"), 1);
}

/// A CompleteSession applied again (a retry after the first attempt committed, e.g. through
/// a new leader) answers with the version the first committed and changes nothing; another
/// tenant or another file hash still gets "not found"; the record expires after an hour.
#[test]
fn a_repeated_completion_returns_the_committed_version() {
    let (_d, sm) = sm();
    let s = sid(1);
    sm.apply(&open(s, 1, 0, &[1, 2])).expect("open");
    add_all(&sm, s, 1, &[1, 2]);
    let complete = |tenant: u64, hash: u8, now_ms: i64| Command::CompleteSession {
        session: s,
        tenant: TenantId(tenant),
        file_hash: [hash; 32],
        now_ms,
    };
    let Response::Committed(first) = sm.apply(&complete(1, 9, 3)).expect("complete") else {
        panic!()
    };
    let before = data(&sm);
    let Response::Committed(again) = sm.apply(&complete(1, 9, 4)).expect("retry") else {
        panic!("a retried completion is refused")
    };
    assert_eq!(again.info, first.info);
    assert_eq!(again.version_count, 1);
    assert_eq!(data(&sm), before, "the retry changed the state");
    for other in [complete(2, 9, 5), complete(1, 8, 5)] {
        assert!(
            matches!(
                sm.apply(&other),
                Err(ApplyError::Rejected(Rejection::SessionNotFound))
            ),
            "{other:?} is answered as if it had completed the session"
        );
    }
    // A completion an hour later expires the record.
    let s2 = sid(2);
    sm.apply(&open(s2, 1, 1, &[3])).expect("open");
    add_all(&sm, s2, 1, &[3]);
    sm.apply(&Command::CompleteSession {
        session: s2,
        tenant: TenantId(1),
        file_hash: [7; 32],
        now_ms: 3 + COMPLETED_RETENTION_MS + 1,
    })
    .expect("complete");
    assert!(matches!(
        sm.apply(&complete(1, 9, 3 + COMPLETED_RETENTION_MS + 2)),
        Err(ApplyError::Rejected(Rejection::SessionNotFound))
    ));
}

#[test]
fn incomplete_sessions_cannot_complete_and_change_nothing() {
    let (_d, sm) = sm();
    let s = sid(1);
    sm.apply(&open(s, 1, 0, &[1, 2])).expect("open");
    add_all(&sm, s, 1, &[1]);
    let before: Vec<_> = sm
        .tree
        .iter()
        .map(|kv| kv.expect("kv"))
        .filter(|(k, _)| !k.starts_with(b"m"))
        .collect();
    let err = sm
        .apply(&Command::CompleteSession {
            session: s,
            tenant: TenantId(1),
            file_hash: [0; 32],
            now_ms: 3,
        })
        .expect_err("incomplete");
    assert!(
        matches!(err, ApplyError::Rejected(Rejection::Incomplete(ref gaps)) if gaps.len() == 1 && gaps[0].offset == entry(1).len as u64)
    );
    let after: Vec<_> = sm
        .tree
        .iter()
        .map(|kv| kv.expect("kv"))
        .filter(|(k, _)| !k.starts_with(b"m"))
        .collect();
    assert_eq!(before, after, "a refused command changed state");
    // Another tenant cannot complete or abort it.
    assert!(matches!(
        sm.apply(&Command::AbortSession {
            session: s,
            tenant: Some(TenantId(2)),
            idle_before_ms: None
        }),
        Err(ApplyError::Rejected(Rejection::SessionNotFound))
    ));
}

#[test]
fn dedup_and_resume() {
    let (_d, sm) = sm();
    sm.apply(&open(sid(1), 1, 0, &[1, 2])).expect("open");
    add_all(&sm, sid(1), 1, &[1, 2]);
    sm.apply(&Command::CompleteSession {
        session: sid(1),
        tenant: TenantId(1),
        file_hash: [0; 32],
        now_ms: 3,
    })
    .expect("complete");

    // Same tenant, chunks 2 and 3: chunk 2 (index 0) is already held.
    let Response::SessionOpened {
        existing,
        bytes_present,
        ..
    } = sm.apply(&open(sid(2), 1, 1, &[2, 3])).expect("open")
    else {
        panic!()
    };
    assert_eq!(existing, vec![0]);
    assert_eq!(bytes_present, entry(2).len as u64);
    // Another tenant sees nothing.
    let Response::SessionOpened { existing, .. } =
        sm.apply(&open(sid(3), 2, 1, &[2, 3])).expect("open")
    else {
        panic!()
    };
    assert!(existing.is_empty());
    // Opening the same file again resumes the open session.
    let Response::SessionOpened {
        session,
        resumed,
        existing,
        ..
    } = sm.apply(&open(sid(4), 1, 1, &[2, 3])).expect("open")
    else {
        panic!()
    };
    assert_eq!((session, resumed, existing), (sid(2), true, vec![0]));
}

#[test]
fn trash_purge_and_collection() {
    let (_d, sm) = sm();
    sm.apply(&open(sid(1), 1, 0, &[1, 2])).expect("open");
    add_all(&sm, sid(1), 1, &[1, 2]);
    sm.apply(&Command::CompleteSession {
        session: sid(1),
        tenant: TenantId(1),
        file_hash: [0; 32],
        now_ms: 3,
    })
    .expect("complete");
    let t = TenantId(1);
    sm.apply(&Command::TrashObject {
        tenant: t,
        bucket: bucket(),
        key: key(0),
        now_ms: 10,
        purge_at_ms: 100,
    })
    .expect("trash");
    let b = bucket();
    let q = |trash| ListQuery {
        tenant: t,
        bucket: &b,
        prefix: "",
        delimiter: "",
        limit: 10,
        start: None,
        trash,
    };
    assert!(sm.list(&q(false)).expect("list").objects.is_empty());
    assert_eq!(sm.list(&q(true)).expect("list").objects.len(), 1);
    assert_eq!(sm.trash_due(99, 10).expect("due").len(), 0);
    assert_eq!(sm.trash_due(100, 10).expect("due").len(), 1);
    // Too early: nothing happens.
    assert_eq!(
        sm.apply(&Command::PurgeObject {
            tenant: t,
            bucket: bucket(),
            key: key(0),
            now_ms: 50
        })
        .expect("purge"),
        Response::Purged { versions: 0 }
    );
    assert!(sm.gc_queue(10).expect("gc").is_empty());
    assert_eq!(
        sm.apply(&Command::PurgeObject {
            tenant: t,
            bucket: bucket(),
            key: key(0),
            now_ms: 100
        })
        .expect("purge"),
        Response::Purged { versions: 1 }
    );
    let mut gc = sm.gc_queue(10).expect("gc");
    gc.sort();
    let mut want = vec![entry(1).id, entry(2).id];
    want.sort();
    assert_eq!(gc, want);
    // Re-referencing a queued chunk takes it out of the queue.
    sm.apply(&open(sid(2), 1, 1, &[1])).expect("open");
    add_all(&sm, sid(2), 1, &[1]);
    assert_eq!(sm.gc_queue(10).expect("gc"), vec![entry(2).id]);
    sm.apply(&Command::ChunkCollected { id: entry(2).id })
        .expect("collected");
    assert!(sm.gc_queue(10).expect("gc").is_empty());
}

#[test]
fn overlapping_chunks_without_manifest_are_refused() {
    let (_d, sm) = sm();
    let s = sid(1);
    sm.apply(&Command::OpenSession {
        session: s,
        tenant: TenantId(1),
        bucket: bucket(),
        key: key(0),
        size: 1000,
        manifest: None,
        content_type: String::new(),
        now_ms: 1,
    })
    .expect("open");
    let add = |offset, len| Command::AddChunk {
        session: s,
        tenant: TenantId(1),
        offset,
        id: ChunkId::of(&[offset as u8]),
        len,
        cv: None,
        now_ms: 2,
    };
    sm.apply(&add(100, 100)).expect("first");
    assert!(matches!(
        sm.apply(&add(150, 10)),
        Err(ApplyError::Rejected(Rejection::ChunkOverlap { .. }))
    ));
    assert!(matches!(
        sm.apply(&add(50, 60)),
        Err(ApplyError::Rejected(Rejection::ChunkOverlap { .. }))
    ));
    assert!(matches!(
        sm.apply(&add(950, 60)),
        Err(ApplyError::Rejected(Rejection::ChunkOutOfBounds { .. }))
    ));
    sm.apply(&add(200, 100)).expect("adjacent");
    sm.apply(&add(0, 100)).expect("before");
}

#[test]
fn plan_limits_refuse_at_their_boundary_and_change_nothing() {
    let (_d, sm) = sm();
    let token = TokenHash([1; 32]);
    let created = sm.apply(&Command::CreateTenant {
        name: "alice".into(),
        token,
        now_ms: 0,
    });
    assert_eq!(
        created.expect("tenant"),
        Response::TenantCreated(TenantId(1))
    );
    let basic = crate::plans::Plan {
        name: "basic".into(),
        max_object_bytes: Some(1000),
        max_bytes: Some(1500),
        max_objects: Some(2),
        max_open_uploads: 2,
        requests_per_sec: None,
        bandwidth_bytes_per_sec: None,
    };
    let set = |plan: &str| Command::SetTenantPlan {
        tenant_name: "alice".into(),
        plan: plan.into(),
    };
    assert!(matches!(
        sm.apply(&set("basic")),
        Err(ApplyError::Rejected(Rejection::PlanNotFound(_)))
    ));
    sm.apply(&Command::SetPlan(basic.clone())).expect("plan");
    sm.apply(&set("basic")).expect("set plan");
    let open_sized = |s: u8, k: u8, size: u64| Command::OpenSession {
        session: sid(s),
        tenant: TenantId(1),
        bucket: bucket(),
        key: key(k),
        size,
        manifest: None,
        content_type: String::new(),
        now_ms: 1,
    };
    let refused = |cmd: &Command| {
        let before = data(&sm);
        let r = sm.apply(cmd);
        assert_eq!(data(&sm), before, "a refused command changed the state");
        match r {
            Err(ApplyError::Rejected(x)) => x,
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    // Object size: limit passes, limit + 1 refuses.
    assert!(matches!(
        refused(&open_sized(1, 1, 1001)),
        Rejection::ObjectTooLarge {
            size: 1001,
            limit: 1000,
            ..
        }
    ));
    sm.apply(&open_sized(1, 1, 1000))
        .expect("at the object limit");
    // Bytes: 1000 reserved; 500 more fits exactly, 501 does not.
    assert!(matches!(
        refused(&open_sized(2, 2, 501)),
        Rejection::BytesQuota {
            used: 1000,
            size: 501,
            limit: 1500,
            ..
        }
    ));
    sm.apply(&open_sized(2, 2, 500))
        .expect("at the bytes limit");
    // Open uploads: two open, the third refused.
    assert!(matches!(
        refused(&open_sized(3, 3, 0)),
        Rejection::TooManyOpenUploads { limit: 2, .. }
    ));
    // Aborting one gives its bytes and its slot back.
    sm.apply(&Command::AbortSession {
        session: sid(2),
        tenant: None,
        idle_before_ms: None,
    })
    .expect("abort");
    let u = sm.tenant_usage(TenantId(1)).expect("usage");
    assert_eq!((u.usage.reserved_bytes, u.open_uploads), (1000, 1));
    // An open session for a new key holds an object slot until it ends.
    assert_eq!(u.usage.reserved_objects, 1);
    sm.apply(&Command::AbortSession {
        session: sid(1),
        tenant: None,
        idle_before_ms: None,
    })
    .expect("abort");
    assert_eq!(
        sm.tenant_usage(TenantId(1)).unwrap().usage,
        crate::plans::Usage::default()
    );
    // Objects: two keys committed, a third new key refused; a new version of a key is not.
    for (s, k) in [(4u8, 4u8), (5, 5)] {
        sm.apply(&open_sized(s, k, 0)).expect("open empty");
        sm.apply(&Command::CompleteSession {
            session: sid(s),
            tenant: TenantId(1),
            file_hash: [0; 32],
            now_ms: 2,
        })
        .expect("complete empty");
    }
    assert!(matches!(
        refused(&open_sized(6, 6, 0)),
        Rejection::ObjectsQuota {
            used: 2,
            limit: 2,
            ..
        }
    ));
    sm.apply(&open_sized(7, 4, 0))
        .expect("a new version of an existing key");
    assert_eq!(sm.tenant_usage(TenantId(1)).unwrap().usage.objects, 2);
    // A plan in use cannot be deleted; the default one can (it falls back to the built-in).
    assert!(matches!(
        refused(&Command::DeletePlan {
            name: "basic".into()
        }),
        Rejection::PlanInUse { tenants: 1, .. }
    ));
    sm.apply(&set("default")).expect("back to default");
    sm.apply(&Command::DeletePlan {
        name: "basic".into(),
    })
    .expect("unused plan");
    assert_eq!(
        sm.plan_of(TenantId(1)).unwrap(),
        crate::plans::Plan::builtin_default()
    );
    // A caller's batch inside the proposer's batch applies; one level deeper is refused, not
    // recursed into.
    let two = Command::Batch(vec![Command::Batch(vec![])]);
    assert_eq!(
        sm.apply(&two).expect("batch"),
        Response::Batch(vec![Ok(Response::Batch(vec![]))])
    );
    let three = Command::Batch(vec![Command::Batch(vec![Command::Batch(vec![])])]);
    assert_eq!(
        sm.apply(&three).expect("batch"),
        Response::Batch(vec![Ok(Response::Batch(vec![Err(
            Rejection::BatchTooDeep { limit: 2 }
        )]))])
    );
}

/// The state without the `applied` counter (which counts refused commands too).
fn data(sm: &StateMachine) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut d = dump(sm);
    d.remove(&keys::meta("applied"));
    d
}

/// Operations of the model test, over small spaces so they collide often.
#[derive(Debug, Clone)]
enum Op {
    Upload {
        tenant: u64,
        key: u8,
        chunks: Vec<u8>,
        added: usize,
        complete: bool,
    },
    Abort {
        session: u8,
    },
    Trash {
        tenant: u64,
        key: u8,
    },
    Untrash {
        tenant: u64,
        key: u8,
    },
    Purge {
        tenant: u64,
        key: u8,
    },
    /// Move the key's current version to the cold tier (chunks without a cold copy go to a
    /// new archive).
    Cold {
        tenant: u64,
        key: u8,
    },
    /// Restore the key's current version (start, rehydrate, finish).
    Restore {
        tenant: u64,
        key: u8,
    },
    /// Set the default plan's quotas (small, so refusals happen).
    Limits {
        max_bytes: Option<u64>,
        max_objects: Option<u64>,
        max_open_uploads: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..3, 0u8..3, proptest::collection::vec(0u8..6, 0..5), 0usize..6, any::<bool>())
            .prop_map(|(tenant, key, chunks, added, complete)| Op::Upload { tenant, key, chunks, added, complete }),
        1 => (0u8..20).prop_map(|session| Op::Abort { session }),
        1 => (1u64..3, 0u8..3).prop_map(|(tenant, key)| Op::Trash { tenant, key }),
        1 => (1u64..3, 0u8..3).prop_map(|(tenant, key)| Op::Untrash { tenant, key }),
        1 => (1u64..3, 0u8..3).prop_map(|(tenant, key)| Op::Purge { tenant, key }),
        2 => (1u64..3, 0u8..3).prop_map(|(tenant, key)| Op::Cold { tenant, key }),
        1 => (1u64..3, 0u8..3).prop_map(|(tenant, key)| Op::Restore { tenant, key }),
        1 => (proptest::option::of(0u64..2000), proptest::option::of(0u64..3), 0u32..4)
            .prop_map(|(max_bytes, max_objects, max_open_uploads)| Op::Limits { max_bytes, max_objects, max_open_uploads }),
    ]
}

/// A step of a random history: a command, or a tier op whose commands depend on the state.
enum Step {
    Cmd(Command),
    Cold(u64, u8),
    Restore(u64, u8),
}

/// The commands a tier step proposes against the current state `sm` (as the leader would).
fn tier_commands(sm: &StateMachine, step: &Step, n: usize) -> Vec<Command> {
    let (tenant, k, restore) = match step {
        Step::Cmd(c) => return vec![c.clone()],
        Step::Cold(t, k) => (TenantId(*t), key(*k), false),
        Step::Restore(t, k) => (TenantId(*t), key(*k), true),
    };
    let Some(head) = sm.object(tenant, &bucket(), &k).expect("read") else {
        return Vec::new();
    };
    let version = head.current.version;
    if restore {
        return vec![
            Command::StartRestore {
                tenant,
                bucket: bucket(),
                key: k.clone(),
                version,
                tier: crate::tier::RestoreTier::Bulk,
                days: 1,
                now_ms: 20,
            },
            Command::Rehydrate {
                tenant,
                bucket: bucket(),
                key: k.clone(),
                version,
            },
            Command::FinishRestore {
                tenant,
                bucket: bucket(),
                key: k,
                version,
                now_ms: 21,
            },
        ];
    }
    let rec = sm
        .version(tenant, &bucket(), &k, version)
        .expect("read")
        .expect("version of a head");
    let object = format!("arc-{n}");
    let mut chunks = Vec::new();
    let mut offset = 0;
    for c in &rec.chunks {
        if sm.cold_chunk(&c.id).expect("read").is_none()
            && !chunks.iter().any(|(id, _)| *id == c.id)
        {
            chunks.push((
                c.id,
                crate::tier::ColdLocation {
                    backend: "b".into(),
                    object: object.clone(),
                    offset,
                    len: c.len,
                    class: crate::tier::StorageClass::Glacier,
                },
            ));
            offset += c.len as u64;
        }
    }
    vec![Command::TransitionVersion {
        tenant,
        bucket: bucket(),
        key: k,
        version,
        backend: "b".into(),
        class: crate::tier::StorageClass::Glacier,
        chunks,
        archives: vec![crate::tier::ArchiveRecord {
            backend: "b".into(),
            object,
            class: crate::tier::StorageClass::Glacier,
            bytes: offset,
            live_chunks: 0,
            created_at_ms: 9,
        }],
        now_ms: 9,
    }]
}

/// Turns ops into steps (session ids numbered in order).
fn steps(ops: &[Op]) -> Vec<Step> {
    let mut out = Vec::new();
    let mut next = 0u8;
    for op in ops {
        match op {
            Op::Upload {
                tenant,
                key: k,
                chunks,
                added,
                complete,
            } => {
                next += 1;
                let s = sid(next);
                out.push(Step::Cmd(open(s, *tenant, *k, chunks)));
                let mut offset = 0;
                for c in chunks.iter().take(*added) {
                    let e = entry(*c);
                    out.push(Step::Cmd(Command::AddChunk {
                        session: s,
                        tenant: TenantId(*tenant),
                        offset,
                        id: e.id,
                        len: e.len,
                        cv: None,
                        now_ms: 2,
                    }));
                    offset += e.len as u64;
                }
                if *complete {
                    out.push(Step::Cmd(Command::CompleteSession {
                        session: s,
                        tenant: TenantId(*tenant),
                        file_hash: [0; 32],
                        now_ms: 3,
                    }));
                }
            }
            Op::Abort { session } => out.push(Step::Cmd(Command::AbortSession {
                session: sid(*session),
                tenant: None,
                idle_before_ms: None,
            })),
            Op::Trash { tenant, key: k } => out.push(Step::Cmd(Command::TrashObject {
                tenant: TenantId(*tenant),
                bucket: bucket(),
                key: key(*k),
                now_ms: 5,
                purge_at_ms: 6,
            })),
            Op::Untrash { tenant, key: k } => out.push(Step::Cmd(Command::UntrashObject {
                tenant: TenantId(*tenant),
                bucket: bucket(),
                key: key(*k),
            })),
            Op::Purge { tenant, key: k } => out.push(Step::Cmd(Command::PurgeObject {
                tenant: TenantId(*tenant),
                bucket: bucket(),
                key: key(*k),
                now_ms: 10,
            })),
            Op::Cold { tenant, key: k } => out.push(Step::Cold(*tenant, *k)),
            Op::Restore { tenant, key: k } => out.push(Step::Restore(*tenant, *k)),
            Op::Limits {
                max_bytes,
                max_objects,
                max_open_uploads,
            } => out.push(Step::Cmd(Command::SetPlan(crate::plans::Plan {
                max_bytes: *max_bytes,
                max_objects: *max_objects,
                max_open_uploads: *max_open_uploads,
                ..crate::plans::Plan::builtin_default()
            }))),
        }
    }
    out
}

/// Checks that reference counts match the references that exist.
fn check_refs(sm: &StateMachine) -> Result<(), TestCaseError> {
    let mut expected: HashMap<(ChunkId, u64), u64> = HashMap::new();
    for kv in sm.tree.iter() {
        let (k, v) = kv.expect("kv");
        match k[0] {
            keys::VERSION => {
                let tenant = keys::be_u64(&k, 1).expect("tenant");
                let rec: VersionRecord = decode("version", &v).expect("decode");
                for c in rec.chunks {
                    *expected.entry((c.id, tenant)).or_default() += 1;
                }
            }
            keys::SESSION_CHUNK => {
                let s = SessionId::from_bytes(k[1..17].try_into().expect("sid"));
                let rec = sm
                    .session(&s)
                    .expect("read")
                    .expect("a session chunk without its session");
                let c: SessionChunk = decode("session chunk", &v).expect("decode");
                *expected.entry((c.id, rec.tenant.0)).or_default() += 1;
            }
            _ => {}
        }
    }
    let mut global: HashMap<ChunkId, u64> = HashMap::new();
    for ((id, t), n) in &expected {
        let meta = sm
            .tenant_chunk(id, TenantId(*t))
            .expect("read")
            .expect("missing tenant ref record");
        prop_assert_eq!(meta.refs, *n, "tenant refs of {:?}", id);
        *global.entry(*id).or_default() += n;
    }
    for c in 0..6 {
        let id = entry(c).id;
        let want = global.get(&id).copied().unwrap_or(0);
        prop_assert_eq!(
            sm.chunk_refs(&id).expect("refs"),
            want,
            "global refs of chunk {}",
            c
        );
        let queued = sm.gc_queue(100).expect("gc").contains(&id);
        let released = sm
            .cold_chunk(&id)
            .expect("read")
            .is_some_and(|c| c.released);
        if want > 0 {
            prop_assert_eq!(
                queued,
                released,
                "referenced chunk {} queued iff released",
                c
            );
        }
        for t in 1..3 {
            if !expected.contains_key(&(id, t)) {
                prop_assert!(
                    sm.tenant_chunk(&id, TenantId(t)).expect("read").is_none(),
                    "stale tenant ref record"
                );
            }
        }
    }
    Ok(())
}

/// Checks the cold-tier invariants (see state_machine/tier.rs).
fn check_tier(sm: &StateMachine) -> Result<(), TestCaseError> {
    let mut cold_expected: HashMap<ChunkId, u64> = HashMap::new();
    for kv in sm.tree.scan_prefix([keys::VERSION]) {
        let (k, v) = kv.expect("kv");
        let mut mark = k.to_vec();
        mark[0] = keys::COLD_VERSION;
        if sm.tree.contains_key(&mark).expect("read") {
            let rec: VersionRecord = decode("version", &v).expect("decode");
            for c in rec.chunks {
                *cold_expected.entry(c.id).or_default() += 1;
            }
        }
    }
    let mut live: HashMap<String, u32> = HashMap::new();
    for c in 0..6 {
        let id = entry(c).id;
        let refs = sm.chunk_refs(&id).expect("refs");
        let cold_refs = sm
            .tree
            .get(keys::cold_refs(&id))
            .expect("read")
            .and_then(|v| keys::be_u64(&v, 0))
            .unwrap_or(0);
        let want = cold_expected.get(&id).copied().unwrap_or(0);
        prop_assert_eq!(cold_refs, want, "cold refs of chunk {}", c);
        prop_assert!(
            cold_refs <= refs,
            "chunk {}: {} cold refs > {} refs",
            c,
            cold_refs,
            refs
        );
        let cold = sm.cold_chunk(&id).expect("read");
        prop_assert_eq!(cold.is_some(), cold_refs > 0, "chunk {} cold record", c);
        if let Some(cold) = cold {
            if cold.released {
                prop_assert_eq!(cold_refs, refs, "released chunk {} has hot refs", c);
            }
            *live.entry(cold.loc.object).or_default() += 1;
        }
    }
    for kv in sm.tree.scan_prefix([keys::ARCHIVE]) {
        let a: crate::tier::ArchiveRecord = decode("archive", &kv.expect("kv").1).expect("decode");
        let n = live.get(&a.object).copied().unwrap_or(0);
        prop_assert_eq!(a.live_chunks, n, "live chunks of {}", a.object);
        let dead = sm
            .tree
            .contains_key(keys::archive_dead(&a.backend, &a.object))
            .expect("read");
        prop_assert_eq!(dead, n == 0, "dead mark of {}", a.object);
    }
    Ok(())
}

/// Checks that each tenant's usage counters match its records (see state_machine/plans.rs).
fn check_usage(sm: &StateMachine) -> Result<(), TestCaseError> {
    let mut want: HashMap<u64, (crate::plans::Usage, u64)> = HashMap::new();
    for kv in sm.tree.iter() {
        let (k, v) = kv.expect("kv");
        match k[0] {
            keys::VERSION => {
                let rec: VersionRecord = decode("version", &v).expect("decode");
                let t = keys::be_u64(&k, 1).expect("tenant");
                want.entry(t).or_default().0.stored_bytes += rec.info.size;
            }
            keys::OBJECT => {
                let t = keys::be_u64(&k, 1).expect("tenant");
                want.entry(t).or_default().0.objects += 1;
            }
            keys::SESSION => {
                let rec: SessionRecord = decode("session", &v).expect("decode");
                let w = want.entry(rec.tenant.0).or_default();
                w.0.reserved_bytes += rec.size;
                w.1 += 1;
                let marked = sm
                    .tree
                    .contains_key(keys::session_new_key(&rec.id))
                    .expect("read");
                w.0.reserved_objects += u64::from(marked);
            }
            _ if k.starts_with(&keys::session_new_key_prefix()) => {
                let id = &k[keys::session_new_key_prefix().len()..];
                let session = [&[keys::SESSION][..], id].concat();
                prop_assert!(
                    sm.tree.contains_key(session).expect("read"),
                    "an object slot marker outlived its session"
                );
            }
            _ => {}
        }
    }
    for t in 1..3 {
        let got = sm.tenant_usage(TenantId(t)).expect("usage");
        let (usage, open) = want.get(&t).copied().unwrap_or_default();
        prop_assert_eq!(got.usage, usage, "usage of tenant {}", t);
        prop_assert_eq!(got.open_uploads, open, "open uploads of tenant {}", t);
    }
    Ok(())
}

fn dump(sm: &StateMachine) -> BTreeMap<Vec<u8>, Vec<u8>> {
    sm.tree
        .iter()
        .map(|kv| kv.expect("kv"))
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_histories_keep_refcounts_and_are_deterministic(ops in proptest::collection::vec(op(), 1..25)) {
        let (_d1, a) = sm();
        let (_d2, b) = sm();
        for (n, step) in steps(&ops).iter().enumerate() {
            for cmd in tier_commands(&a, step, n) {
                let ra = a.apply(&cmd).map_err(|e| e.to_string());
                let rb = b.apply(&cmd).map_err(|e| e.to_string());
                prop_assert_eq!(ra, rb);
                check_refs(&a)?;
                check_tier(&a)?;
                check_usage(&a)?;
            }
        }
        prop_assert_eq!(dump(&a), dump(&b));
    }
}

mod tiering {
    use super::*;
    use crate::tier::{
        ArchiveRecord, ColdLocation, RestoreTier, StorageClass, TierPolicy, VersionTier,
    };

    /// Commits key `k` of tenant 1 with `chunks`; returns its version.
    fn commit(sm: &StateMachine, s: u8, k: u8, chunks: &[u8]) -> u64 {
        sm.apply(&open(sid(s), 1, k, chunks)).expect("open");
        add_all(sm, sid(s), 1, chunks);
        match sm
            .apply(&Command::CompleteSession {
                session: sid(s),
                tenant: TenantId(1),
                file_hash: [0; 32],
                now_ms: 3,
            })
            .expect("complete")
        {
            Response::Committed(v) => v.info.version,
            other => panic!("{other:?}"),
        }
    }

    fn loc(archive: &str, c: u8, offset: u64) -> (ChunkId, ColdLocation) {
        let e = entry(c);
        (
            e.id,
            ColdLocation {
                backend: "glacier".into(),
                object: archive.into(),
                offset,
                len: e.len,
                class: StorageClass::Glacier,
            },
        )
    }

    fn archive(name: &str) -> ArchiveRecord {
        ArchiveRecord {
            backend: "glacier".into(),
            object: name.into(),
            class: StorageClass::Glacier,
            bytes: 1000,
            live_chunks: 0,
            created_at_ms: 5,
        }
    }

    fn transition(
        k: u8,
        v: u64,
        chunks: Vec<(ChunkId, ColdLocation)>,
        archives: Vec<ArchiveRecord>,
    ) -> Command {
        Command::TransitionVersion {
            tenant: TenantId(1),
            bucket: bucket(),
            key: key(k),
            version: v,
            backend: "glacier".into(),
            class: StorageClass::Glacier,
            chunks,
            archives,
            now_ms: 10,
        }
    }

    fn needs_hot(sm: &StateMachine, c: u8) -> bool {
        sm.chunk_needs_hot(&entry(c).id).expect("needs hot")
    }

    #[test]
    fn shared_chunks_stay_hot_and_restores_bring_versions_back() {
        let (_d, sm) = sm();
        let a = commit(&sm, 1, 0, &[1, 2]);
        let b = commit(&sm, 2, 1, &[2, 3]);

        // A goes cold: chunk 1 is released, chunk 2 stays hot for B.
        let r = sm.apply(&transition(
            0,
            a,
            vec![loc("arc1", 1, 0), loc("arc1", 2, 101)],
            vec![archive("arc1")],
        ));
        assert_eq!(
            r.expect("transition"),
            Response::Transitioned { released: 1 }
        );
        assert!(!needs_hot(&sm, 1) && needs_hot(&sm, 2) && needs_hot(&sm, 3));
        assert_eq!(sm.gc_queue(10).expect("gc"), vec![entry(1).id]);
        assert!(matches!(
            sm.version_tier(TenantId(1), &bucket(), &key(0), a)
                .expect("tier"),
            VersionTier::Cold(_)
        ));
        assert!(matches!(
            sm.apply(&transition(0, a, vec![], vec![])),
            Err(ApplyError::Rejected(Rejection::AlreadyCold))
        ));

        // B without a location for chunk 3 is refused and changes nothing.
        let before = dump(&sm);
        assert!(matches!(
            sm.apply(&transition(1, b, vec![], vec![])),
            Err(ApplyError::Rejected(Rejection::ColdCopyMissing(id))) if id == entry(3).id
        ));
        let mut after = dump(&sm);
        after.retain(|k, _| !k.starts_with(b"mapplied"));
        let mut before = before;
        before.retain(|k, _| !k.starts_with(b"mapplied"));
        assert_eq!(before, after);

        // B goes cold too: now chunk 2 has only cold references.
        let r = sm.apply(&transition(
            1,
            b,
            vec![loc("arc2", 3, 0)],
            vec![archive("arc2")],
        ));
        assert_eq!(
            r.expect("transition"),
            Response::Transitioned { released: 2 }
        );
        assert!(!needs_hot(&sm, 2) && !needs_hot(&sm, 3));
        let totals = sm.tier_totals().expect("totals");
        assert_eq!(totals.cold_versions, 2);
        assert_eq!(
            totals.bytes.get("glacier").copied(),
            Some((entry(1).len + entry(2).len + entry(3).len) as u64)
        );

        // Dedup never counts a released chunk as present: the client must send it again.
        let r = sm.apply(&open(sid(3), 1, 9, &[1, 4])).expect("open");
        let Response::SessionOpened { existing, .. } = r else {
            panic!("{r:?}")
        };
        assert!(existing.is_empty(), "{existing:?}");
        sm.apply(&Command::AbortSession {
            session: sid(3),
            tenant: None,
            idle_before_ms: None,
        })
        .expect("abort");

        // Restore A: recorded once, then finished.
        let restore = Command::StartRestore {
            tenant: TenantId(1),
            bucket: bucket(),
            key: key(0),
            version: a,
            tier: RestoreTier::Standard,
            days: 1,
            now_ms: 20,
        };
        assert_eq!(
            sm.apply(&restore).expect("restore"),
            Response::RestoreStarted {
                since_ms: 20,
                already: false
            }
        );
        assert_eq!(
            sm.apply(&restore).expect("restore"),
            Response::RestoreStarted {
                since_ms: 20,
                already: true
            }
        );
        assert_eq!(sm.restores().expect("restores").len(), 1);
        sm.apply(&Command::FinishRestore {
            tenant: TenantId(1),
            bucket: bucket(),
            key: key(0),
            version: a,
            now_ms: 30,
        })
        .expect("finish");
        assert_eq!(
            sm.version_tier(TenantId(1), &bucket(), &key(0), a)
                .expect("tier"),
            VersionTier::Hot
        );
        assert!(needs_hot(&sm, 1) && needs_hot(&sm, 2) && !needs_hot(&sm, 3));
        assert!(sm.cold_chunk(&entry(1).id).expect("cold").is_none());
        assert!(sm.cold_chunk(&entry(2).id).expect("cold").is_some()); // B still cold
        assert_eq!(sm.gc_queue(10).expect("gc"), vec![entry(3).id]);
        assert_eq!(
            sm.last_access(TenantId(1), &bucket(), &key(0))
                .expect("access"),
            Some(30)
        );
        assert!(sm.restores().expect("restores").is_empty());

        // Purging B drops the last cold references: both archives are dead.
        sm.apply(&Command::TrashObject {
            tenant: TenantId(1),
            bucket: bucket(),
            key: key(1),
            now_ms: 40,
            purge_at_ms: 40,
        })
        .expect("trash");
        sm.apply(&Command::PurgeObject {
            tenant: TenantId(1),
            bucket: bucket(),
            key: key(1),
            now_ms: 41,
        })
        .expect("purge");
        let mut dead = sm.dead_archives(10).expect("dead");
        dead.sort();
        assert_eq!(
            dead,
            vec![
                ("glacier".to_string(), "arc1".to_string()),
                ("glacier".to_string(), "arc2".to_string())
            ]
        );
        assert!(needs_hot(&sm, 2), "A still references chunk 2");
        for a in ["arc1", "arc2"] {
            sm.apply(&Command::ArchiveDeleted {
                backend: "glacier".into(),
                object: a.into(),
            })
            .expect("deleted");
        }
        let totals = sm.tier_totals().expect("totals");
        assert_eq!(totals.archives.len(), 0);
        assert_eq!(totals.dead_archives, 0);
        assert_eq!(totals.bytes.get("glacier").copied(), Some(0));
    }

    #[test]
    fn candidates_follow_policies_and_access_times() {
        let (_d, sm) = sm();
        let v = commit(&sm, 1, 0, &[1, 2]);
        commit(&sm, 2, 1, &[3]);
        assert!(sm.tier_candidates(1_000_000, 10).expect("cands").is_empty());
        sm.apply(&Command::SetTierPolicy(TierPolicy {
            name: "old".into(),
            scope: crate::tier::PolicyScope::Cluster,
            backend: "glacier".into(),
            storage_class: None,
            min_idle_ms: 1000,
            min_size: 200,
            created_at_ms: 0,
        }))
        .expect("policy");
        // Key 0 is 201+202 bytes; key 1 (103 bytes) is too small.
        let c = sm.tier_candidates(1003, 10).expect("cands");
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].key.as_str(), c[0].version), ("dir/key0", v));
        assert!(sm.tier_candidates(1002, 10).expect("cands").is_empty());
        // A read restarts the idle clock.
        sm.apply(&Command::RecordAccess {
            keys: vec![(TenantId(1), bucket(), key(0))],
            now_ms: 1500,
        })
        .expect("access");
        assert!(sm.tier_candidates(2499, 10).expect("cands").is_empty());
        assert_eq!(sm.tier_candidates(2500, 10).expect("cands").len(), 1);
        assert!(matches!(
            sm.apply(&Command::DeleteTierPolicy {
                name: "nope".into()
            }),
            Err(ApplyError::Rejected(Rejection::PolicyNotFound(_)))
        ));
    }
}

/// A record declaring a huge string or byte array (corrupt or hostile input) is refused before
/// anything is allocated for it (found by fuzzing the record decoder: it used to abort).
#[test]
fn a_huge_declared_length_is_refused_not_allocated() {
    for declared in [
        u64::MAX / 2,
        (RECORD_LIMIT as u64) + 1,
        SNAPSHOT_LIMIT as u64 + 1,
    ] {
        let mut b = vec![FORMAT_V1, 0xfd];
        b.extend(declared.to_le_bytes());
        assert!(decode::<String>("test", &b).is_err(), "{declared}");
        assert!(decode::<Vec<u8>>("test", &b).is_err(), "{declared}");
        assert!(decode_snapshot::<Vec<(Vec<u8>, Vec<u8>)>>("test", &b).is_err());
    }
    let ok = encode(&"fits".to_owned()).expect("encode");
    assert_eq!(decode::<String>("test", &ok).expect("decode"), "fits");
}
