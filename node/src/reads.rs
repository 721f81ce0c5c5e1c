//! Reading a chunk for a client: hot or cold. A chunk whose hot copies were released to the
//! cold tier is read from its cold copy; otherwise from the block layer, falling back to the
//! cold copy (while a chunk comes back from the cold tier, or if no hot copy answers).

use std::sync::Arc;

use bytes::Bytes;
use strata_cluster::{ChunkId, StateMachine};

use crate::blocks::{BlockError, BlockManager};
use crate::tiering::{TierError, Tiering};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Hot(#[from] BlockError),
    #[error(transparent)]
    Cold(#[from] TierError),
    #[error("{hot}; its cold copy: {cold}")]
    Both { hot: BlockError, cold: TierError },
    #[error(transparent)]
    Metadata(#[from] strata_cluster::StoreError),
}

pub struct Reads {
    sm: Arc<StateMachine>,
    blocks: Arc<BlockManager>,
    tiering: Arc<Tiering>,
}

impl Reads {
    pub fn new(sm: Arc<StateMachine>, blocks: Arc<BlockManager>, tiering: Arc<Tiering>) -> Reads {
        Reads {
            sm,
            blocks,
            tiering,
        }
    }

    /// A chunk's bytes, verified, from wherever a copy is.
    pub async fn chunk(&self, id: ChunkId) -> Result<Bytes, ReadError> {
        let cold = self.sm.cold_chunk(&id)?;
        if let Some(c) = &cold
            && c.released
        {
            return Ok(self.tiering.read_cold(id, &c.loc).await?);
        }
        match self.blocks.read(id).await {
            Ok(data) => Ok(data),
            Err(hot) => match cold {
                Some(c) => self
                    .tiering
                    .read_cold(id, &c.loc)
                    .await
                    .map_err(|cold| ReadError::Both { hot, cold }),
                None => Err(hot.into()),
            },
        }
    }
}
