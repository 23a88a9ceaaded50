//! The API's request and response bodies (their schemas are in `schema`),
//! and their checks against the model.

use std::{collections::BTreeMap, net::IpAddr};

use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};

use super::error::ApiError;
use crate::{
    config::health::{HealthSettings, RawHealthCheck},
    engine::ApplyReport,
    model::{
        check_backend_addr, check_backend_family, check_backend_set, check_weight, Backend, VipFlag, VipId, VipSpec,
    },
};

/// A weight as JSON Schema's `integer` allows it: `3` or `3.0`.
fn integral_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    let whole = n
        .as_u64()
        .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u32::MAX as f64).map(|f| f as u64));
    whole.and_then(|w| u32::try_from(w).ok()).ok_or_else(|| {
        serde::de::Error::custom(format!("{n} is not a weight (a whole number, 0..={})", crate::model::MAX_WEIGHT))
    })
}

/// An optional weight; `null` is the same as leaving it out (what `lbctl`
/// sends).
fn integral_u32_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "integral_u32")] u32);
    Ok(Option::<Whole>::deserialize(d)?.map(|Whole(w)| w))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendBody {
    pub address: IpAddr,
    #[serde(default = "crate::model::default_weight", deserialize_with = "integral_u32")]
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
    /// The VIP's own health check (a `[vip.health]` table). Listed with
    /// every field when the VIP has one; sent, fields left out take the
    /// `[health]` defaults, and leaving it out gives the VIP those defaults.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present_check")]
    pub health: Option<RawHealthCheck>,
}

/// `health` when given: an object (`null` is refused, as the schema says;
/// leaving the field out is how a VIP gets the defaults).
fn present_check<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawHealthCheck>, D::Error> {
    RawHealthCheck::deserialize(d).map(Some)
}

/// A backend change: a new weight, or drain (weight 0). Both fields are
/// read so that giving both, or neither, gets a specific message; `null`
/// counts as absent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendPatch {
    #[serde(default, deserialize_with = "integral_u32_opt")]
    pub weight: Option<u32>,
    pub drain: Option<bool>,
}

impl BackendPatch {
    /// The weight this patch sets.
    pub fn weight(&self) -> Result<u32, ApiError> {
        match (self.weight, self.drain) {
            (Some(_), Some(_)) => Err(ApiError::bad_request("give either weight or drain, not both")),
            (None, Some(true)) => Ok(0),
            (None, Some(false)) => Err(ApiError::bad_request("drain takes only true; to undrain, set a weight")),
            (Some(w), None) => check_weight(w).map(|_| w).map_err(ApiError::bad_request),
            (None, None) => Err(ApiError::bad_request("nothing to change: give weight or drain: true")),
        }
    }
}

/// What a change did to the data plane.
#[derive(Serialize)]
pub struct Applied {
    pub applied: ApplyReport,
}

/// A VIP as the API lists it, with its own health check if it has one.
pub fn vip_body(id: &VipId, spec: &VipSpec, health: &HealthSettings) -> VipBody {
    VipBody {
        vip: *id,
        flags: spec.flags.clone(),
        backends: spec.backends.iter().map(|(a, b)| BackendBody { address: *a, weight: b.weight }).collect(),
        health: health.vips.get(id).map(RawHealthCheck::from),
    }
}

/// Turns a VIP's list of backends into the model, refusing duplicates and
/// addresses that can never be right.
pub fn backends_of(vip: &VipId, list: &[BackendBody]) -> Result<BTreeMap<IpAddr, Backend>, ApiError> {
    let mut out = BTreeMap::new();
    for b in list {
        check_backend_family(vip, b.address)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "family_mismatch", e))?;
        check_backend_addr(vip, b.address)?;
        check_weight(b.weight).map_err(ApiError::bad_request)?;
        if out.insert(b.address, Backend { weight: b.weight }).is_some() {
            let msg = format!("backend {} is listed twice", b.address);
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "duplicate_backend", msg));
        }
    }
    check_backend_set(vip, out.keys())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vips_health_is_an_object_or_left_out() {
        let v: VipBody = serde_json::from_str(r#"{"vip": "tcp:10.0.0.1:80"}"#).unwrap();
        assert_eq!(v.health, None);
        let v: VipBody = serde_json::from_str(r#"{"vip": "tcp:10.0.0.1:80", "health": {"kind": "tcp"}}"#).unwrap();
        assert_eq!(v.health.and_then(|h| h.kind), Some(crate::config::health::CheckKind::Tcp));
        assert!(serde_json::from_str::<VipBody>(r#"{"vip": "tcp:10.0.0.1:80", "health": null}"#).is_err());
    }

    #[test]
    fn weights_are_whole_numbers_written_either_way() {
        let b: BackendBody = serde_json::from_str(r#"{"address": "10.1.0.1", "weight": 3.0}"#).unwrap();
        assert_eq!(b.weight, 3);
        let p: BackendPatch = serde_json::from_str(r#"{"weight": 1469.0}"#).unwrap();
        assert_eq!(p.weight, Some(1469));
        let p: BackendPatch = serde_json::from_str(r#"{"drain": true}"#).unwrap();
        assert_eq!((p.weight, p.drain), (None, Some(true)));
        let p: BackendPatch = serde_json::from_str(r#"{"weight": null, "drain": true}"#).unwrap();
        assert_eq!(p.weight().unwrap(), 0);
        let p: BackendPatch = serde_json::from_str(r#"{"weight": 7, "drain": null}"#).unwrap();
        assert_eq!(p.weight().unwrap(), 7);
        let p: BackendPatch = serde_json::from_str(r#"{"weight": null}"#).unwrap();
        assert!(p.weight().is_err(), "nothing to change");
        for bad in [r#"{"weight": 2.5}"#, r#"{"weight": -1}"#, r#"{"weight": 4294967296}"#, r#"{"weight": "3"}"#] {
            assert!(serde_json::from_str::<BackendPatch>(bad).is_err(), "{bad}");
        }
    }
}
