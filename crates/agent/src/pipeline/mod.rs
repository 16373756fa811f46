//! The pipeline (SPEC §5): an on-disk byte-bounded cache with two priority queues (`cache`),
//! and the decisions around it: priorities, splitting, when a message is due, packing it up to
//! `maxMessageSizeInBytes`, retries and the statistics events (`batch`).
pub mod aggregate;
pub mod batch;
pub mod cache;
