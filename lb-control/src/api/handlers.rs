//! The API's handlers. Each one's `#[utoipa::path]` is its entry in the
//! OpenAPI document: parameters, body and every answer it can give.

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use super::{
    body::{backends_of, vip_body, Applied, BackendBody, BackendPatch, VipBody},
    error::{parse_backend, parse_vip, unknown_vip, ApiError, ApiJson, ApiPath, ErrorBody},
    on_controller,
    schema::BackendAddr,
    Shared,
};
use crate::{
    controller::{ControlError, StatsSnapshot},
    metrics,
    model::{check_backend_set, AddressError, VipId, VipSpec},
};

const VIPS: &str = "vips";
const BACKENDS: &str = "backends";
const OPS: &str = "operations";

#[utoipa::path(get, path = "/v1/vips", tag = VIPS, responses((status = 200, description = "every VIP", body = Vec<VipBody>)))]
pub async fn list_vips(State(s): State<Shared>) -> Json<Vec<VipBody>> {
    let view = s.view.borrow().clone();
    Json(view.vips.iter().map(|(id, spec)| vip_body(id, spec, &view.health)).collect())
}

#[utoipa::path(post, path = "/v1/vips", tag = VIPS, request_body = VipBody, security(("token" = [])),
    responses(
        (status = 201, description = "added; in the data plane", body = Applied),
        (status = 400, description = "a bad VIP, backend or health check", body = ErrorBody),
        (status = 401, description = "no or wrong token", body = ErrorBody),
        (status = 409, description = "the VIP exists", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 422, description = "beyond the limits", body = ErrorBody),
        (status = 503, description = "the balancer is detached: changes are refused", body = ErrorBody),
    ))]
pub async fn create_vip(State(s): State<Shared>, ApiJson(body): ApiJson<VipBody>) -> Result<Response, ApiError> {
    crate::model::check_vip_addr(body.vip.addr)?;
    let backends = backends_of(&body.vip, &body.backends)?;
    let mut flags = body.flags.clone();
    flags.sort();
    flags.dedup();
    let spec = VipSpec { flags, backends };
    let id = body.vip;
    let defaults = s.view.borrow().health.defaults.clone();
    let check = body.health.as_ref().map(|h| super::health::resolve_check(h, &defaults, &id)).transpose()?;
    let report = on_controller(&s, move |ctl| {
        ctl.change(|vips, health| {
            if vips.contains_key(&id) {
                return Err(ControlError::Conflict(format!("VIP {id} exists")));
            }
            vips.insert(id, spec);
            // A VIP without a check of its own gets the [health] defaults.
            let check = check.unwrap_or_else(|| health.defaults().clone());
            health.set(id, check);
            Ok(())
        })
    })
    .await?;
    tracing::info!(vip = %id, ?report, "VIP added");
    Ok((StatusCode::CREATED, Json(Applied { applied: report })).into_response())
}

#[utoipa::path(get, path = "/v1/vips/{vip}", tag = VIPS, params(("vip" = VipId, Path)),
    responses(
        (status = 200, description = "the VIP", body = VipBody),
        (status = 400, description = "not a VIP", body = ErrorBody),
        (status = 404, description = "no such VIP", body = ErrorBody),
    ))]
pub async fn get_vip(State(s): State<Shared>, ApiPath(vip): ApiPath<String>) -> Result<Json<VipBody>, ApiError> {
    let id = parse_vip(&vip)?;
    let view = s.view.borrow().clone();
    let spec = view.vips.get(&id).ok_or_else(|| unknown_vip(&id))?;
    Ok(Json(vip_body(&id, spec, &view.health)))
}

#[utoipa::path(delete, path = "/v1/vips/{vip}", tag = VIPS, params(("vip" = VipId, Path)), security(("token" = [])),
    responses(
        (status = 200, description = "removed", body = Applied),
        (status = 400, description = "not a VIP", body = ErrorBody),
        (status = 401, description = "no or wrong token", body = ErrorBody),
        (status = 404, description = "no such VIP", body = ErrorBody),
        (status = 503, description = "the balancer is detached: changes are refused", body = ErrorBody),
    ))]
pub async fn delete_vip(State(s): State<Shared>, ApiPath(vip): ApiPath<String>) -> Result<Json<Applied>, ApiError> {
    let id = parse_vip(&vip)?;
    let report =
        on_controller(&s, move |ctl| ctl.mutate(|vips| vips.remove(&id).map(|_| ()).ok_or_else(|| unknown_vip(&id))))
            .await?;
    tracing::info!(vip = %id, ?report, "VIP removed");
    Ok(Json(Applied { applied: report }))
}

#[utoipa::path(get, path = "/v1/vips/{vip}/backends", tag = BACKENDS, params(("vip" = VipId, Path)),
    responses(
        (status = 200, description = "the VIP's backends with their health", body = Vec<super::BackendStatus>),
        (status = 400, description = "not a VIP", body = ErrorBody),
        (status = 404, description = "no such VIP", body = ErrorBody),
    ))]
pub async fn list_backends(
    State(s): State<Shared>,
    ApiPath(vip): ApiPath<String>,
) -> Result<Json<Vec<super::BackendStatus>>, ApiError> {
    let id = parse_vip(&vip)?;
    Ok(Json(super::health::backend_statuses(&s, &id)?))
}

/// The VIP must exist before its backends are judged: an unknown VIP is a
/// 404 whatever the body says.
fn existing_vip(s: &Shared, vip: &str) -> Result<VipId, ApiError> {
    let id = parse_vip(vip)?;
    let known = s.view.borrow().vips.contains_key(&id);
    if known {
        Ok(id)
    } else {
        Err(unknown_vip(&id).into())
    }
}

#[utoipa::path(put, path = "/v1/vips/{vip}/backends", tag = BACKENDS, params(("vip" = VipId, Path)),
    request_body(content = Vec<BackendBody>, description = "distinct addresses; an IPv6 VIP takes IPv6 backends only"),
    security(("token" = [])),
    responses(
        (status = 200, description = "replaced", body = Applied),
        (status = 400, description = "a bad backend", body = ErrorBody),
        (status = 401, description = "no or wrong token", body = ErrorBody),
        (status = 404, description = "no such VIP", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 422, description = "beyond the limits", body = ErrorBody),
        (status = 503, description = "the balancer is detached: changes are refused", body = ErrorBody),
    ))]
pub async fn replace_backends(
    State(s): State<Shared>,
    ApiPath(vip): ApiPath<String>,
    ApiJson(list): ApiJson<Vec<BackendBody>>,
) -> Result<Json<Applied>, ApiError> {
    let id = existing_vip(&s, &vip)?;
    let backends = backends_of(&id, &list)?;
    let report = on_controller(&s, move |ctl| {
        ctl.mutate(|vips| {
            let spec = vips.get_mut(&id).ok_or_else(|| unknown_vip(&id))?;
            spec.backends = backends;
            Ok(())
        })
    })
    .await?;
    tracing::info!(vip = %id, ?report, "backends replaced");
    Ok(Json(Applied { applied: report }))
}

#[utoipa::path(post, path = "/v1/vips/{vip}/backends", tag = BACKENDS, params(("vip" = VipId, Path)),
    request_body = BackendBody, security(("token" = [])),
    responses(
        (status = 201, description = "added", body = Applied),
        (status = 400, description = "a bad backend", body = ErrorBody),
        (status = 401, description = "no or wrong token", body = ErrorBody),
        (status = 404, description = "no such VIP", body = ErrorBody),
        (status = 409, description = "the backend exists", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 422, description = "beyond the limits", body = ErrorBody),
        (status = 503, description = "the balancer is detached: changes are refused", body = ErrorBody),
    ))]
pub async fn add_backend(
    State(s): State<Shared>,
    ApiPath(vip): ApiPath<String>,
    ApiJson(body): ApiJson<BackendBody>,
) -> Result<Response, ApiError> {
    let id = existing_vip(&s, &vip)?;
    let one = backends_of(&id, std::slice::from_ref(&body))?;
    let address = body.address;
    let report = on_controller(&s, move |ctl| {
        // Judged against the VIP's backends as they are when the change is made.
        let mut twin: Option<AddressError> = None;
        let report = ctl.mutate(|vips| {
            let spec = vips.get_mut(&id).ok_or_else(|| unknown_vip(&id))?;
            if spec.backends.contains_key(&address) {
                return Err(ControlError::Conflict(format!("backend {address} of {id} exists")));
            }
            spec.backends.extend(one);
            check_backend_set(&id, spec.backends.keys()).map_err(|e| {
                let msg = e.to_string();
                twin = Some(e);
                ControlError::Invalid(msg)
            })
        });
        Ok(match (report, twin) {
            (_, Some(e)) => Err(e),
            (r, None) => Ok(r?),
        })
    })
    .await??;
    tracing::info!(vip = %id, backend = %body.address, ?report, "backend added");
    Ok((StatusCode::CREATED, Json(Applied { applied: report })).into_response())
}

#[utoipa::path(patch, path = "/v1/vips/{vip}/backends/{backend}", tag = BACKENDS,
    params(("vip" = VipId, Path), ("backend" = BackendAddr, Path)),
    request_body = BackendPatch, security(("token" = [])),
    responses(
        (status = 200, description = "changed", body = Applied),
        (status = 400, description = "a bad change", body = ErrorBody),
        (status = 401, description = "no or wrong token", body = ErrorBody),
        (status = 404, description = "no such VIP or backend", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "the balancer is detached: changes are refused", body = ErrorBody),
    ))]
pub async fn patch_backend(
    State(s): State<Shared>,
    ApiPath((vip, backend)): ApiPath<(String, String)>,
    ApiJson(patch): ApiJson<BackendPatch>,
) -> Result<Json<Applied>, ApiError> {
    let id = parse_vip(&vip)?;
    let addr = parse_backend(&backend)?;
    let weight = patch.weight()?;
    let report = on_controller(&s, move |ctl| {
        ctl.mutate(|vips| {
            let spec = vips.get_mut(&id).ok_or_else(|| unknown_vip(&id))?;
            let b = spec
                .backends
                .get_mut(&addr)
                .ok_or_else(|| ControlError::NotFound(format!("no backend {addr} in VIP {id}")))?;
            b.weight = weight;
            Ok(())
        })
    })
    .await?;
    tracing::info!(vip = %id, backend = %addr, weight, ?report, "backend changed");
    Ok(Json(Applied { applied: report }))
}

#[utoipa::path(delete, path = "/v1/vips/{vip}/backends/{backend}", tag = BACKENDS,
    params(("vip" = VipId, Path), ("backend" = BackendAddr, Path)), security(("token" = [])),
    responses(
        (status = 200, description = "removed; its flows re-hash", body = Applied),
        (status = 400, description = "not a VIP or an address", body = ErrorBody),
        (status = 401, description = "no or wrong token", body = ErrorBody),
        (status = 404, description = "no such VIP or backend", body = ErrorBody),
        (status = 503, description = "the balancer is detached: changes are refused", body = ErrorBody),
    ))]
pub async fn delete_backend(
    State(s): State<Shared>,
    ApiPath((vip, backend)): ApiPath<(String, String)>,
) -> Result<Json<Applied>, ApiError> {
    let id = parse_vip(&vip)?;
    let addr = parse_backend(&backend)?;
    let report = on_controller(&s, move |ctl| {
        ctl.mutate(|vips| {
            let spec = vips.get_mut(&id).ok_or_else(|| unknown_vip(&id))?;
            spec.backends
                .remove(&addr)
                .map(|_| ())
                .ok_or_else(|| ControlError::NotFound(format!("no backend {addr} in VIP {id}")))
        })
    })
    .await?;
    tracing::info!(vip = %id, backend = %addr, ?report, "backend removed");
    Ok(Json(Applied { applied: report }))
}

#[utoipa::path(get, path = "/v1/stats", tag = OPS, responses(
    (status = 200, description = "counters: per reason, per action, per VIP, per backend", body = StatsSnapshot),
    (status = 500, description = "the maps could not be read", body = ErrorBody),
))]
pub async fn stats(State(s): State<Shared>) -> Result<Response, ApiError> {
    let snap = on_controller(&s, |ctl| ctl.stats()).await?;
    Ok(Json(snap).into_response())
}

#[utoipa::path(get, path = "/metrics", tag = OPS, responses(
    (status = 200, description = "Prometheus/OpenMetrics text (xdp_lb_*)", body = String, content_type = "application/openmetrics-text"),
    (status = 500, description = "the maps could not be read", body = ErrorBody),
))]
pub async fn metrics_text(State(s): State<Shared>) -> Result<Response, ApiError> {
    let (snap, vips, backends, ready, attached) = on_controller(&s, |ctl| {
        Ok((ctl.stats()?, ctl.vips().len(), ctl.engine().backends().count(), ctl.ready(), ctl.attached()))
    })
    .await?;
    let view = s.view.borrow().clone();
    let body = metrics::encode_with(&snap, vips, backends, ready, attached, |registry| {
        crate::health::register_metrics(registry, &s.health, &view)
    });
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

#[utoipa::path(get, path = "/healthz", tag = OPS, responses(
    (status = 200, description = "the daemon answers", body = String, content_type = "text/plain", example = "ok\n"),
))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", tag = OPS, responses(
    (status = 200, description = "attached and serving", body = String, content_type = "text/plain", example = "ready\n"),
    (status = 503, description = "not serving, with the reason", body = ErrorBody),
))]
pub async fn readyz(State(s): State<Shared>) -> Response {
    let not_ready = s.view.borrow().not_ready.clone();
    match not_ready {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason).into_response(),
    }
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = OPS, responses(
    (status = 200, description = "this document", body = Object),
))]
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::openapi_json().as_str()).into_response()
}
