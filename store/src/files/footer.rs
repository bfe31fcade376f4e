//! A file's footer: the chain facts every file carries in its Parquet key-value metadata,
//! read back and checked for form (not for truth: that is `verify`'s).

use std::fs::File;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::chain::from_hex;
use crate::error::StoreError;
use crate::merkle::Frontier;
use crate::schema::meta;

/// The chain facts in a file's footer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub first_chain_hash: [u8; 32],
    pub last_chain_hash: [u8; 32],
    pub prev_chain_hash: [u8; 32],
    pub prev_offset: i64,
    pub records: u64,
    pub first_leaf_index: u64,
    pub tree_size: u64,
    pub merkle_root: [u8; 32],
    pub frontier: Frontier,
}

/// Read and parse a file's footer metadata.
pub fn read_footer(path: &Path) -> Result<Footer, StoreError> {
    let file = File::open(path).map_err(StoreError::io(path))?;
    let reader = SerializedFileReader::new(file)?;
    let kvs = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let get = |k: &str| -> Result<String, StoreError> {
        kvs.iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.clone())
            .ok_or_else(|| StoreError::corrupt(path, format!("footer lacks {k}")))
    };
    let num = |k: &str| -> Result<i64, StoreError> {
        get(k)?
            .parse()
            .map_err(|_| StoreError::corrupt(path, format!("footer {k} is not a number")))
    };
    let hash = |k: &str| -> Result<[u8; 32], StoreError> {
        from_hex(&get(k)?)
            .ok_or_else(|| StoreError::corrupt(path, format!("footer {k} is not a hash")))
    };
    Ok(Footer {
        topic: get(meta::TOPIC)?,
        partition: num(meta::PARTITION)? as i32,
        first_offset: num(meta::FIRST_OFFSET)?,
        last_offset: num(meta::LAST_OFFSET)?,
        first_chain_hash: hash(meta::FIRST_CHAIN_HASH)?,
        last_chain_hash: hash(meta::LAST_CHAIN_HASH)?,
        prev_chain_hash: hash(meta::PREV_CHAIN_HASH)?,
        prev_offset: num(meta::PREV_OFFSET)?,
        records: num(meta::RECORDS)? as u64,
        first_leaf_index: num(meta::FIRST_LEAF_INDEX)? as u64,
        tree_size: num(meta::TREE_SIZE)? as u64,
        merkle_root: hash(meta::MERKLE_ROOT)?,
        frontier: Frontier::decode(&get(meta::MERKLE_FRONTIER)?)
            .map_err(|e| StoreError::corrupt(path, e.to_string()))?,
    })
}
