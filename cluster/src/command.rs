//! Commands: every metadata change is one of these, applied by the state machine. They carry
//! everything apply needs (including the time, chosen by the proposer), so applying the same
//! command sequence on any replica gives the same state: the Raft log will carry exactly these.

use serde::{Deserialize, Serialize};

use crate::ids::{ChunkId, SessionId, TenantId, TokenHash};
use crate::layout::LayoutChange;
use crate::names::{BucketName, ObjectKey};
use crate::records::{ManifestEntry, ObjectView, TrashState};
use crate::tier::{ArchiveRecord, ColdLocation, RestoreTier, StorageClass, TierPolicy};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateTenant {
        name: String,
        token: TokenHash,
        now_ms: i64,
    },
    CreateAdminToken {
        token: TokenHash,
        now_ms: i64,
    },
    /// Opens an upload session, or resumes the open one for the same key, size and manifest.
    OpenSession {
        session: SessionId,
        tenant: TenantId,
        bucket: BucketName,
        key: ObjectKey,
        size: u64,
        manifest: Option<Vec<ManifestEntry>>,
        content_type: String,
        now_ms: i64,
    },
    /// Records a chunk that is durable on disk as part of a session.
    AddChunk {
        session: SessionId,
        tenant: TenantId,
        offset: u64,
        id: ChunkId,
        len: u32,
        cv: Option<[u8; 32]>,
        now_ms: i64,
    },
    /// Commits the session as the key's new version. The proposer has checked the whole-file
    /// hash; apply checks that every byte is covered.
    CompleteSession {
        session: SessionId,
        tenant: TenantId,
        file_hash: [u8; 32],
        now_ms: i64,
    },
    /// Drops a session and its chunk references. `idle_before_ms` makes expiry safe against a
    /// session that saw activity after the sweeper looked at it.
    AbortSession {
        session: SessionId,
        tenant: Option<TenantId>,
        idle_before_ms: Option<i64>,
    },
    TrashObject {
        tenant: TenantId,
        bucket: BucketName,
        key: ObjectKey,
        now_ms: i64,
        purge_at_ms: i64,
    },
    UntrashObject {
        tenant: TenantId,
        bucket: BucketName,
        key: ObjectKey,
    },
    /// Removes a trashed key and all its versions for good, if its purge time has come.
    PurgeObject {
        tenant: TenantId,
        bucket: BucketName,
        key: ObjectKey,
        now_ms: i64,
    },
    /// The node deleted an unreferenced chunk's file: forget it in the GC queue.
    ChunkCollected {
        id: ChunkId,
    },
    /// Several commands in one Raft entry (concurrent writes batched by the proposer). They
    /// apply in order, atomically; each gets its own result.
    Batch(Vec<Command>),
    /// Another token for an existing tenant.
    CreateToken {
        tenant_name: String,
        token: TokenHash,
        now_ms: i64,
        scope: crate::records::TokenScope,
        bucket: Option<BucketName>,
        expires_ms: Option<i64>,
    },
    RevokeToken {
        token: TokenHash,
    },
    CreateBucket {
        tenant: TenantId,
        bucket: BucketName,
        now_ms: i64,
    },
    /// Deletes an empty bucket (no live or trashed keys).
    DeleteBucket {
        tenant: TenantId,
        bucket: BucketName,
    },
    /// Adds a change to the staged layout.
    StageLayout(LayoutChange),
    /// Makes the staged layout current as `version` (current + 1).
    ApplyLayout {
        version: u64,
    },
    /// Drops the staged layout.
    RevertLayout,
    /// Marks a node down (out of placement) or active again, as a new layout version; the
    /// leader decides it from the layout version it saw (`LayoutState::set_down`).
    SetNodeDown {
        node: u64,
        down: bool,
        layout_version: u64,
    },
    /// Records the cluster CA certificate (public: its private key never enters the metadata).
    /// The first one recorded stays: later ones are ignored.
    SetClusterCa {
        cert_pem: String,
    },
    /// Names the member that holds the CA key and signs certificates (joins and renewals go
    /// to it).
    SetSigner {
        node: u64,
    },
    /// Creates a join token (stored as its hash) that admits `uses` nodes until `expires_ms`.
    CreateJoinToken {
        token: TokenHash,
        expires_ms: i64,
        uses: u32,
        now_ms: i64,
    },
    /// Spends one use of a join token for `node` (refused when unknown, expired or used up).
    UseJoinToken {
        token: TokenHash,
        node: u64,
        now_ms: i64,
    },
    /// Revokes every certificate of `node`: from this entry on, every member refuses its
    /// handshakes, and the signer refuses to sign for it. Proposed before the node leaves the
    /// membership; never undone (a node that comes back joins with a new id).
    RevokeNode {
        node: u64,
        now_ms: i64,
    },
    /// Creates or replaces the plan of that name.
    SetPlan(crate::plans::Plan),
    /// Deletes a plan no tenant is on (deleting `default` brings back the built-in one).
    DeletePlan {
        name: String,
    },
    /// Puts a tenant on a plan (`default` included).
    SetTenantPlan {
        tenant_name: String,
        plan: String,
    },
    /// Creates or replaces the tiering policy of that name.
    SetTierPolicy(TierPolicy),
    DeleteTierPolicy {
        name: String,
    },
    /// A version's chunks all have verified cold copies: `chunks` gives the location of each
    /// chunk that had none yet (in `archives`, inserted if new). Chunks whose every reference
    /// is now cold are released: their hot files are queued for collection.
    TransitionVersion {
        tenant: TenantId,
        bucket: BucketName,
        key: ObjectKey,
        version: u64,
        backend: String,
        class: StorageClass,
        chunks: Vec<(ChunkId, ColdLocation)>,
        archives: Vec<ArchiveRecord>,
        now_ms: i64,
    },
    /// Asks for a cold version to come back (idempotent: a restore in progress stays).
    StartRestore {
        tenant: TenantId,
        bucket: BucketName,
        key: ObjectKey,
        version: u64,
        tier: RestoreTier,
        days: u32,
        now_ms: i64,
    },
    /// The version's archives are readable; its chunks are being written back to hot storage.
    Rehydrate {
        tenant: TenantId,
        bucket: BucketName,
        key: ObjectKey,
        version: u64,
    },
    /// The version's chunks are hot again (written to their homes): it is no longer cold.
    FinishRestore {
        tenant: TenantId,
        bucket: BucketName,
        key: ObjectKey,
        version: u64,
        now_ms: i64,
    },
    /// A dead archive object was deleted from its backend.
    ArchiveDeleted {
        backend: String,
        object: String,
    },
    /// These keys were read (coarse last-access times for tiering decisions).
    RecordAccess {
        keys: Vec<(TenantId, BucketName, ObjectKey)>,
        now_ms: i64,
    },
}

impl Command {
    /// Whether applying this command twice has the effect, and the answer, of applying it once.
    /// A write forwarded to a leader that then stopped answering may have been committed by
    /// the next leader; only such commands are sent again through it (the rest answer "may or
    /// may not be committed"). CompleteSession keeps a completion record for this; AddChunk
    /// of the same chunk at the same offset is a no-op.
    pub fn repeat_safe(&self) -> bool {
        match self {
            Command::CompleteSession { .. } | Command::AddChunk { .. } => true,
            Command::Batch(commands) => commands.iter().all(Command::repeat_safe),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Done,
    TenantCreated(TenantId),
    SessionOpened {
        session: SessionId,
        resumed: bool,
        /// Manifest indexes whose chunk the tenant already holds.
        existing: Vec<u32>,
        bytes_present: u64,
    },
    ChunkAdded {
        bytes_present: u64,
        added: bool,
        /// The tenant held no reference to this chunk before (what `PutChunkAck.written`
        /// tells a client: never whether another tenant stores the same bytes).
        new_to_tenant: bool,
    },
    Committed(ObjectView),
    Trashed(TrashState),
    Untrashed(ObjectView),
    Purged {
        versions: u32,
    },
    TokenCreated(TenantId),
    /// A version went cold; this many chunks had their hot copies released.
    Transitioned {
        released: u32,
    },
    RestoreStarted {
        since_ms: i64,
        already: bool,
    },
    /// The results of a `Command::Batch`, in order.
    Batch(Vec<Result<Response, crate::error::Rejection>>),
}
