//! A finished prompt's outputs: every file with a `filename` and type `output`
//! (images, gifs, videos, audio), fetched through `/view` and stored; names from the
//! backend are checked before they touch a path.

use super::run::{Outcome, RunContext};
use crate::comfy::{ComfyClient, HistoryEntry};
use crate::job::Output;
use crate::storage::{check_name, content_type, kind_of};
use crate::store::Lease;

/// Fetches every output file through `/view` and stores it.
pub(super) async fn collect(
    ctx: &RunContext,
    lease: &Lease,
    client: &ComfyClient,
    entry: &HistoryEntry,
) -> Outcome {
    let job_id = &lease.job_id;
    let mut outputs: Vec<Output> = Vec::new();
    for file in entry.files.iter().filter(|f| f.kind == "output") {
        let name = match stored_name(&file.subfolder, &file.filename) {
            Ok(n) => unique(n, &outputs),
            Err(why) => {
                tracing::warn!(filename = %file.filename, subfolder = %file.subfolder, why, "refused an output file name from the backend");
                continue;
            }
        };
        let (bytes, _) = match client.view(file).await {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Retry(format!("could not download output {}: {e}", file.filename));
            }
        };
        let stored = match ctx.images.put(job_id, &name, &bytes).await {
            Ok(s) => s,
            Err(e) => return Outcome::Retry(format!("could not store output {name}: {e}")),
        };
        let ctype = content_type(&stored.name);
        outputs.push(Output {
            node: file.node.clone(),
            filename: stored.name.clone(),
            kind: kind_of(ctype).to_owned(),
            content_type: ctype.to_owned(),
            url: format!(
                "{}/images/{}/{}",
                ctx.config.public_url, job_id, stored.name
            ),
            size: stored.size,
        });
    }
    if outputs.is_empty() {
        return Outcome::Failed(
            "the workflow finished but saved no output file (it needs a SaveImage or another save node)".into(),
        );
    }
    let image_url = outputs
        .iter()
        .find(|o| o.kind == "image")
        .unwrap_or(&outputs[0])
        .url
        .clone();
    Outcome::Finished { image_url, outputs }
}

/// The name an output is stored under: its file name, prefixed by its subfolder when
/// it has one, every part checked (no `..`, no absolute paths, no odd characters).
fn stored_name(subfolder: &str, filename: &str) -> Result<String, &'static str> {
    check_name(filename).map_err(|_| "bad file name")?;
    if subfolder.is_empty() {
        return Ok(filename.to_owned());
    }
    if subfolder.starts_with('/') || subfolder.starts_with('\\') {
        return Err("absolute subfolder");
    }
    let mut parts = Vec::new();
    for part in subfolder.split(['/', '\\']).filter(|p| !p.is_empty()) {
        check_name(part).map_err(|_| "bad subfolder")?;
        parts.push(part);
    }
    parts.push(filename);
    let name = parts.join("_");
    check_name(&name).map_err(|_| "name too long")?;
    Ok(name)
}

/// Makes a name unique among the outputs already stored for this job.
fn unique(name: String, taken: &[Output]) -> String {
    if !taken.iter().any(|o| o.filename == name) {
        return name;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) => (s.to_owned(), format!(".{e}")),
        None => (name.clone(), String::new()),
    };
    (2..)
        .map(|i| format!("{stem}-{i}{ext}"))
        .find(|n| !taken.iter().any(|o| &o.filename == n))
        .expect("some suffix is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_from_a_misbehaving_backend_are_refused() {
        assert_eq!(stored_name("", "a.png").unwrap(), "a.png");
        assert_eq!(stored_name("x/y", "a.png").unwrap(), "x_y_a.png");
        assert!(stored_name("", "../a.png").is_err());
        assert!(stored_name("../..", "a.png").is_err());
        assert!(stored_name("/etc", "a.png").is_err());
        assert!(stored_name("", "/etc/passwd").is_err());
        assert!(stored_name("", ".bashrc").is_err());
        assert!(stored_name("a", "b\u{0}.png").is_err());
    }
}
