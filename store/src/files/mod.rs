//! The file layer: where files live, how they are written atomically and durably, and how a
//! partition's files are found again.
//!
//! ```text
//! DATA_DIR/events/topic=T/partition=P/date=YYYY-MM-DD/hour=HH/FFFFFFFFFFFFFFFFFFFF-LLLLLLLLLLLLLLLLLLLL.parquet
//! ```
//! F and L are the first and last Kafka offsets in the file, zero-padded so names sort. A file
//! sits under the UTC hour of its earliest event; it holds one contiguous run of its
//! partition's chain. Everything the rest of Vigil needs goes through [`Store`]; with a bucket,
//! a file is put there before its local rename ([`crate::bucket`]). `footer.rs` reads a file's
//! footer back.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::batch::{BatchSpan, ChainHead, LogHead, SealedBatch};
use crate::chain::to_hex;
use crate::error::StoreError;
use crate::schema::{STORE_FORMAT, meta};

mod claim;
mod footer;

pub use footer::{Footer, read_footer};

/// How files are written.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// zstd level for every column (1 = fastest).
    pub zstd_level: i32,
    /// Most rows per Parquet row group; `None`: one row group per file.
    pub max_row_group_rows: Option<usize>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            zstd_level: 1,
            max_row_group_rows: None,
        }
    }
}

/// A sealed, durable file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub path: PathBuf,
    pub first_offset: i64,
    pub last_offset: i64,
    pub bytes: u64,
}

/// A stored file as listed: offsets from its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub path: PathBuf,
    pub first_offset: i64,
    pub last_offset: i64,
}

const TMP_PREFIX: &str = ".tmp-";

/// Whether a file name is one of [`write_durably`]'s temp files (not yet, or never, a file).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TMP_PREFIX)
}

/// The temp file a durable write of `name` goes through: hidden, and never ending as the
/// file it will become (a listing by extension, such as SQL's over `*.parquet`, must not
/// pick up a file still being written or about to be renamed away).
pub(crate) fn temp_name(name: &str) -> String {
    format!("{TMP_PREFIX}{}-{name}.partial", std::process::id())
}

/// Kafka's own rule for topic names: `[a-zA-Z0-9._-]{1,249}`. Anything else never reaches a path.
pub(crate) fn validate_topic(topic: &str) -> Result<(), StoreError> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidTopic(topic.to_owned()))
    }
}

/// The store in a local directory, and (when it has one) in its bucket: a file is put into
/// the bucket before it gets its final local name ([`crate::bucket`]).
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    opts: WriteOptions,
    bucket: Option<std::sync::Arc<crate::bucket::Bucket>>,
    /// The logs this store's writers hold in the bucket, shared by its clones.
    claims: claim::Claims,
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(dir))
}

/// A path's directory; `.` for a bare relative name (whose `parent()` is the empty path).
fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    })
}

/// `create_dir_all`, making each new directory entry durable in its parent.
pub(crate) fn create_dirs_durably(dir: &Path) -> Result<(), StoreError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = parent_dir(dir) {
        create_dirs_durably(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(StoreError::io(dir)(e)),
    }
    if let Some(parent) = parent_dir(dir) {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Replace `path` with `bytes` atomically and durably: temp file, fsync, rename, fsync the
/// directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_durably_with(path, |w| w.write_all(bytes))
}

/// [`write_durably`] with the content streamed by `write` (through a buffer) instead of held
/// in memory whole: for large files such as the detection state.
pub fn write_durably_with(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), StoreError> {
    use std::io::Write;
    let dir = parent_dir(path).ok_or(StoreError::Internal("file without a directory"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or(StoreError::Internal("file name"))?;
    let tmp = dir.join(temp_name(name));
    let f = File::create(&tmp).map_err(StoreError::io(&tmp))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    write(&mut w)
        .and_then(|()| w.flush())
        .map_err(StoreError::io(&tmp))?;
    let f = w
        .into_inner()
        .map_err(|e| StoreError::io(&tmp)(e.into_error()))?;
    f.sync_all().map_err(StoreError::io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(StoreError::io(path))?;
    fsync_dir(dir)
}

impl Store {
    /// Open (creating if needed) the store under `data_dir`.
    pub fn open(data_dir: impl Into<PathBuf>, opts: WriteOptions) -> Result<Store, StoreError> {
        let root = data_dir.into();
        if !root.exists() {
            // Its owner's alone, whatever the umask.
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(StoreError::io(&root))?;
        } else if let Ok(m) = fs::metadata(&root) {
            use std::os::unix::fs::PermissionsExt;
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(data_dir = %root.display(), mode = format!("{mode:o}"),
                    "the data directory is open to other users: chmod 700 it");
            }
        }
        create_dirs_durably(&crate::layout::events(&root))?;
        Ok(Store {
            root,
            opts,
            bucket: None,
            claims: Default::default(),
        })
    }

    /// Every file this store writes from now on is in `bucket` too, acknowledged by it before
    /// [`Store::write`] returns. The local directory should be [`crate::Bucket::pull`]ed
    /// first (once per process, before any store on it is opened).
    pub fn with_bucket(mut self, bucket: std::sync::Arc<crate::bucket::Bucket>) -> Store {
        self.bucket = Some(bucket);
        self
    }

    /// The bucket the store is kept in, if any.
    pub fn bucket(&self) -> Option<&std::sync::Arc<crate::bucket::Bucket>> {
        self.bucket.as_ref()
    }

    /// Open an existing store without creating or changing anything (for verification).
    pub fn open_existing(data_dir: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root: PathBuf = data_dir.into();
        if !root.is_dir() {
            return Err(StoreError::io(&root)(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such store directory",
            )));
        }
        Ok(Store {
            root,
            opts: WriteOptions::default(),
            bucket: None,
            claims: Default::default(),
        })
    }

    /// Where all event files live (what SQL reads).
    /// The data directory the store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.root
    }

    pub fn events_dir(&self) -> PathBuf {
        crate::layout::events(&self.root)
    }

    pub(crate) fn partition_dir(&self, topic: &str, partition: i32) -> Result<PathBuf, StoreError> {
        validate_topic(topic)?;
        Ok(self
            .events_dir()
            .join(format!("topic={topic}"))
            .join(format!("partition={partition}")))
    }

    fn file_path(&self, span: &BatchSpan) -> Result<PathBuf, StoreError> {
        let t = chrono::DateTime::from_timestamp_nanos(span.min_event_time_ns);
        Ok(self
            .partition_dir(&span.topic, span.partition)?
            .join(format!("date={}", t.format("%Y-%m-%d")))
            .join(format!("hour={}", t.format("%H")))
            .join(format!(
                "{:020}-{:020}.parquet",
                span.first_offset, span.last_offset
            )))
    }

    /// Write a sealed batch as one file: temp file, fsync, rename, fsync the directory. When
    /// this returns, the file and its name are durable.
    pub fn write(&self, sealed: &SealedBatch) -> Result<FileInfo, StoreError> {
        self.write_file(sealed, None)
    }

    /// [`Store::write`] of a compaction's file, which replaces the files `run` (removed by
    /// the caller afterwards): with a bucket, the log's head is moved over it.
    pub(crate) fn write_compacted(
        &self,
        sealed: &SealedBatch,
        run: &[PathBuf],
    ) -> Result<FileInfo, StoreError> {
        self.write_file(sealed, Some(run))
    }

    fn write_file(
        &self,
        sealed: &SealedBatch,
        replacing: Option<&[PathBuf]>,
    ) -> Result<FileInfo, StoreError> {
        let span = &sealed.span;
        let path = self.file_path(span)?;
        let dir = parent_dir(&path).ok_or(StoreError::Internal("file without a directory"))?;
        create_dirs_durably(dir)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or(StoreError::Internal("file name"))?;
        let tmp = dir.join(temp_name(name));

        let kv = |k: &str, v: String| KeyValue::new(k.to_owned(), v);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(self.opts.zstd_level)?))
            .set_max_row_group_row_count(Some(
                self.opts.max_row_group_rows.unwrap_or(sealed.rows()).max(1),
            ))
            .set_statistics_enabled(EnabledStatistics::Page)
            // Raw bytes and hashes are incompressible by dictionaries and useless as min/max.
            .set_column_dictionary_enabled("raw".into(), false)
            .set_column_statistics_enabled("raw".into(), EnabledStatistics::None)
            .set_column_dictionary_enabled("kafka_value".into(), false)
            .set_column_statistics_enabled("kafka_value".into(), EnabledStatistics::None)
            .set_column_dictionary_enabled("leaf_hash".into(), false)
            .set_column_statistics_enabled("leaf_hash".into(), EnabledStatistics::None)
            .set_column_dictionary_enabled("chain_hash".into(), false)
            .set_column_statistics_enabled("chain_hash".into(), EnabledStatistics::None)
            .set_key_value_metadata(Some(vec![
                kv(meta::FORMAT, STORE_FORMAT.to_owned()),
                kv(meta::TOPIC, span.topic.clone()),
                kv(meta::PARTITION, span.partition.to_string()),
                kv(meta::FIRST_OFFSET, span.first_offset.to_string()),
                kv(meta::LAST_OFFSET, span.last_offset.to_string()),
                kv(meta::FIRST_CHAIN_HASH, to_hex(&span.first_chain_hash)),
                kv(meta::LAST_CHAIN_HASH, to_hex(&span.last_chain_hash)),
                kv(meta::PREV_CHAIN_HASH, to_hex(&span.prev.hash)),
                kv(meta::PREV_OFFSET, span.prev.offset.to_string()),
                kv(meta::RECORDS, span.records.to_string()),
                kv(meta::FIRST_LEAF_INDEX, span.first_leaf_index.to_string()),
                kv(meta::TREE_SIZE, span.tree.size().to_string()),
                kv(meta::MERKLE_ROOT, to_hex(&span.tree.root())),
                kv(meta::MERKLE_FRONTIER, span.tree.encode()),
            ]))
            .build();

        let file = File::create(&tmp).map_err(StoreError::io(&tmp))?;
        let mut writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            crate::schema::store_schema(),
            Some(props),
        )?;
        for b in &sealed.batches {
            writer.write(b)?;
        }
        let file = writer
            .into_inner()?
            .into_inner()
            .map_err(|e| StoreError::io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(StoreError::io(&tmp))?;
        let bytes = file.metadata().map_err(StoreError::io(&tmp))?.len();
        drop(file);
        if let Some(bucket) = &self.bucket {
            // Acknowledged by the bucket, and named by the log's head there, before the file
            // has its name here: a final name locally always means "in the log". Fenced when
            // another writer has the log (a retried put of the same bytes is fine).
            let content = fs::read(&tmp).map_err(StoreError::io(&tmp))?;
            let put = match replacing {
                None => self.put_file(bucket, span, &path, content),
                Some(run) => self.put_compacted(bucket, span, &path, content, run),
            };
            if let Err(e) = put {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
        fs::rename(&tmp, &path).map_err(StoreError::io(&path))?;
        fsync_dir(dir)?;
        Ok(FileInfo {
            path,
            first_offset: span.first_offset,
            last_offset: span.last_offset,
            bytes,
        })
    }

    /// What is under `events/` that Vigil does not write there, and why: anything but
    /// `topic=T/partition=P/date=YYYY-MM-DD/hour=HH/` directories holding data files named by
    /// their offsets (and temp files being written). Symbolic links are strays too.
    pub(crate) fn strays(&self) -> Result<Vec<(PathBuf, String)>, StoreError> {
        fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, fs::FileType)>, StoreError> {
            let mut out = Vec::new();
            for e in fs::read_dir(dir).map_err(StoreError::io(dir))? {
                let e = e.map_err(StoreError::io(dir))?;
                let t = e.file_type().map_err(StoreError::io(&e.path()))?;
                out.push((e.file_name().to_string_lossy().into_owned(), e.path(), t));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        }
        let mut out = Vec::new();
        let root = self.events_dir();
        if !root.is_dir() {
            return Ok(out);
        }
        // Each level's directory names: prefix, and what may follow it.
        type Valid = fn(&str) -> bool;
        let levels: [(&str, Valid); 4] = [
            ("topic=", |t| validate_topic(t).is_ok()),
            ("partition=", |p| p.parse::<i32>().is_ok_and(|p| p >= 0)),
            ("date=", |d| {
                chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok()
            }),
            ("hour=", |h| {
                h.len() == 2 && h.parse::<u8>().is_ok_and(|h| h < 24)
            }),
        ];
        let mut dirs = vec![(root, 0usize)];
        while let Some((dir, depth)) = dirs.pop() {
            for (name, path, t) in entries(&dir)? {
                if t.is_symlink() {
                    out.push((path, "a symbolic link (Vigil writes none)".into()));
                    continue;
                }
                if let Some((prefix, ok)) = levels.get(depth) {
                    match name.strip_prefix(prefix) {
                        Some(v) if t.is_dir() && ok(v) => dirs.push((path, depth + 1)),
                        _ => out.push((path, format!("not a {prefix}… directory Vigil writes"))),
                    }
                } else if !(t.is_file() && (parse_name(&name).is_some() || is_temp_name(&name))) {
                    out.push((path, "not a data file Vigil writes".into()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every (topic, partition) that has files.
    pub fn partitions(&self) -> Result<Vec<crate::LogId>, StoreError> {
        partitions_under(&self.events_dir())
    }

    /// A partition's files in offset order. Leftover temp files (from a crash mid-write) are
    /// reported in the second list; they are not part of the store.
    pub fn list(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(Vec<FileEntry>, Vec<PathBuf>), StoreError> {
        let (mut files, mut tmp) = (Vec::new(), Vec::new());
        let pdir = self.partition_dir(topic, partition)?;
        for date in read_dir_names(&pdir)? {
            for hour in read_dir_names(&pdir.join(&date))? {
                let dir = pdir.join(&date).join(&hour);
                for name in read_dir_names(&dir)? {
                    let path = dir.join(&name);
                    if is_temp_name(&name) {
                        tmp.push(path);
                    } else if let Some((first, last)) = parse_name(&name) {
                        files.push(FileEntry {
                            path,
                            first_offset: first,
                            last_offset: last,
                        });
                    }
                }
            }
        }
        files.sort_by_key(|f| f.first_offset);
        Ok((files, tmp))
    }

    /// Where a partition log stands in the store: the last stored record's offset and chain
    /// hash and the Merkle tree's frontier, or genesis. Removes temp files a crash left behind,
    /// and refuses a store whose files overlap or whose last footer disagrees with its name or
    /// with itself.
    pub fn head(&self, topic: &str, partition: i32) -> Result<LogHead, StoreError> {
        let (mut files, tmp) = self.list(topic, partition)?;
        for t in tmp {
            tracing::warn!(path = %t.display(), "removing a partial file left by an interrupted write");
            fs::remove_file(&t).map_err(StoreError::io(&t))?;
        }
        // An interrupted compaction leaves the files it replaced beside the file that replaced
        // them (written first, complete and durable). They are removed only when they are
        // exactly that file's run: same ends of the chain, same records.
        for c in files.clone() {
            let inside: Vec<&FileEntry> = files
                .iter()
                .filter(|f| {
                    c.first_offset <= f.first_offset
                        && f.last_offset <= c.last_offset
                        && (f.first_offset, f.last_offset) != (c.first_offset, c.last_offset)
                })
                .collect();
            if inside.is_empty() {
                continue;
            }
            let cf = read_footer(&c.path)?;
            let parts: Vec<Footer> = inside
                .iter()
                .map(|f| read_footer(&f.path))
                .collect::<Result<_, _>>()?;
            let (first, last) = (&parts[0], &parts[parts.len() - 1]);
            let exact = first.prev_offset == cf.prev_offset
                && first.prev_chain_hash == cf.prev_chain_hash
                && last.last_offset == cf.last_offset
                && last.last_chain_hash == cf.last_chain_hash
                && parts.iter().map(|p| p.records).sum::<u64>() == cf.records
                && parts.windows(2).all(|w| {
                    w[1].prev_offset == w[0].last_offset
                        && w[1].prev_chain_hash == w[0].last_chain_hash
                });
            if !exact {
                return Err(StoreError::corrupt(
                    &c.path,
                    "overlaps other files without being their compaction",
                ));
            }
            let gone: Vec<PathBuf> = inside.iter().map(|f| f.path.clone()).collect();
            for p in &gone {
                tracing::warn!(path = %p.display(), "removing a file an interrupted compaction replaced");
                fs::remove_file(p).map_err(StoreError::io(p))?;
            }
            files.retain(|f| !gone.contains(&f.path));
        }
        for w in files.windows(2) {
            if w[1].first_offset <= w[0].last_offset {
                return Err(StoreError::corrupt(
                    &w[1].path,
                    format!("overlaps {}", w[0].path.display()),
                ));
            }
        }
        let Some(last) = files.last() else {
            return Ok(LogHead::default());
        };
        let m = read_footer(&last.path)?;
        if m.last_offset != last.last_offset {
            return Err(StoreError::corrupt(
                &last.path,
                "footer last offset differs from the file name",
            ));
        }
        if m.frontier.size() != m.tree_size || m.frontier.root() != m.merkle_root {
            return Err(StoreError::corrupt(
                &last.path,
                "footer Merkle frontier does not match its tree size and root",
            ));
        }
        Ok(LogHead {
            chain: ChainHead {
                offset: m.last_offset,
                hash: m.last_chain_hash,
            },
            tree: m.frontier,
        })
    }
}

/// The (topic, partition) directories (`topic=T/partition=P`) under `root`, sorted; none if
/// `root` does not exist.
pub fn partitions_under(root: &Path) -> Result<Vec<crate::LogId>, StoreError> {
    let mut out = Vec::new();
    for t in read_dir_names(root)? {
        // Anything else is not Vigil's ([`Store::strays`] says so).
        let Some(topic) = t
            .strip_prefix("topic=")
            .filter(|t| validate_topic(t).is_ok() && real_dir(&root.join(format!("topic={t}"))))
        else {
            continue;
        };
        for p in read_dir_names(&root.join(&t))? {
            if let Some(n) = p
                .strip_prefix("partition=")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0 && real_dir(&root.join(&t).join(&p)))
            {
                out.push(crate::LogId::new(topic, n));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A directory, not a symbolic link to one.
fn real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// The names in a directory, sorted (none if it does not exist).
pub fn read_dir_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(dir)(e)),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(StoreError::io(dir))?;
        if let Ok(name) = e.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

pub(crate) fn parse_name(name: &str) -> Option<(i64, i64)> {
    let stem = name.strip_suffix(".parquet")?;
    let (a, b) = stem.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests;
