//! The API, documented: `/openapi.json` is a valid OpenAPI 3 document that lists
//! every route the router has; `/docs` and the studio page load only local assets.

use std::collections::BTreeSet;

use serde_json::Value;
use studio_core::api::ROUTES;
use studio_core::config::Role;

use crate::support::{Backing, TestApp};

async fn app() -> TestApp {
    TestApp::spawn(Backing::Sqlite, Role::Api, |_| {}).await
}

/// Every `$ref` in the document points at something in it.
fn check_refs(v: &Value, doc: &Value, at: &str) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let pointer = r
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("external $ref {r} at {at}"));
                assert!(doc.pointer(pointer).is_some(), "dangling $ref {r} at {at}");
            }
            for (k, x) in m {
                check_refs(x, doc, &format!("{at}/{k}"));
            }
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| check_refs(x, doc, &format!("{at}/{i}"))),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_lists_every_route() {
    let app = app().await;
    let (code, doc) = app.get("/openapi.json").await;
    assert_eq!(code, 200);
    // The document is loaded and checked whole by an independent implementation,
    // schemathesis (tests/it/schemathesis.rs); here, its shape and its references.
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["info"]["title"], "Studio Core");
    check_refs(&doc, &doc, "");

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, routed,
        "the document and the router list the same routes"
    );

    for (method, path) in &routed {
        let op = &doc["paths"][path][method];
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} has responses"));
        assert!(!responses.is_empty());
        assert!(
            op["summary"].is_string() || op["description"].is_string(),
            "{method} {path} is described"
        );
        if path.starts_with("/api/") {
            assert!(responses.contains_key("401"), "{method} {path} says 401");
            assert!(
                op["security"].as_array().is_some_and(|s| s.len() == 3),
                "{method} {path} names the API key schemes"
            );
        }
        for (status, r) in responses {
            // /health's 503 keeps the prototype's health shape; every other error is ErrorBody.
            // (A retired workflow's 410 carries ErrorBody's fields and the workflow.)
            if (status.starts_with('4') || status.starts_with('5')) && path != "/health" {
                let schema = r["content"]["application/json"]["schema"]["$ref"]
                    .as_str()
                    .unwrap_or_default();
                let name = schema.rsplit('/').next().unwrap_or_default();
                let props = &doc["components"]["schemas"][name]["properties"];
                // (OpenAI's routes answer OpenAI's error shape.)
                assert!(
                    name == "ErrorBody"
                        || (path.starts_with("/v1/") && name == "OpenAiError")
                        || (path == "/mcp" && name == "JsonRpcError")
                        || (props.get("error").is_some() && props.get("code").is_some()),
                    "{method} {path} {status}: {schema}"
                );
            }
        }
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["apiKey"]["name"], "X-API-Key");
    // The shapes of the contract.
    let job = &doc["components"]["schemas"]["JobView"]["properties"];
    for key in ["job_id", "status", "progress", "image_url", "error"] {
        assert!(job.get(key).is_some(), "JobView has {key}");
    }
    assert_eq!(
        doc["paths"]["/api/generate"]["post"]["responses"]["202"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/Accepted"
    );
    assert!(doc["paths"]["/api/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"].is_object());

    // Operation ids are unique, and every link names one of them.
    let mut ids = BTreeSet::new();
    let mut linked = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "operationId {id} twice");
            for r in op["responses"].as_object().unwrap().values() {
                for l in r["links"].as_object().into_iter().flatten().map(|(_, l)| l) {
                    linked.push(l["operationId"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    assert!(!linked.is_empty());
    for l in &linked {
        assert!(ids.contains(l), "a link to unknown operation {l}");
    }

    // The submission schema: one variant per loaded workflow, with exactly its fields.
    let variants = doc["components"]["schemas"]["GenerateRequest"]["oneOf"]
        .as_array()
        .unwrap();
    let (_, wf) = app.get("/api/workflows").await;
    assert_eq!(variants.len(), wf["workflows"].as_array().unwrap().len());
    let smoke = variants.iter().find(|v| v["title"] == "smoke").unwrap();
    assert_eq!(smoke["additionalProperties"], false);
    assert_eq!(smoke["properties"]["workflow"]["const"], "smoke");
    assert_eq!(smoke["properties"]["width"]["maximum"], 4096);
    assert_eq!(smoke["properties"]["seed"]["maximum"], u64::MAX);
    assert!(
        smoke["properties"].get("steps").is_none(),
        "sdxl's fields are not smoke's"
    );
    let sdxl = variants.iter().find(|v| v["title"] == "sdxl").unwrap();
    assert_eq!(
        sdxl["required"],
        serde_json::json!(["prompt"]),
        "the default workflow may be left out"
    );
}

fn local_assets(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap();
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

#[tokio::test]
async fn the_page_and_the_docs_load_only_from_this_server() {
    let app = app().await;
    for page in ["/", "/docs"] {
        let res = app.http.get(app.url(page)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let html = res.text().await.unwrap();
        let assets = local_assets(&html);
        assert!(!assets.is_empty());
        for a in assets {
            assert!(a.starts_with('/'), "{page} loads {a} from elsewhere");
            let res = app.http.get(app.url(&a)).send().await.unwrap();
            assert_eq!(res.status(), 200, "{a}");
        }
    }
    let js = app
        .http
        .get(app.url("/assets/app.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !js.contains("http://") && !js.contains("https://"),
        "no remote URLs in the page script"
    );
    let (s, v) = app.get("/assets/nope.js").await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not-found")));
}

/// The prompt's "not only blanks" pattern names exactly the characters the server
/// counts as blank (checked with Python's `re`, over the Basic Multilingual Plane).
#[test]
fn the_prompt_pattern_and_the_server_agree_on_blanks() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("target/tools/venv/bin/python"))
        .args([
            "-c",
            "import json, re, sys; p = re.compile(sys.argv[1]); \
             print(json.dumps([c for c in range(0x10000) if not (0xd800 <= c < 0xe000) and not p.search(chr(c))]))",
            studio_core::workflow::param::NOT_BLANK,
        ])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blank_per_schema: BTreeSet<u32> = serde_json::from_slice(&out.stdout).unwrap();
    let blank_per_server: BTreeSet<u32> = (0..0x10000u32)
        .filter_map(char::from_u32)
        .filter(|c| studio_core::workflow::request::is_blank(*c))
        .map(u32::from)
        .collect();
    assert_eq!(blank_per_schema, blank_per_server);
    assert!(blank_per_server.contains(&0x1e) && !blank_per_server.contains(&0xfeff));
}
