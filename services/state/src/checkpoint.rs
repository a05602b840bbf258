//! Checkpoints: a partition's state as Arrow IPC files plus a manifest with
//! the input offsets that state reflects, in any `object_store` store.
//!
//! Layout under the store's root, per operator and partition:
//!
//! ```text
//! <operator>/p<partition>/manifest.json          the commit point
//! <operator>/p<partition>/<id>/<table>.arrow     one Arrow IPC file per table
//! ```
//!
//! A save writes the table files first and the manifest last; an object
//! store replaces an object whole (the local store writes a temporary file
//! and renames it), so a reader sees the old checkpoint or the new one,
//! never a mix. After a save, files of checkpoints older than the previous
//! one are deleted: the previous one stays for a reader that loaded its
//! manifest a moment ago.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One partition's state and the offsets it reflects.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// Next offset to read per input topic (full broker name).
    pub offsets: BTreeMap<String, i64>,
    /// Next offset per partition of each of the operator's output topics
    /// (full broker name): every change of this state published before the
    /// checkpoint lies below it. A restored worker reads the outputs from
    /// here to learn what its killed predecessor published after the
    /// checkpoint.
    pub published: BTreeMap<String, BTreeMap<i32, i64>>,
    /// The state tables, by name.
    pub tables: Vec<(String, RecordBatch)>,
    /// When it was taken, ms since the epoch.
    pub created_ms: i64,
}

impl Checkpoint {
    /// Rows over all tables.
    pub fn rows(&self) -> usize {
        self.tables.iter().map(|(_, b)| b.num_rows()).sum()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    id: String,
    previous: Option<String>,
    created_ms: i64,
    offsets: BTreeMap<String, i64>,
    #[serde(default)]
    published: BTreeMap<String, BTreeMap<i32, i64>>,
    tables: Vec<String>,
}

/// Where checkpoints live.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    describe: String,
}

impl CheckpointStore {
    /// The store named by `url` (`worker.checkpoint.url`): empty for
    /// `<data_dir>/checkpoints`, `memory:` for a store that lives as long
    /// as this value, `file:///dir` or a plain path for a local directory
    /// (created if missing).
    pub fn open(url: &str, data_dir: &Path) -> Result<Self> {
        if url == "memory:" {
            return Ok(Self::in_memory());
        }
        let dir = match url {
            "" => data_dir.join("checkpoints"),
            u => Path::new(u.strip_prefix("file://").unwrap_or(u)).to_path_buf(),
        };
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::Store(object_store::Error::Generic {
                store: "local",
                source: format!("creating checkpoint directory {}: {e}", dir.display()).into(),
            })
        })?;
        // Empty directories of deleted checkpoints go too.
        let fs = LocalFileSystem::new_with_prefix(&dir)?.with_automatic_cleanup(true);
        Ok(CheckpointStore {
            store: Arc::new(fs),
            describe: dir.display().to_string(),
        })
    }

    /// A store in memory (tests).
    pub fn in_memory() -> Self {
        CheckpointStore {
            store: Arc::new(InMemory::new()),
            describe: "memory".into(),
        }
    }

    /// Where the store is, for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn dir(operator: &str, partition: i32) -> String {
        format!("{operator}/p{partition}")
    }

    async fn manifest(&self, operator: &str, partition: i32) -> Result<Option<Manifest>> {
        let path = ObjPath::from(format!("{}/manifest.json", Self::dir(operator, partition)));
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Manifest {
                path: path.to_string(),
                source,
            })
    }

    /// Saves `cp` as the newest checkpoint of `operator`'s `partition`;
    /// returns the bytes written.
    pub async fn save(&self, operator: &str, partition: i32, cp: &Checkpoint) -> Result<u64> {
        let dir = Self::dir(operator, partition);
        let previous = self.manifest(operator, partition).await?;
        let id = format!("{}-{}", cp.created_ms, std::process::id());
        let mut bytes = 0u64;
        for (name, batch) in &cp.tables {
            let path = ObjPath::from(format!("{dir}/{id}/{name}.arrow"));
            let data = ipc(batch).map_err(|source| Error::Ipc {
                path: path.to_string(),
                source,
            })?;
            bytes += data.len() as u64;
            self.store.put(&path, PutPayload::from(data)).await?;
        }
        let manifest = Manifest {
            version: 1,
            id: id.clone(),
            previous: previous.as_ref().map(|m| m.id.clone()),
            created_ms: cp.created_ms,
            offsets: cp.offsets.clone(),
            published: cp.published.clone(),
            tables: cp.tables.iter().map(|(n, _)| n.clone()).collect(),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|source| Error::Manifest {
            path: format!("{dir}/manifest.json"),
            source,
        })?;
        bytes += json.len() as u64;
        self.store
            .put(
                &ObjPath::from(format!("{dir}/manifest.json")),
                PutPayload::from(json),
            )
            .await?;
        // Keep this checkpoint and the one before it.
        let keep = [Some(id), previous.map(|m| m.id)];
        let prefix = ObjPath::from(dir.clone());
        let old: Vec<ObjPath> = self
            .store
            .list(Some(&prefix))
            .try_filter_map(|meta| {
                let parts: Vec<_> = meta.location.parts().collect();
                let stale = parts.len() >= 4
                    && !keep
                        .iter()
                        .flatten()
                        .any(|k| k.as_str() == parts[parts.len() - 2].as_ref());
                futures::future::ready(Ok(stale.then_some(meta.location)))
            })
            .try_collect()
            .await?;
        for p in old {
            match self.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(bytes)
    }

    /// The newest checkpoint of `operator`'s `partition`, if any.
    pub async fn load(&self, operator: &str, partition: i32) -> Result<Option<Checkpoint>> {
        let Some(m) = self.manifest(operator, partition).await? else {
            return Ok(None);
        };
        let dir = Self::dir(operator, partition);
        let mut tables = Vec::with_capacity(m.tables.len());
        for name in &m.tables {
            let path = ObjPath::from(format!("{dir}/{}/{name}.arrow", m.id));
            let data = self.store.get(&path).await?.bytes().await?;
            let batch = read_ipc(&data).map_err(|source| Error::Ipc {
                path: path.to_string(),
                source,
            })?;
            tables.push((name.clone(), batch));
        }
        Ok(Some(Checkpoint {
            offsets: m.offsets,
            published: m.published,
            tables,
            created_ms: m.created_ms,
        }))
    }
}

fn ipc(batch: &RecordBatch) -> std::result::Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
    let mut w = FileWriter::try_new(Vec::new(), &batch.schema())?;
    w.write(batch)?;
    w.into_inner()
}

fn read_ipc(data: &[u8]) -> std::result::Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let reader = FileReader::try_new(Cursor::new(data), None)?;
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.collect::<std::result::Result<_, _>>()?;
    datafusion::arrow::compute::concat_batches(&schema, &batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};

    fn batch(n: i64) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("k", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
            ("v", Arc::new(Int64Array::from(vec![n, n + 1])) as ArrayRef),
        ])
        .unwrap()
    }

    fn cp(n: i64) -> Checkpoint {
        Checkpoint {
            offsets: BTreeMap::from([("t".to_owned(), n)]),
            published: BTreeMap::from([("out".to_owned(), BTreeMap::from([(2, n * 10)]))]),
            tables: vec![("x".into(), batch(n))],
            created_ms: n,
        }
    }

    #[tokio::test]
    async fn saves_load_back_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open("", dir.path()).unwrap();
        assert!(store.load("op", 0).await.unwrap().is_none());
        for n in 1..=4 {
            let bytes = store.save("op", 0, &cp(n)).await.unwrap();
            assert!(bytes > 0);
        }
        let got = store.load("op", 0).await.unwrap().unwrap();
        assert_eq!(got.offsets["t"], 4);
        assert_eq!(got.published["out"][&2], 40);
        assert_eq!(got.tables[0].1, batch(4));
        assert_eq!(got.rows(), 2);
        // Only this checkpoint and the one before it are left.
        let dirs: Vec<_> = std::fs::read_dir(dir.path().join("checkpoints/op/p0"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "manifest.json")
            .collect();
        assert_eq!(dirs.len(), 2, "{dirs:?}");
        // Other partitions are separate.
        assert!(store.load("op", 1).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_corrupt_manifest_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("op/p3")).unwrap();
        std::fs::write(dir.path().join("op/p3/manifest.json"), b"{oops").unwrap();
        let e = store.load("op", 3).await.unwrap_err().to_string();
        assert!(e.contains("op/p3/manifest.json"), "{e}");
    }
}
