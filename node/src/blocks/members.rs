//! Where the members' QUIC endpoints are: resolved (DNS included) once per membership change,
//! not per chunk.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use strata_cluster::layout::NodeId;
use strata_cluster::raft::Raft;

#[derive(Default)]
pub struct MemberBook {
    addrs: RwLock<Arc<BTreeMap<NodeId, SocketAddr>>>,
}

impl MemberBook {
    /// Every member whose address resolved.
    pub fn all(&self) -> Arc<BTreeMap<NodeId, SocketAddr>> {
        self.addrs.read().map(|a| a.clone()).unwrap_or_default()
    }

    pub fn addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.all().get(&node).copied()
    }

    /// Resolves the members' gRPC URLs to their QUIC addresses.
    pub async fn update(&self, members: BTreeMap<NodeId, String>) {
        let mut out = BTreeMap::new();
        for (id, url) in members {
            match crate::peer::quic_addr(&url).await {
                Some(a) => {
                    out.insert(id, a);
                }
                None => tracing::warn!(node = id, %url, "cannot resolve a member's address"),
            }
        }
        if let Ok(mut a) = self.addrs.write() {
            *a = Arc::new(out);
        }
    }

    /// Keeps the book in step with Raft's membership until Raft stops. Names that did not
    /// resolve are tried again every few seconds.
    pub fn follow(self: &Arc<Self>, raft: Raft) {
        let book = self.clone();
        tokio::spawn(async move {
            let mut rx = raft.metrics();
            let mut last = None;
            loop {
                let members: BTreeMap<NodeId, String> = {
                    let m = rx.borrow_and_update();
                    m.membership_config
                        .membership()
                        .nodes()
                        .map(|(id, n)| (*id, n.addr.clone()))
                        .collect()
                };
                let complete = book.all().len() == members.len();
                if last.as_ref() != Some(&members) || !complete {
                    book.update(members.clone()).await;
                    last = Some(members);
                }
                let retry = tokio::time::sleep(std::time::Duration::from_secs(5));
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = retry, if book.all().len() != last.as_ref().map_or(0, |m| m.len()) => {}
                }
            }
        });
    }
}
