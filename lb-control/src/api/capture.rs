//! `GET /v1/capture`: a packet capture streamed as pcapng (see
//! [`crate::capture`]). Authenticated like changes; one at a time; it
//! ends at its count or duration, or when the client goes away, and the
//! data plane is disarmed then.

use std::convert::Infallible;

use axum::{
    body::Body,
    extract::{rejection::QueryRejection, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{
    error::{parse_backend, parse_vip, ApiError, ErrorBody},
    on_controller,
    schema::{BackendAddr, ReasonName},
    Shared,
};
use crate::{
    capture::{self, parse_reason, CaptureSpec, SpecError},
    model::VipId,
};

/// The path, which needs the token even though it is a GET.
pub const CAPTURE_PATH: &str = "/v1/capture";

/// What the stream's body is.
pub const PCAPNG: &str = "application/x-pcapng";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CaptureQuery {
    /// Only packets to this VIP (port 0: any port of its address).
    #[param(value_type = Option<VipId>)]
    vip: Option<String>,
    /// Only packets sent to this backend.
    #[param(value_type = Option<BackendAddr>)]
    backend: Option<String>,
    /// Only packets counted under this reason (a name of `GET /v1/stats`'s `global`).
    #[param(value_type = Option<ReasonName>)]
    reason: Option<String>,
    /// Only dropped packets (not with `reason`).
    drops: Option<bool>,
    /// Stop after this many packets (default 1000).
    #[param(minimum = 1, maximum = 1_000_000)]
    count: Option<u64>,
    /// Stop after this many seconds (default 10).
    #[param(minimum = 1, maximum = 3600)]
    duration_secs: Option<u64>,
    /// Bytes of each frame (default and most: 256).
    #[param(minimum = 1, maximum = 256)]
    snaplen: Option<u32>,
}

#[utoipa::path(get, path = "/v1/capture", tag = "operations", params(CaptureQuery), security(("token" = [])),
    responses(
        (status = 200, description = "pcapng: each packet as it arrived and, if it left by XDP_TX, as it left \
            (encapsulated), each with a comment `arrived|left; reason=R action=A`", body = Vec<u8>,
            content_type = "application/x-pcapng"),
        (status = 400, description = "a bad filter or bound; `reason_and_drops`: both given", body = ErrorBody),
        (status = 401, description = "no or wrong token", body = ErrorBody),
        (status = 409, description = "a capture is already running", body = ErrorBody),
        (status = 500, description = "the maps could not be written", body = ErrorBody),
    ))]
pub async fn capture(
    State(s): State<Shared>,
    q: Result<Query<CaptureQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let vip = q.vip.as_deref().map(parse_vip).transpose()?;
    let backend = q.backend.as_deref().map(parse_backend).transpose()?;
    let reason = q.reason.as_deref().map(parse_reason).transpose().map_err(|e| ApiError::bad_request(e.to_string()))?;
    let spec = CaptureSpec::new(vip, backend, reason, q.drops.unwrap_or(false), q.count, q.duration_secs, q.snaplen)
        .map_err(|e| match e {
            // The one rule about two parameters, which no schema states.
            SpecError::ReasonAndDrops => ApiError::new(StatusCode::BAD_REQUEST, "reason_and_drops", e.to_string()),
            e => ApiError::bad_request(e.to_string()),
        })?;
    let armed = spec.clone();
    let ring = on_controller(&s, move |ctl| ctl.start_capture(&armed)).await?;
    tracing::info!(?spec, "capture started");
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    let state = s.clone();
    tokio::spawn(async move {
        let (ring, packets, ended) = capture::stream(ring, spec, tx).await;
        match on_controller(&state, move |ctl| ctl.stop_capture(ring)).await {
            Ok(lost) => tracing::info!(packets, ?ended, lost, "capture stopped"),
            Err(e) => tracing::error!(error = %e.message, "capture: disarming failed"),
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    Ok(([(header::CONTENT_TYPE, PCAPNG)], Body::from_stream(chunks)).into_response())
}
