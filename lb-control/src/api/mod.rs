//! The REST API (axum, JSON). Every change goes through the controller and
//! is in the data plane before the call returns; a rejected call changes
//! nothing. Errors are `{"error": {"code": "...", "message": "..."}}` with a
//! stable code.
//!
//! The OpenAPI document is generated from the handlers (`handlers`, with
//! `#[utoipa::path]`) and the body schemas (`schema`); `/v1/openapi.json`
//! serves it and `lb-control/openapi.json` is the committed copy.

mod auth;
mod body;
mod capture;
mod error;
mod flows;
mod handlers;
mod health;
mod schema;
mod version;
mod vip_set;

use std::sync::{Arc, LazyLock, Mutex};

use axum::{http::StatusCode, middleware, Router};
use utoipa::{
    openapi::{
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        OpenApi as Document,
    },
    Modify, OpenApi,
};
use utoipa_axum::{router::OpenApiRouter, routes};

pub use body::{BackendBody, BackendPatch, VipBody};
pub use error::ApiError;
pub use health::{health_label, BackendStatus};
pub use version::{VersionBody, GIT_COMMIT, VERSION};
pub use vip_set::VipSetReplaced;

use crate::controller::{ControlError, Controller, View};

/// Where the generated document is committed (and what `lbctl`, clients
/// and the fuzzer read); a test checks it is current.
pub const OPENAPI_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

/// Every route: (method, path). A test checks the generated document has
/// exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/vips"),
    ("POST", "/v1/vips"),
    ("PUT", "/v1/vips"),
    ("GET", "/v1/vips/{vip}"),
    ("DELETE", "/v1/vips/{vip}"),
    ("GET", "/v1/vips/{vip}/backends"),
    ("PUT", "/v1/vips/{vip}/backends"),
    ("POST", "/v1/vips/{vip}/backends"),
    ("PATCH", "/v1/vips/{vip}/backends/{backend}"),
    ("DELETE", "/v1/vips/{vip}/backends/{backend}"),
    ("PUT", "/v1/vips/{vip}/health"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/flows"),
    ("GET", "/v1/conns"),
    ("GET", "/v1/capture"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/version"),
];

pub struct AppState {
    pub ctl: Mutex<Controller>,
    /// Bearer token for mutating calls; `None` means no token is required.
    pub token: Option<String>,
    /// The controller's published view: reads never wait for a change.
    pub view: tokio::sync::watch::Receiver<Arc<View>>,
    /// What the health checker knows (each backend's record, durations).
    pub health: Arc<crate::health::Registry>,
}

impl AppState {
    pub fn new(ctl: Controller, token: Option<String>) -> Self {
        let view = ctl.subscribe();
        Self { ctl: Mutex::new(ctl), token, view, health: Arc::default() }
    }
}

pub type Shared = Arc<AppState>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, Controller> {
    // A panic while holding the lock would be a bug; the controller's state
    // is still consistent (every change is validated before it is made).
    state.ctl.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on the controller on a blocking thread: map writes, the state
/// file's fsync and the RCU wait of a VIP-table swap never hold one of the
/// runtime's workers. A call whose client went away still finishes.
async fn on_controller<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&mut Controller) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ApiError> {
    let s = s.clone();
    match tokio::task::spawn_blocking(move || f(&mut lock(&s))).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => {
            tracing::error!(error = %e, "controller task failed");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("controller task failed: {e}")))
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "xdp-lb control API", description = "VIPs, backends and counters of the XDP load balancer. \
        Changes are in the data plane when the call returns; a rejected call changes nothing."),
    modifiers(&BearerToken),
    components(schemas(crate::model::VipId, schema::BackendAddr, schema::ClientAddr, schema::ReasonName)),
    tags((name = "vips"), (name = "backends"), (name = "health"), (name = "operations"))
)]
struct ApiDoc;

/// The `token` security scheme the mutating operations name.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut Document) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("api.token_file's content; needed by changes when a token is configured"))
            .build();
        doc.components.get_or_insert_with(Default::default).add_security_scheme("token", SecurityScheme::Http(scheme));
    }
}

/// The routes with their documentation.
fn routes() -> OpenApiRouter<Shared> {
    use handlers::*;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_vips, create_vip, vip_set::replace_vips))
        .routes(routes!(get_vip, delete_vip))
        .routes(routes!(list_backends, replace_backends, add_backend))
        .routes(routes!(patch_backend, delete_backend))
        .routes(routes!(health::put_vip_health))
        .routes(routes!(stats))
        .routes(routes!(flows::flow))
        .routes(routes!(flows::conns))
        .routes(routes!(capture::capture))
        .routes(routes!(metrics_text))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi))
        .routes(routes!(version::version))
}

/// The OpenAPI document, generated from the handlers and types.
pub fn openapi_document() -> Document {
    let mut doc = routes().split_for_parts().1;
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as the API serves it and the committed file holds it.
pub fn openapi_json() -> &'static String {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        let mut text = openapi_document().to_pretty_json().expect("the document serialises");
        text.push('\n');
        text
    });
    &JSON
}

/// The API's router.
pub fn router(state: Shared, max_body_bytes: usize) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Reads the API token from a file (surrounding whitespace ignored), as
/// config validation checks it.
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    crate::config::read_token(path).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_has_every_route_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(openapi_json()).expect("valid JSON");
        for (method, path) in ROUTES {
            let op = &doc["paths"][path][method.to_lowercase()];
            assert!(op.is_object(), "{method} {path} missing from the document");
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().keys().filter(|k| *k != "parameters").count())
            .sum();
        assert_eq!(documented, ROUTES.len(), "the document has routes ROUTES does not list");
    }

    /// The committed `lb-control/openapi.json` is what the code generates.
    /// `UPDATE_OPENAPI=1` rewrites it.
    #[test]
    fn the_committed_openapi_json_is_current() {
        let generated = openapi_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(OPENAPI_FILE, generated).expect("writing openapi.json");
        }
        let committed = std::fs::read_to_string(OPENAPI_FILE).unwrap_or_default();
        assert!(
            committed == *generated,
            "{OPENAPI_FILE} is not the document the handlers generate; regenerate it with\n  \
             UPDATE_OPENAPI=1 cargo test -p lb-control --lib the_committed_openapi_json_is_current\nand commit it"
        );
    }
}
