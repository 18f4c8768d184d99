//! What the gate in front of the ComfyUI port needs to know of it: which paths
//! are ComfyUI's API (a key needed, rate limited) rather than frontend files,
//! and the login cookie's name. A leaf below the port's handlers, so the gate
//! (`api/access.rs`) and the handlers that answer it import one way.

/// The cookie the login page sets.
pub const KEY_COOKIE: &str = "studio_key";

/// Every route: (method, path), each also under `/api`.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/prompt"),
    ("post", "/prompt"),
    ("get", "/history"),
    ("post", "/history"),
    ("get", "/history/{prompt_id}"),
    ("get", "/queue"),
    ("post", "/queue"),
    ("post", "/interrupt"),
    ("get", "/view"),
    ("get", "/object_info"),
    ("get", "/object_info/{node_class}"),
    ("get", "/system_stats"),
    ("get", "/embeddings"),
    ("get", "/models"),
    ("get", "/models/{folder}"),
    ("get", "/features"),
    ("get", "/ws"),
    ("post", "/upload/image"),
    ("post", "/upload/mask"),
    ("get", "/users"),
    ("get", "/settings"),
    ("post", "/settings"),
    ("get", "/settings/{id}"),
    ("post", "/settings/{id}"),
    ("get", "/userdata"),
    ("get", "/v2/userdata"),
    ("get", "/userdata/{file}"),
    ("post", "/userdata/{file}"),
    ("get", "/extensions"),
    ("get", "/i18n"),
    ("get", "/workflow_templates"),
    ("get", "/experiment/models"),
    ("get", "/api/jobs"),
    ("get", "/api/jobs/{job_id}"),
    ("post", "/api/jobs/{job_id}/cancel"),
];

/// Whether a path is one of ComfyUI's routes (API: a key needed, rate
/// limited), not a file of the frontend or the login page.
pub fn is_api(path: &str) -> bool {
    if path.starts_with("/api/") || path.starts_with("/internal/") {
        return true;
    }
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    ROUTES
        .iter()
        .any(|(_, r)| r.trim_start_matches('/').split('/').next() == Some(first))
}
