"""schemathesis hooks of the API fuzz test.

The OpenAPI document states every rule about one field (address patterns,
weight ranges, the PATCH body's two shapes). Three refusals depend on two
fields or on what exists, which no JSON Schema can say: a backend that is the
VIP itself, an IPv4 backend of an IPv6 VIP, one host listed twice (also as
its IPv4-mapped IPv6 form), one VIP listed twice in a whole set (PUT /v1/vips), a capture's reason beside drops-only. The API answers those with 400 and their own
codes; every other 400 to a schema-valid request is a failure.
"""

import schemathesis

# health_check_mismatch: a health check's status range out of order, a
# timeout longer than its interval, or a check that cannot probe the VIP
# (its protocol, a port-0 VIP without a port).
CROSS_FIELD_CODES = {"backend_is_vip", "family_mismatch", "duplicate_backend", "duplicate_vip", "health_check_mismatch", "reason_and_drops"}


@schemathesis.check
def schema_valid_requests_are_refused_only_for_cross_field_rules(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    try:
        code = response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - any unreadable body is a failure below
        code = None
    if code not in CROSS_FIELD_CODES:
        raise AssertionError(
            f"a schema-valid request was refused with 400 {code!r} "
            f"(only {sorted(CROSS_FIELD_CODES)} are rules the schema cannot state): {response.text}"
        )
    return None
