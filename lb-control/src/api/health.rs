//! Health in the API: each backend's health in `GET /v1/vips/{vip}/backends`
//! and `PUT /v1/vips/{vip}/health` to change a VIP's check (persisted in
//! the state file like every API change).

use std::net::IpAddr;

use axum::{extract::State, Json};
use serde::{Deserialize, Serialize};

use super::{
    error::{parse_vip, unknown_vip, ApiError, ApiJson, ApiPath, ErrorBody},
    on_controller, Shared,
};
use crate::{
    config::health::{HealthCheck, RawHealthCheck, CROSS_FIELD},
    health::{BackendHealth, HealthState},
    model::VipId,
};

const HEALTH: &str = "health";

/// A backend as `GET /v1/vips/{vip}/backends` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendStatus {
    #[schema(value_type = String)]
    pub address: IpAddr,
    /// The operator's weight (health never changes it).
    pub weight: u32,
    pub health: BackendHealth,
    /// True while every serving backend of the VIP is down and all are kept
    /// (fail open).
    pub failed_open: bool,
}

/// The backends of `id` with their health, from the published view.
pub(super) fn backend_statuses(s: &Shared, id: &VipId) -> Result<Vec<BackendStatus>, ApiError> {
    let view = s.view.borrow().clone();
    let spec = view.vips.get(id).ok_or_else(|| unknown_vip(id))?;
    let checked = view.health.for_vip(id).enabled();
    let failed_open = view.failed_open.contains(id);
    Ok(spec
        .backends
        .iter()
        .map(|(addr, b)| BackendStatus {
            address: *addr,
            weight: b.weight,
            health: if checked { s.health.backend(id, addr) } else { BackendHealth::disabled() },
            failed_open,
        })
        .collect())
}

/// A check that cannot stand beside another field or the VIP (a rule no
/// JSON Schema states): 400 `health_check_mismatch`.
fn mismatch(message: String) -> ApiError {
    ApiError::new(axum::http::StatusCode::BAD_REQUEST, "health_check_mismatch", message)
}

/// A check as the API takes it (`PUT /v1/vips/{vip}/health`, a VIP's
/// `health`) for VIP `id`: fields left out take `defaults`; a bad field is
/// 400 `bad_request`, fields that do not fit together or the VIP 400
/// `health_check_mismatch`.
pub(super) fn resolve_check(
    body: &RawHealthCheck,
    defaults: &HealthCheck,
    id: &VipId,
) -> Result<HealthCheck, ApiError> {
    let check = body.resolve(defaults).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(|(field, m)| format!("{field}: {m}")).collect();
        if problems.iter().all(|(field, _)| CROSS_FIELD.contains(field)) {
            mismatch(text.join("; "))
        } else {
            ApiError::bad_request(text.join("; "))
        }
    })?;
    check.check_for(id).map_err(|(field, m)| mismatch(format!("{field}: {m}")))?;
    Ok(check)
}

/// The answer of `PUT /v1/vips/{vip}/health`: the check now in force, every
/// field filled in.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthApplied {
    pub health: RawHealthCheck,
}

#[utoipa::path(put, path = "/v1/vips/{vip}/health", tag = HEALTH, params(("vip" = VipId, Path)),
    request_body(content = RawHealthCheck, description = "fields left out take the [health] defaults"),
    security(("token" = [])),
    responses(
        (status = 200, description = "in force; backends out of the ring by health follow the new check", body = HealthApplied),
        (status = 400, description = "a bad field (`bad_request`), or fields that do not fit together or this VIP (`health_check_mismatch`)", body = ErrorBody),
        (status = 401, description = "no or wrong token", body = ErrorBody),
        (status = 404, description = "no such VIP", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "the balancer is detached: changes are refused", body = ErrorBody),
    ))]
pub async fn put_vip_health(
    State(s): State<Shared>,
    ApiPath(vip): ApiPath<String>,
    ApiJson(body): ApiJson<RawHealthCheck>,
) -> Result<Json<HealthApplied>, ApiError> {
    let id = parse_vip(&vip)?;
    let defaults = {
        let view = s.view.borrow();
        if !view.vips.contains_key(&id) {
            return Err(unknown_vip(&id).into());
        }
        view.health.defaults.clone()
    };
    let check = resolve_check(&body, &defaults, &id)?;
    let applied = RawHealthCheck::from(&check);
    on_controller(&s, move |ctl| ctl.set_vip_health(id, check)).await?;
    tracing::info!(vip = %id, health = ?applied, "VIP health check set");
    Ok(Json(HealthApplied { health: applied }))
}

/// Whether a backend counts as up for display (`lbctl`'s HEALTH column).
pub fn health_label(h: &BackendHealth) -> &'static str {
    match h.state {
        HealthState::Up => "up",
        HealthState::Down => "down",
        HealthState::Unknown => "unknown",
        HealthState::Disabled => "-",
    }
}
