//! The MCP server with the official MCP Python SDK (PyPI, installed by
//! `scripts/test`) as the client: over streamable HTTP at `/mcp` and over stdio
//! through `studio mcp` (the real binary): the tools, a `generate` that returns
//! the picture, the workflows as choices, a tool error for a bad job id.

use std::time::Duration;

use serde_json::json;
use studio_core::auth::{AuthMode, KeyLimits, Role as KeyRole};

use crate::support::standin::StandIn;
use crate::support::{Backing, TestApp, studio_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_makes_pictures_over_mcp_on_both_transports() {
    let standin = StandIn::start();
    let app = TestApp::serve(Backing::Redis, &standin, |a| a.auth = AuthMode::Keys).await;
    let key = app
        .new_key("agent", KeyRole::User, KeyLimits::default())
        .await;
    for mode in ["http", "stdio"] {
        let studio = studio_bin();
        let v = crate::support::python_json(
            "mcp/client.py",
            &[mode, &app.base, &key, studio.to_str().unwrap()],
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(
            v["tools"],
            json!([
                "cancel_job",
                "generate",
                "get_job",
                "list_jobs",
                "list_workflows",
                "upload_image",
                "wait_for_job"
            ]),
            "{mode}: {v}"
        );
        assert!(
            v["workflow_choices"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w == "smoke"),
            "{mode}: {v}"
        );
        assert_eq!(v["images"], json!([["image/png", true]]), "{mode}: {v}");
        assert_eq!(
            (v["status"].as_str(), v["seed"].as_u64()),
            (Some("finished"), Some(7)),
            "{mode}: {v}"
        );
        assert_eq!(v["again"], "finished");
        assert!(
            v["smoke_params"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == "blur_radius"),
            "{v}"
        );
        assert_eq!(v["is_error"], false);
        assert_eq!(v["bad_is_error"], true);
    }
    // Without a key: refused.
    let res = reqwest::Client::new()
        .post(app.url("/mcp"))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    app.stop().await;
}
