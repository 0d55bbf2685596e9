//! TEMPORARY STUB — being replaced by the real SQLite result backend.
#![allow(missing_docs)]
use super::*;
pub struct SqliteBackend;
impl SqliteBackend {
    pub async fn open_url(_url: &str) -> Result<Self, BackendError> { Ok(SqliteBackend) }
}
fn no() -> BackendError { BackendError::InvalidUrl { url: "stub".into(), reason: "stub".into() } }
#[async_trait]
impl ResultBackend for SqliteBackend {
    fn describe(&self) -> String { "stub".into() }
    async fn store(&self, _meta: &TaskMeta, _expires: Option<Duration>) -> Result<StoreOutcome, BackendError> { Err(no()) }
    async fn get(&self, _task_id: &str) -> Result<Option<TaskMeta>, BackendError> { Err(no()) }
    async fn wait(&self, _task_id: &str, _timeout: Duration) -> Result<Option<TaskMeta>, BackendError> { Err(no()) }
    async fn forget(&self, _task_id: &str) -> Result<(), BackendError> { Err(no()) }
    async fn cleanup_expired(&self) -> Result<u64, BackendError> { Err(no()) }
}
