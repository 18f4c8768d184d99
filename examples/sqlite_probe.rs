use std::sync::Arc;
use std::time::Instant;
use studio_core::job::NewJob;
use studio_core::store::{JobStore, SqliteStore, StoreSettings};

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir().join(format!("probe-{}", std::process::id()));
    let s: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&dir, StoreSettings::default()).unwrap());
    for conc in [1usize, 32] {
        let t = Instant::now();
        let n = 5000;
        let mut tasks = Vec::new();
        for c in 0..conc {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..n / conc {
                    let j = NewJob::new(format!("p {c} {i}"), 1, "sdxl".into(), Default::default());
                    s.enqueue(&j).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        println!("conc {conc}: {:.0}/s", n as f64 / t.elapsed().as_secs_f64());
    }
    std::fs::remove_dir_all(&dir).ok();
}
