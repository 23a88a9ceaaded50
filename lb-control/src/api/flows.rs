//! Flow lookup and the connection table's fill (`GET /v1/flows`,
//! `GET /v1/conns`): reads of the live maps, see [`crate::flows`].

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    Json,
};
use serde::Deserialize;

use super::{
    error::{parse_vip, ApiError, ErrorBody},
    on_controller,
    schema::ClientAddr,
    Shared,
};
use crate::{
    flows::{self, ConnSummary, FlowAnswer, FlowError},
    model::VipId,
};

const OPS: &str = "operations";

impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> Self {
        let msg = e.to_string();
        match e {
            FlowError::UnknownVip(_) => ApiError::not_found(msg),
            FlowError::FamilyMismatch { .. } => ApiError::new(StatusCode::BAD_REQUEST, "family_mismatch", msg),
            FlowError::Dataplane(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FlowQuery {
    /// The flow's destination: a VIP, e.g. `tcp:192.0.2.10:80`, or the
    /// address and port of a flow to an every-port VIP.
    #[param(value_type = VipId)]
    vip: String,
    /// The client's address and port, e.g. `198.51.100.7:51234` or `[2001:db8::7]:51234`.
    #[param(value_type = ClientAddr)]
    client: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConnQuery {
    /// Only this VIP's backends (default: every VIP's).
    #[param(value_type = Option<VipId>)]
    vip: Option<String>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::bad_request(e.body_text()))
}

#[utoipa::path(get, path = "/v1/flows", tag = OPS, params(FlowQuery), responses(
    (status = 200, description = "the backend the flow's next packet goes to, and why", body = FlowAnswer),
    (status = 400, description = "a missing or bad VIP or client", body = ErrorBody),
    (status = 404, description = "no such VIP", body = ErrorBody),
    (status = 500, description = "the maps could not be read", body = ErrorBody),
))]
pub async fn flow(
    State(s): State<Shared>,
    q: Result<Query<FlowQuery>, QueryRejection>,
) -> Result<Json<FlowAnswer>, ApiError> {
    let q = query(q)?;
    let vip = parse_vip(&q.vip)?;
    let client = q.client.parse().map_err(|_| {
        ApiError::bad_request(format!("'{}' is not ADDRESS:PORT (IPv6 in brackets: [2001:db8::7]:51234)", q.client))
    })?;
    let answer = on_controller(&s, move |ctl| Ok(flows::lookup(ctl.engine(), &vip, client))).await??;
    Ok(Json(answer))
}

#[utoipa::path(get, path = "/v1/conns", tag = OPS, params(ConnQuery), responses(
    (status = 200, description = "connection-table fill, and entries per (VIP, backend)", body = ConnSummary),
    (status = 400, description = "not a VIP", body = ErrorBody),
    (status = 404, description = "no such VIP", body = ErrorBody),
    (status = 500, description = "the maps could not be read", body = ErrorBody),
))]
pub async fn conns(
    State(s): State<Shared>,
    q: Result<Query<ConnQuery>, QueryRejection>,
) -> Result<Json<ConnSummary>, ApiError> {
    let q = query(q)?;
    let vip = q.vip.as_deref().map(parse_vip).transpose()?;
    let summary = on_controller(&s, move |ctl| Ok(flows::conn_summary(ctl.engine(), vip.as_ref()))).await??;
    Ok(Json(summary))
}
