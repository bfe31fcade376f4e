//! What the commands open from the configuration and share: the analyst API and its
//! listener, the store's bucket, the rules and policies, the watch that reloads them, the ingest settings and the
//! signer, lifecycle changes, a Kafka producer's send. A command module (`*_cmd.rs`) uses
//! these and the stage crates, never another command module (`scripts/test.sh` checks).

pub mod alerts;
pub mod api;
pub mod api_listen;
pub mod bucket;
pub mod pipeline;
pub mod policy;
pub mod produce;
pub mod retention;
pub mod rules;
pub mod rules_watch;
