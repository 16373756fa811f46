//! The pipeline: an on-disk byte-bounded cache with two priority queues, batching into security messages, timers and statistics (SPEC §5).
