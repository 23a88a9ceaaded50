//! The API's request and response bodies (their schemas are in `schema`),
//! and their checks against the model.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::{
    engine::ApplyReport,
    model::{check_backend_addr, check_backend_family, check_backend_set, check_weight, Backend, VipFlag, VipId, VipSpec},
};

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

/// A backend change: a new weight, or drain (weight 0). Both fields are
/// read so that giving both, or neither, gets a specific message.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendPatch {
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

pub fn vip_body(id: &VipId, spec: &VipSpec) -> VipBody {
    VipBody {
        vip: *id,
        flags: spec.flags.clone(),
        backends: spec.backends.iter().map(|(a, b)| BackendBody { address: *a, weight: b.weight }).collect(),
    }
}

/// Turns a VIP's list of backends into the model, refusing duplicates and
/// addresses that can never be right.
pub fn backends_of(vip: &VipId, list: &[BackendBody]) -> Result<BTreeMap<IpAddr, Backend>, ApiError> {
    let mut out = BTreeMap::new();
    for b in list {
        check_backend_family(vip, b.address).map_err(ApiError::bad_request)?;
        check_backend_addr(vip, b.address)?;
        check_weight(b.weight).map_err(ApiError::bad_request)?;
        if out.insert(b.address, Backend { weight: b.weight }).is_some() {
            return Err(ApiError::bad_request(format!("backend {} is listed twice", b.address)));
        }
    }
    check_backend_set(vip, out.keys())?;
    Ok(out)
}
