//! A finished prompt's outputs: every file with a `filename` and type `output`
//! (images, gifs, videos, audio), fetched through `/view` and stored; names from the
//! backend are checked before they touch a path.

use super::attempt::{Outcome, RunContext};
use super::convert::{Convert, MAX_CONVERT_BYTES};
use crate::comfy::{ComfyClient, HistoryEntry};
use crate::job::Output;
use crate::storage::{StorageError, check_name, content_type, fit_name, kind_of, url_segment};
use crate::store::Lease;

/// Fetches every output file through `/view` and stores it.
pub(super) async fn collect(
    ctx: &RunContext,
    lease: &Lease,
    client: &ComfyClient,
    entry: &HistoryEntry,
    convert: Option<Convert>,
) -> Outcome {
    let job_id = &lease.job_id;
    let mut outputs: Vec<Output> = Vec::new();
    let max = ctx.config.max_output_bytes;
    for file in entry.files.iter().filter(|f| f.kind == "output") {
        let name = match stored_name(&file.subfolder, &file.filename) {
            Ok(n) => unique(n, &outputs),
            Err(why) => {
                tracing::warn!(filename = %file.filename, subfolder = %file.subfolder, why, "refused an output file name from the backend");
                continue;
            }
        };
        let too_large = || {
            Outcome::Failed(format!(
                "output {} is larger than the {} bytes a worker accepts (--max-output-bytes)",
                file.filename, max
            ))
        };
        let (announced, body) = match client.view(file).await {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Retry(format!("could not download output {}: {e}", file.filename));
            }
        };
        if announced.is_some_and(|n| n > max) {
            return too_large();
        }
        // A PNG to store as another format: read whole (it is bounded), converted,
        // stored under its new name; one that cannot be converted is stored as it
        // came.
        let (name, body) = match convert {
            Some(c)
                if name.to_ascii_lowercase().ends_with(".png")
                    && announced.is_some_and(|n| n <= MAX_CONVERT_BYTES) =>
            {
                match converted(c, body).await {
                    Ok(Ok(bytes)) => (c.rename(&name), one_chunk(bytes)),
                    Ok(Err((why, original))) => {
                        tracing::warn!(file = %name, %why, "output kept as PNG: it could not be converted");
                        (name, one_chunk(original))
                    }
                    Err(error) => {
                        return Outcome::Retry(format!(
                            "the download of output {} broke off: {error}",
                            file.filename
                        ));
                    }
                }
            }
            _ => (name, body),
        };
        let name = unique(name, &outputs);
        let stored = match ctx.images.put_stream(job_id, &name, body, max).await {
            Ok(s) => s,
            Err(StorageError::TooLarge { .. }) => return too_large(),
            Err(StorageError::Source { error, .. }) => {
                return Outcome::Retry(format!(
                    "the download of output {} broke off: {error}",
                    file.filename
                ));
            }
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
                ctx.config.public_url,
                job_id,
                url_segment(&stored.name)
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

/// Reads a PNG whole (its size was announced and is bounded) and converts it:
/// the new bytes, or why not with the original ones; `Err` if the download broke.
async fn converted(
    c: Convert,
    mut body: crate::storage::ByteStream,
) -> Result<Result<Vec<u8>, (String, Vec<u8>)>, String> {
    use futures_util::StreamExt;
    let mut png = Vec::new();
    while let Some(chunk) = body.next().await {
        png.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        if png.len() as u64 > MAX_CONVERT_BYTES {
            return Err("more bytes than announced".into());
        }
    }
    crate::picture::off_runtime(move || c.apply(&png).map_err(|why| (why, png)))
        .await
        .map_err(|e| e.to_string())
}

fn one_chunk(bytes: Vec<u8>) -> crate::storage::ByteStream {
    let chunk = bytes::Bytes::from(bytes);
    Box::pin(futures_util::stream::once(async move { Ok(chunk) }))
}

/// The name an output is stored under: its file name, prefixed by its subfolder when
/// it has one, every part checked (no `..`, no absolute paths, no odd characters),
/// shortened to fit when the parts together are too long.
fn stored_name(subfolder: &str, filename: &str) -> Result<String, &'static str> {
    let filename = fit_name(filename, "");
    check_name(&filename).map_err(|_| "bad file name")?;
    if subfolder.is_empty() {
        return Ok(filename);
    }
    if subfolder.starts_with('/') || subfolder.starts_with('\\') {
        return Err("absolute subfolder");
    }
    let mut parts = Vec::new();
    for part in subfolder.split(['/', '\\']).filter(|p| !p.is_empty()) {
        check_name(part).map_err(|_| "bad subfolder")?;
        parts.push(part);
    }
    parts.push(&filename);
    Ok(fit_name(&parts.join("_"), ""))
}

/// Makes a name unique among the outputs already stored for this job (`-2`, `-3`, …
/// before the extension), shortening it so the result still fits.
fn unique(name: String, taken: &[Output]) -> String {
    if !taken.iter().any(|o| o.filename == name) {
        return name;
    }
    (2..)
        .map(|i| fit_name(&name, &format!("-{i}")))
        .find(|n| !taken.iter().any(|o| &o.filename == n))
        .expect("some suffix is free")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MAX_NAME_LEN;

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

    fn output(name: &str) -> Output {
        Output {
            node: "9".into(),
            filename: name.into(),
            kind: "image".into(),
            content_type: "image/png".into(),
            url: String::new(),
            size: 0,
        }
    }

    #[test]
    fn near_limit_names_are_shortened_not_refused() {
        let long = format!("{}.png", "n".repeat(MAX_NAME_LEN - 4));
        assert!(check_name(&long).is_ok());
        let second = unique(long.clone(), &[output(&long)]);
        assert!(check_name(&second).is_ok(), "{second}");
        assert!(second.ends_with("-2.png"));
        let third = unique(long.clone(), &[output(&long), output(&second)]);
        assert!(third.ends_with("-3.png") && check_name(&third).is_ok());
        let deep = stored_name(&"d".repeat(150), &"f".repeat(150)).unwrap();
        assert!(check_name(&deep).is_ok(), "{deep}");
        let huge = stored_name("", &format!("{}.png", "h".repeat(300))).unwrap();
        assert!(
            check_name(&huge).is_ok() && huge.ends_with(".png"),
            "{huge}"
        );
    }
}
