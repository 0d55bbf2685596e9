//! TEMPORARY STUB — being replaced by the real SQLite broker.
#![allow(missing_docs)]
use super::*;
pub struct SqliteBroker;
impl SqliteBroker {
    pub async fn open_url(_url: &str) -> Result<Self, BrokerError> { Ok(SqliteBroker) }
}
fn no() -> BrokerError { BrokerError::Unsupported { broker: "stub", operation: "anything" } }
#[async_trait]
impl Broker for SqliteBroker {
    fn capabilities(&self) -> Capabilities { Capabilities { delayed_delivery: true, leases: true, priority: PriorityOrder::HigherFirst, dead_letters: true } }
    fn describe(&self) -> String { "stub".into() }
    async fn declare_queue(&self, _queue: &Queue) -> Result<(), BrokerError> { Ok(()) }
    async fn publish(&self, _messages: Vec<Publish>) -> Result<(), BrokerError> { Err(no()) }
    async fn fetch(&self, _params: &FetchParams) -> Result<Vec<Delivery>, BrokerError> { Err(no()) }
    async fn ack(&self, _tags: &[DeliveryTag]) -> Result<(), BrokerError> { Err(no()) }
    async fn reject(&self, _tag: &DeliveryTag, _action: RejectAction) -> Result<(), BrokerError> { Err(no()) }
    async fn renew_leases(&self, _tags: &[DeliveryTag], _lease: Duration) -> Result<(), BrokerError> { Err(no()) }
    async fn restore_expired(&self) -> Result<u64, BrokerError> { Err(no()) }
    async fn purge(&self, _queue: &str) -> Result<u64, BrokerError> { Err(no()) }
    async fn queue_stats(&self, _queues: &[String]) -> Result<Vec<QueueStats>, BrokerError> { Err(no()) }
    async fn dead_letters(&self, _query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, BrokerError> { Err(no()) }
}
