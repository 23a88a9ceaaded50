//! The REST API (axum, JSON). Every change goes through the controller and
//! is in the data plane before the call returns; a rejected call changes
//! nothing. Errors are `{"error": {"code": "...", "message": "..."}}` with a
//! stable code.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{rejection::JsonRejection, FromRequest, Path, Request, State},
    http::{header, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};

use crate::{
    controller::{ControlError, Controller, View},
    engine::{ApplyReport, EngineError},
    metrics,
    model::{check_backend_family, check_weight, Backend, VipFlag, VipId, VipSpec},
};

/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route: (method, path). The router is built from the handlers
/// below; a test checks each of these is in the OpenAPI document.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/vips"),
    ("POST", "/v1/vips"),
    ("GET", "/v1/vips/{vip}"),
    ("DELETE", "/v1/vips/{vip}"),
    ("GET", "/v1/vips/{vip}/backends"),
    ("PUT", "/v1/vips/{vip}/backends"),
    ("POST", "/v1/vips/{vip}/backends"),
    ("PATCH", "/v1/vips/{vip}/backends/{backend}"),
    ("DELETE", "/v1/vips/{vip}/backends/{backend}"),
    ("GET", "/v1/stats"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/openapi.json"),
];

pub struct AppState {
    pub ctl: Mutex<Controller>,
    /// Bearer token for mutating calls; `None` means no token is required.
    pub token: Option<String>,
    /// The controller's published view: reads never wait for a change.
    pub view: tokio::sync::watch::Receiver<Arc<View>>,
}

impl AppState {
    pub fn new(ctl: Controller, token: Option<String>) -> Self {
        let view = ctl.subscribe();
        Self { ctl: Mutex::new(ctl), token, view }
    }
}

pub type Shared = Arc<AppState>;

// ---- errors --------------------------------------------------------------

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: &self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let msg = e.to_string();
        match e {
            ControlError::NotFound(_) => ApiError::not_found(msg),
            ControlError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", msg),
            ControlError::Invalid(_) => ApiError::bad_request(msg),
            ControlError::Detached(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_attached", msg),
            ControlError::Engine(EngineError::Rejected(_)) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", msg)
            }
            _ => {
                tracing::error!(error = %msg, "API call failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", b.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ),
            other => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", other.body_text()),
        }
    }
}

/// `Json` whose rejections are our JSON errors.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(req, state).await.map(|Json(v)| ApiJson(v)).map_err(ApiError::from)
    }
}

// ---- bodies --------------------------------------------------------------

fn default_weight() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendBody {
    pub address: IpAddr,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipBody {
    pub vip: VipId,
    #[serde(default)]
    pub flags: Vec<VipFlag>,
    #[serde(default)]
    pub backends: Vec<BackendBody>,
}

/// A backend change: a new weight, or drain (weight 0).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendPatch {
    pub weight: Option<u32>,
    pub drain: Option<bool>,
}

#[derive(Serialize)]
struct Applied {
    applied: ApplyReport,
}

fn vip_body(id: &VipId, spec: &VipSpec) -> VipBody {
    VipBody {
        vip: *id,
        flags: spec.flags.clone(),
        backends: spec.backends.iter().map(|(a, b)| BackendBody { address: *a, weight: b.weight }).collect(),
    }
}

/// Turns a list of backends into the model, refusing duplicates and
/// impossible ones.
fn backends_of(vip: &VipId, list: &[BackendBody]) -> Result<std::collections::BTreeMap<IpAddr, Backend>, ApiError> {
    let mut out = std::collections::BTreeMap::new();
    for b in list {
        check_backend_family(vip, b.address).map_err(ApiError::bad_request)?;
        check_weight(b.weight).map_err(ApiError::bad_request)?;
        if out.insert(b.address, Backend { weight: b.weight }).is_some() {
            return Err(ApiError::bad_request(format!("backend {} is listed twice", b.address)));
        }
    }
    Ok(out)
}

fn parse_vip(s: &str) -> Result<VipId, ApiError> {
    s.parse().map_err(ApiError::bad_request)
}

fn parse_backend(s: &str) -> Result<IpAddr, ApiError> {
    s.parse().map_err(|_| ApiError::bad_request(format!("'{s}' is not an IP address")))
}

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

fn unknown_vip(id: &VipId) -> ControlError {
    ControlError::NotFound(format!("no VIP {id}"))
}

// ---- handlers --------------------------------------------------------------

async fn list_vips(State(s): State<Shared>) -> Json<Vec<VipBody>> {
    let view = s.view.borrow().clone();
    Json(view.vips.iter().map(|(id, spec)| vip_body(id, spec)).collect())
}

async fn create_vip(State(s): State<Shared>, ApiJson(body): ApiJson<VipBody>) -> Result<Response, ApiError> {
    let backends = backends_of(&body.vip, &body.backends)?;
    let mut flags = body.flags.clone();
    flags.sort();
    flags.dedup();
    let spec = VipSpec { flags, backends };
    let id = body.vip;
    let report = on_controller(&s, move |ctl| ctl.mutate(|vips| {
        if vips.contains_key(&id) {
            return Err(ControlError::Conflict(format!("VIP {id} exists")));
        }
        vips.insert(id, spec);
        Ok(())
    }))
    .await?;
    tracing::info!(vip = %id, ?report, "VIP added");
    Ok((StatusCode::CREATED, Json(Applied { applied: report })).into_response())
}

async fn get_vip(State(s): State<Shared>, Path(vip): Path<String>) -> Result<Json<VipBody>, ApiError> {
    let id = parse_vip(&vip)?;
    let view = s.view.borrow().clone();
    let spec = view.vips.get(&id).ok_or_else(|| unknown_vip(&id))?;
    Ok(Json(vip_body(&id, spec)))
}

async fn delete_vip(State(s): State<Shared>, Path(vip): Path<String>) -> Result<Json<Applied>, ApiError> {
    let id = parse_vip(&vip)?;
    let report =
        on_controller(&s, move |ctl| ctl.mutate(|vips| vips.remove(&id).map(|_| ()).ok_or_else(|| unknown_vip(&id))))
            .await?;
    tracing::info!(vip = %id, ?report, "VIP removed");
    Ok(Json(Applied { applied: report }))
}

async fn list_backends(State(s): State<Shared>, Path(vip): Path<String>) -> Result<Json<Vec<BackendBody>>, ApiError> {
    let id = parse_vip(&vip)?;
    let view = s.view.borrow().clone();
    let spec = view.vips.get(&id).ok_or_else(|| unknown_vip(&id))?;
    Ok(Json(vip_body(&id, spec).backends))
}

async fn replace_backends(
    State(s): State<Shared>,
    Path(vip): Path<String>,
    ApiJson(list): ApiJson<Vec<BackendBody>>,
) -> Result<Json<Applied>, ApiError> {
    let id = parse_vip(&vip)?;
    let backends = backends_of(&id, &list)?;
    let report = on_controller(&s, move |ctl| ctl.mutate(|vips| {
        let spec = vips.get_mut(&id).ok_or_else(|| unknown_vip(&id))?;
        spec.backends = backends;
        Ok(())
    }))
    .await?;
    tracing::info!(vip = %id, ?report, "backends replaced");
    Ok(Json(Applied { applied: report }))
}

async fn add_backend(
    State(s): State<Shared>,
    Path(vip): Path<String>,
    ApiJson(body): ApiJson<BackendBody>,
) -> Result<Response, ApiError> {
    let id = parse_vip(&vip)?;
    let one = backends_of(&id, std::slice::from_ref(&body))?;
    let report = on_controller(&s, move |ctl| ctl.mutate(|vips| {
        let spec = vips.get_mut(&id).ok_or_else(|| unknown_vip(&id))?;
        if spec.backends.contains_key(&body.address) {
            return Err(ControlError::Conflict(format!("backend {} of {id} exists", body.address)));
        }
        spec.backends.extend(one);
        Ok(())
    }))
    .await?;
    tracing::info!(vip = %id, backend = %body.address, ?report, "backend added");
    Ok((StatusCode::CREATED, Json(Applied { applied: report })).into_response())
}

async fn patch_backend(
    State(s): State<Shared>,
    Path((vip, backend)): Path<(String, String)>,
    ApiJson(patch): ApiJson<BackendPatch>,
) -> Result<Json<Applied>, ApiError> {
    let id = parse_vip(&vip)?;
    let addr = parse_backend(&backend)?;
    let weight = match (patch.weight, patch.drain) {
        (Some(_), Some(true)) => return Err(ApiError::bad_request("give either weight or drain, not both")),
        (_, Some(true)) => 0,
        (Some(w), _) => {
            check_weight(w).map_err(ApiError::bad_request)?;
            w
        }
        (None, _) => return Err(ApiError::bad_request("nothing to change: give weight or drain: true")),
    };
    let report = on_controller(&s, move |ctl| ctl.mutate(|vips| {
        let spec = vips.get_mut(&id).ok_or_else(|| unknown_vip(&id))?;
        let b = spec
            .backends
            .get_mut(&addr)
            .ok_or_else(|| ControlError::NotFound(format!("no backend {addr} in VIP {id}")))?;
        b.weight = weight;
        Ok(())
    }))
    .await?;
    tracing::info!(vip = %id, backend = %addr, weight, ?report, "backend changed");
    Ok(Json(Applied { applied: report }))
}

async fn delete_backend(
    State(s): State<Shared>,
    Path((vip, backend)): Path<(String, String)>,
) -> Result<Json<Applied>, ApiError> {
    let id = parse_vip(&vip)?;
    let addr = parse_backend(&backend)?;
    let report = on_controller(&s, move |ctl| ctl.mutate(|vips| {
        let spec = vips.get_mut(&id).ok_or_else(|| unknown_vip(&id))?;
        spec.backends
            .remove(&addr)
            .map(|_| ())
            .ok_or_else(|| ControlError::NotFound(format!("no backend {addr} in VIP {id}")))
    }))
    .await?;
    tracing::info!(vip = %id, backend = %addr, ?report, "backend removed");
    Ok(Json(Applied { applied: report }))
}

async fn stats(State(s): State<Shared>) -> Result<Response, ApiError> {
    let snap = on_controller(&s, |ctl| ctl.stats()).await?;
    Ok(Json(snap).into_response())
}

async fn metrics_text(State(s): State<Shared>) -> Result<Response, ApiError> {
    let (snap, vips, backends, ready, attached) = on_controller(&s, |ctl| {
        Ok((ctl.stats()?, ctl.vips().len(), ctl.engine().backends().count(), ctl.ready(), ctl.attached()))
    })
    .await?;
    let body = metrics::encode_snapshot(&snap, vips, backends, ready, attached);
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Shared>) -> Response {
    let not_ready = s.view.borrow().not_ready.clone();
    match not_ready {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason).into_response(),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such endpoint; see /v1/openapi.json")
}

/// Mutating calls need `Authorization: Bearer <token>` when a token is
/// configured.
async fn require_token(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if let (true, Some(token)) = (mutating, s.token.as_deref()) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            let msg = if given.is_none() { "this call needs Authorization: Bearer <token>" } else { "wrong token" };
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg).into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API's router.
pub fn router(state: Shared, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/vips", get(list_vips).post(create_vip))
        .route("/v1/vips/{vip}", get(get_vip).delete(delete_vip))
        .route("/v1/vips/{vip}/backends", get(list_backends).put(replace_backends).post(add_backend))
        .route("/v1/vips/{vip}/backends/{backend}", axum::routing::patch(patch_backend).delete(delete_backend))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(openapi))
        .fallback(fallback)
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
        })
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Reads the API token from a file (trailing whitespace ignored).
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let token = std::fs::read_to_string(path).with_context(|| format!("reading token file {}", path.display()))?;
    let token = token.trim().to_string();
    anyhow::ensure!(!token.is_empty(), "token file {} is empty", path.display());
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        for (method, path) in ROUTES {
            let op = &doc["paths"][path][method.to_lowercase()];
            assert!(op.is_object(), "{method} {path} missing from openapi.json");
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().keys().filter(|k| *k != "parameters").count())
            .sum();
        assert_eq!(documented, ROUTES.len(), "openapi.json documents routes the API does not have");
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
