//! `PUT /v1/vips`: replaces the whole VIP set in one change (what
//! `lbctl vip apply -f` sends), or with `?dry_run=true` only checks it. Every
//! entry is checked before anything changes and the set is applied as one
//! controller change, so a bad entry refuses the whole set. The answer is
//! the diff: VIPs added, removed and changed (flags, backends, weights,
//! health check). Each VIP's `health` is its check in the same change; a
//! VIP without one gets the `[health]` defaults, as a `[[vip]]` without
//! `[vip.health]` does in the config file.

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    Json,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::PartialSchema as _;

use super::{
    body::{backends_of, VipBody},
    error::{ApiError, ApiJson, ErrorBody},
    health::resolve_check,
    on_controller,
    schema::{apply_report, named_schema, schema, BACKEND_PATTERN, VIP_PATTERN},
    Shared,
};
use std::collections::BTreeMap;

use crate::{
    config::{health::HealthCheck, VipSetDiff},
    engine::ApplyReport,
    model::{VipId, VipSet, VipSpec},
};

const VIPS: &str = "vips";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplaceQuery {
    /// Only check the set and answer the diff; change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// What replacing the set did (or, dry run, would do).
#[derive(Serialize)]
pub struct VipSetReplaced {
    pub dry_run: bool,
    pub diff: VipSetDiff,
    /// What the change did to the data plane; absent in a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<ApplyReport>,
}

/// A list of VIPs as the model, each entry checked as `POST /v1/vips`
/// checks one (its health check against `defaults`, the `[health]` table);
/// an error names the entry. Returns the set and each VIP's check.
fn vip_set_of(list: &[VipBody], defaults: &HealthCheck) -> Result<(VipSet, BTreeMap<VipId, HealthCheck>), ApiError> {
    let mut set = VipSet::new();
    let mut checks = BTreeMap::new();
    for (i, body) in list.iter().enumerate() {
        let located = |mut e: ApiError| {
            e.message = format!("[{i}] {}: {}", body.vip, e.message);
            e
        };
        crate::model::check_vip_addr(body.vip.addr).map_err(|e| located(e.into()))?;
        let backends = backends_of(&body.vip, &body.backends).map_err(located)?;
        let check = match &body.health {
            Some(h) => resolve_check(h, defaults, &body.vip).map_err(|mut e| {
                e.message = format!("health: {}", e.message);
                located(e)
            })?,
            None => defaults.clone(),
        };
        let mut flags = body.flags.clone();
        flags.sort();
        flags.dedup();
        if set.insert(body.vip, VipSpec { flags, backends }).is_some() {
            let msg = format!("[{i}] VIP {} is listed twice", body.vip);
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "duplicate_vip", msg));
        }
        checks.insert(body.vip, check);
    }
    Ok((set, checks))
}

#[utoipa::path(put, path = "/v1/vips", tag = VIPS, params(ReplaceQuery),
    request_body(content = Vec<VipBody>, description = "the whole VIP set; VIPs not listed are removed"),
    security(("token" = [])),
    responses(
        (status = 200, description = "replaced (or, dry run, checked); the diff", body = VipSetReplaced),
        (status = 400, description = "a bad VIP, backend or health check, a VIP listed twice: nothing changed", body = ErrorBody),
        (status = 401, description = "no or wrong token", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 422, description = "beyond the limits: nothing changed", body = ErrorBody),
        (status = 503, description = "the balancer is detached: changes are refused", body = ErrorBody),
    ))]
pub async fn replace_vips(
    State(s): State<Shared>,
    query: Result<Query<ReplaceQuery>, QueryRejection>,
    ApiJson(list): ApiJson<Vec<VipBody>>,
) -> Result<Json<VipSetReplaced>, ApiError> {
    let Query(query) = query.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let defaults = s.view.borrow().health.defaults.clone();
    let (next, checks) = vip_set_of(&list, &defaults)?;
    let dry_run = query.dry_run;
    let answer = on_controller(&s, move |ctl| {
        let in_force = ctl.health_settings();
        let before = ctl.vips().keys().map(|id| (*id, in_force.for_vip(id).clone())).collect();
        let diff = VipSetDiff::between(ctl.vips(), &next, &before, &checks);
        if dry_run {
            ctl.engine().check(&next)?;
            return Ok(VipSetReplaced { dry_run, diff, applied: None });
        }
        let applied = ctl.change(|vips, health| {
            *vips = next;
            for (id, check) in checks {
                health.set(id, check);
            }
            Ok(())
        })?;
        Ok(VipSetReplaced { dry_run, diff, applied: Some(applied) })
    })
    .await?;
    if !dry_run {
        let d = &answer.diff;
        tracing::info!(added = d.added.len(), removed = d.removed.len(), changed = d.changed.len(), applied = ?answer.applied, "VIP set replaced");
    }
    Ok(Json(answer))
}

fn address_list() -> serde_json::Value {
    json!({"type": "array", "items": {"type": "string", "pattern": *BACKEND_PATTERN}})
}

fn vip_list() -> serde_json::Value {
    json!({"type": "array", "items": {"type": "string", "pattern": *VIP_PATTERN}})
}

fn diff_schema() -> serde_json::Value {
    let flags = json!({"type": "array", "items": crate::model::VipFlag::schema()});
    let health = json!({"$ref": "#/components/schemas/RawHealthCheck"});
    json!({
        "type": "object", "additionalProperties": false, "required": ["added", "removed", "changed"],
        "properties": {
            "added": vip_list(),
            "removed": vip_list(),
            "changed": {"type": "array", "items": {
                "type": "object", "additionalProperties": false, "required": ["vip", "backends"],
                "properties": {
                    "vip": {"type": "string", "pattern": *VIP_PATTERN},
                    "flags": {"type": "object", "additionalProperties": false, "required": ["before", "after"],
                        "properties": {"before": flags, "after": flags}, "description": "present when the flags change"},
                    "health": {"type": "object", "additionalProperties": false, "required": ["before", "after"],
                        "properties": {"before": health, "after": health},
                        "description": "present when the health check changes; every field given"},
                    "backends": {"type": "object", "additionalProperties": false,
                        "required": ["added", "removed", "reweighted"],
                        "properties": {
                            "added": address_list(),
                            "removed": address_list(),
                            "reweighted": {"type": "array", "items": {
                                "type": "object", "additionalProperties": false,
                                "required": ["address", "before", "after"],
                                "properties": {
                                    "address": {"type": "string", "pattern": *BACKEND_PATTERN},
                                    "before": {"type": "integer", "minimum": 0},
                                    "after": {"type": "integer", "minimum": 0},
                                },
                            }},
                        },
                    },
                },
            }},
        },
    })
}

named_schema!(
    VipSetReplaced,
    "VipSetReplaced",
    schema(json!({
        "type": "object", "additionalProperties": false, "required": ["dry_run", "diff"],
        "properties": {
            "dry_run": {"type": "boolean"},
            "diff": diff_schema(),
            "applied": apply_report(),
        },
    }))
);

/// The keys of a serialised diff, for the schema test.
#[cfg(test)]
fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    k.sort();
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{BackendChanges, FlagChange, HealthChange, VipChange, WeightChange},
        model::VipFlag,
    };

    /// The schema's fields are exactly what the types serialise, and the
    /// examples' strings match its patterns.
    #[test]
    fn the_schema_matches_what_is_serialised() {
        let change = VipChange {
            vip: "tcp:192.0.2.10:80".parse().unwrap(),
            flags: Some(FlagChange { before: vec![], after: vec![VipFlag::NoConnTable] }),
            health: Some(HealthChange { before: Default::default(), after: Default::default() }),
            backends: BackendChanges {
                added: vec!["10.1.0.1".parse().unwrap()],
                removed: vec!["2001:db8::1".parse().unwrap()],
                reweighted: vec![WeightChange { address: "10.1.0.2".parse().unwrap(), before: 1, after: 0 }],
            },
        };
        let diff = VipSetDiff { added: vec![change.vip], removed: vec![], changed: vec![change] };
        let answer =
            serde_json::to_value(VipSetReplaced { dry_run: false, diff, applied: Some(ApplyReport::default()) })
                .unwrap();
        let s = serde_json::to_value(VipSetReplaced::schema()).unwrap();
        assert_eq!(keys(&s["properties"]), keys(&answer));
        let d = &s["properties"]["diff"];
        assert_eq!(keys(&d["properties"]), keys(&answer["diff"]));
        let c = &d["properties"]["changed"]["items"];
        assert_eq!(keys(&c["properties"]), keys(&answer["diff"]["changed"][0]));
        assert_eq!(keys(&c["properties"]["backends"]["properties"]), keys(&answer["diff"]["changed"][0]["backends"]));
        let w = &c["properties"]["backends"]["properties"]["reweighted"]["items"];
        assert_eq!(keys(&w["properties"]), keys(&answer["diff"]["changed"][0]["backends"]["reweighted"][0]));
        assert!(regex::Regex::new(&VIP_PATTERN).unwrap().is_match(answer["diff"]["added"][0].as_str().unwrap()));
        let dry = serde_json::to_value(VipSetReplaced { dry_run: true, diff: VipSetDiff::default(), applied: None });
        assert!(dry.unwrap().get("applied").is_none(), "a dry run has no applied report");
    }

    #[test]
    fn a_bad_entry_or_a_twice_listed_vip_refuses_the_list() {
        let good = VipBody { vip: "tcp:192.0.2.10:80".parse().unwrap(), flags: vec![], backends: vec![], health: None };
        let mut bad = good.clone();
        bad.vip = "tcp:192.0.2.11:80".parse().unwrap();
        bad.backends = vec![super::super::BackendBody { address: "192.0.2.11".parse().unwrap(), weight: 1 }];
        let defaults = HealthCheck::default();
        let e = vip_set_of(&[good.clone(), bad], &defaults).unwrap_err();
        assert_eq!(e.code, "backend_is_vip");
        assert!(e.message.starts_with("[1] tcp:192.0.2.11:80: "), "{}", e.message);
        let e = vip_set_of(&[good.clone(), good.clone()], &defaults).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "duplicate_vip"));
        assert_eq!(vip_set_of(std::slice::from_ref(&good), &defaults).unwrap().0.len(), 1);
        // A health check that cannot probe its VIP names the entry.
        let mut udp_check = good.clone();
        udp_check.health = Some(crate::config::health::RawHealthCheck {
            kind: Some(crate::config::health::CheckKind::Udp),
            ..Default::default()
        });
        let e = vip_set_of(&[good, udp_check], &defaults).unwrap_err();
        assert_eq!(e.code, "health_check_mismatch");
        assert!(e.message.starts_with("[1] tcp:192.0.2.10:80: health: kind"), "{}", e.message);
    }
}
