//! openraft's own storage conformance suite against the sled log store and state machine.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};

use super::{LogStore, SmStore, StorageError, TypeConfig};
use crate::state_machine::StateMachine;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, SmStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, SmStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let db = crate::state_machine::open_db(&dir.path().join("meta"))
            .map_err(|e| openraft::StorageIOError::write(&e))?;
        let sm = Arc::new(
            StateMachine::with_db(db.clone()).map_err(|e| openraft::StorageIOError::write(&e))?,
        );
        Ok((dir, LogStore::new(&db)?, SmStore::new(sm)?))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}
