//! Where the API's queries run: their own tokio runtime (none of ingest's, detection's or the
//! API's other threads), a semaphore of places (one more query than allowed is refused at
//! once), and a memory pool all running queries share (each query's own pool reserves from its
//! cap and the shared one). A query runs, is planned and encoded there, under the sandbox of
//! [`super::sql`], and is stopped at its timeout.

use std::sync::Arc;
use std::time::Duration;

use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool,
};

use super::sql::{Answer, Format, Limits, QueryFail, encode, execute, session_fail};

/// How queries share the process: their threads, how many run at once, their memory together.
#[derive(Clone, Copy, Debug)]
pub struct Sharing {
    /// Worker threads of the query runtime (none of ingest's, detection's or the API's own).
    pub threads: usize,
    /// Queries running at once; one more is refused (429).
    pub max_concurrent: usize,
    /// Memory of all running queries together.
    pub memory_total_bytes: usize,
}

/// One query's share of the memory all queries share: its own cap and the common one, both
/// held for every byte it reserves.
#[derive(Debug)]
struct QueryPool {
    own: TrackConsumersPool<GreedyMemoryPool>,
    shared: Arc<GreedyMemoryPool>,
    total: usize,
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a query's memory, within {} bytes for all", self.total)
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "vigil-query"
    }
    fn register(&self, c: &MemoryConsumer) {
        self.own.register(c)
    }
    fn unregister(&self, c: &MemoryConsumer) {
        self.own.unregister(c)
    }
    fn grow(&self, r: &MemoryReservation, additional: usize) {
        self.own.grow(r, additional);
        self.shared.grow(r, additional);
    }
    fn shrink(&self, r: &MemoryReservation, shrink: usize) {
        self.own.shrink(r, shrink);
        self.shared.shrink(r, shrink);
    }
    fn try_grow(&self, r: &MemoryReservation, additional: usize) -> datafusion::error::Result<()> {
        self.own.try_grow(r, additional)?;
        if self.shared.try_grow(r, additional).is_err() {
            self.own.shrink(r, additional);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "all running queries together may use {} bytes, and the others hold the rest",
                self.total
            )));
        }
        Ok(())
    }
    fn reserved(&self) -> usize {
        self.own.reserved()
    }
    fn memory_limit(&self) -> MemoryLimit {
        self.own.memory_limit()
    }
}

/// A runtime that is shut down without waiting (a query that never yields must not hold up
/// the process's exit; a runtime dropped inside another would panic).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs queries on their own threads, so many at once, in memory they share.
#[derive(Clone)]
pub struct Runner {
    /// Held for `handle`: the runtime lives as long as a clone of the runner.
    _rt: Arc<OwnRuntime>,
    handle: tokio::runtime::Handle,
    permits: Arc<tokio::sync::Semaphore>,
    shared: Arc<GreedyMemoryPool>,
    pub limits: Limits,
    pub sharing: Sharing,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("limits", &self.limits)
            .field("sharing", &self.sharing)
            .finish_non_exhaustive()
    }
}

impl Runner {
    pub fn new(limits: Limits, sharing: Sharing) -> std::io::Result<Runner> {
        assert!(sharing.threads > 0 && sharing.max_concurrent > 0);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(sharing.threads)
            .max_blocking_threads(sharing.threads.max(2) * 2)
            .thread_name("vigil-query")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        Ok(Runner {
            _rt: Arc::new(OwnRuntime(Some(rt))),
            handle,
            permits: Arc::new(tokio::sync::Semaphore::new(sharing.max_concurrent)),
            shared: Arc::new(GreedyMemoryPool::new(sharing.memory_total_bytes)),
            limits,
            sharing,
        })
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.sharing.max_concurrent - self.permits.available_permits()
    }

    /// Run one statement over the store's tables, its answer encoded as `format`. Refused at
    /// once when as many queries as may are running; stopped at the timeout (its threads are
    /// freed at its next step: a single step is bounded by the function caps).
    pub async fn run(
        &self,
        catalog: Arc<crate::Catalog>,
        sql: String,
        format: Format,
    ) -> Result<Answer, QueryFail> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| QueryFail::Busy(self.sharing.max_concurrent))?;
        let limits = self.limits;
        let pool: Arc<dyn MemoryPool> = Arc::new(QueryPool {
            own: TrackConsumersPool::new(
                GreedyMemoryPool::new(limits.memory_bytes),
                std::num::NonZeroUsize::new(3).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
            shared: self.shared.clone(),
            total: self.sharing.memory_total_bytes,
        });
        let task = self.handle.spawn(async move {
            // Held until the query really ends, timed out or not.
            let _permit = permit;
            let ctx = catalog
                .session_in(pool)
                .await
                .map_err(|e| session_fail(e, &limits))?;
            let out = execute(&ctx, &sql, &limits).await?;
            encode(out, format, limits.max_result_bytes)
        });
        let abort = task.abort_handle();
        match tokio::time::timeout(Duration::from_millis(limits.timeout_ms), task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(QueryFail::Store(format!("the query stopped: {e}"))),
            Err(_) => {
                abort.abort();
                Err(QueryFail::Timeout(limits.timeout_ms))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sql::tests::limits;

    /// An empty store's tables (the directory held as long as they are).
    fn catalog() -> (tempfile::TempDir, Arc<crate::Catalog>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(vigil_store::layout::events(dir.path())).unwrap();
        let catalog = Arc::new(crate::Catalog::open(dir.path()).unwrap());
        (dir, catalog)
    }

    fn runner(threads: usize, max_concurrent: usize, memory_total_bytes: usize) -> Runner {
        let sharing = Sharing {
            threads,
            max_concurrent,
            memory_total_bytes,
        };
        Runner::new(limits(), sharing).unwrap()
    }

    const FOREVER: &str = "SELECT count(*) FROM (SELECT unnest(range(0, 100000)) AS x) a \
                           CROSS JOIN (SELECT unnest(range(0, 100000)) AS x) b \
                           CROSS JOIN (SELECT unnest(range(0, 100000)) AS x) c";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_over_the_cap_are_refused_and_a_stopped_one_frees_its_place() {
        let (_dir, catalog) = catalog();
        let mut r = runner(1, 2, 256 << 20);
        r.limits.timeout_ms = 1500;
        // Two that run for ever hold both places: a third is refused at once.
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let (r, c) = (r.clone(), catalog.clone());
                tokio::spawn(async move { r.run(c, FOREVER.into(), Format::Json).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(r.running(), 2);
        let e = r
            .run(catalog.clone(), "SELECT 1".into(), Format::Json)
            .await
            .unwrap_err();
        assert!(matches!(e, QueryFail::Busy(2)), "{e}");
        assert_eq!(e.status(), 429);
        // They end at their timeout, on time, and their places are free again.
        let started = std::time::Instant::now();
        for h in slow {
            let e = h.await.unwrap().unwrap_err();
            assert!(matches!(e, QueryFail::Timeout(1500)), "{e}");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let freed = std::time::Instant::now();
        while r.running() > 0 {
            assert!(
                freed.elapsed() < Duration::from_secs(10),
                "places not freed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ok = r
            .run(catalog.clone(), "SELECT 1 AS one".into(), Format::Csv)
            .await
            .unwrap();
        assert_eq!(ok.chunks.concat(), b"one\n1\n");
    }

    /// The memory all queries share: a query within its own cap is refused when the others
    /// hold the rest, and gets it once they let go.
    #[test]
    fn memory_is_shared_by_all_queries_together() {
        let shared = Arc::new(GreedyMemoryPool::new(100));
        let pool = || -> Arc<dyn MemoryPool> {
            Arc::new(QueryPool {
                own: TrackConsumersPool::new(
                    GreedyMemoryPool::new(80),
                    std::num::NonZeroUsize::MIN,
                ),
                shared: shared.clone(),
                total: 100,
            })
        };
        let (p, q) = (pool(), pool());
        let a = MemoryConsumer::new("a").register(&p);
        let b = MemoryConsumer::new("b").register(&q);
        a.try_grow(60).unwrap();
        // Its own cap first.
        let e = b.try_grow(90).unwrap_err().to_string();
        assert!(!e.contains("all running queries"), "{e}");
        let e = b.try_grow(60).unwrap_err().to_string();
        assert!(
            e.contains("all running queries together may use 100 bytes"),
            "{e}"
        );
        assert_eq!((q.reserved(), shared.reserved()), (0, 60));
        a.free();
        b.try_grow(60).unwrap();
        assert_eq!((p.reserved(), q.reserved(), shared.reserved()), (0, 60, 60));
        drop(b);
        assert_eq!(shared.reserved(), 0);
    }
}
