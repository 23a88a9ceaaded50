//! The API's errors: `{"error": {"code": "...", "message": "..."}}` with a
//! stable code, and the extractors whose rejections are such errors.

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection},
        FromRequest, FromRequestParts, Request,
    },
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    controller::ControlError,
    engine::EngineError,
    model::{AddressError, VipId},
};

#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(super) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable, machine-readable: `bad_request`, `invalid_address`,
    /// `backend_is_vip`, `duplicate_backend`, `family_mismatch`,
    /// `duplicate_vip`, `invalid_json`, `not_found`, `conflict`, `rejected`, `unauthorized`,
    /// `payload_too_large`, `unsupported_media_type`, `method_not_allowed`,
    /// `not_ready`, `reason_and_drops`, `internal`.
    pub code: &'a str,
    /// For people; may change between versions.
    pub message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: &self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<AddressError> for ApiError {
    fn from(e: AddressError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string())
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

/// Path parameters as text (a path that is not UTF-8 once percent-decoded
/// is a JSON 400, not axum's plain-text one); handlers parse them.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|r: PathRejection| ApiError::bad_request(r.body_text()))
    }
}

pub(super) fn parse_vip(s: &str) -> Result<VipId, ApiError> {
    let id: VipId = s.parse().map_err(ApiError::bad_request)?;
    crate::model::check_vip_addr(id.addr)?;
    Ok(id)
}

pub(super) fn parse_backend(s: &str) -> Result<std::net::IpAddr, ApiError> {
    s.parse().map_err(|_| ApiError::bad_request(format!("'{s}' is not an IP address")))
}

pub(super) fn unknown_vip(id: &VipId) -> ControlError {
    ControlError::NotFound(format!("no VIP {id}"))
}
