//! The OpenAPI 3.1 document of the API, generated from the route table (`routes::table`).
//!
//! Paths, methods, summaries, parameters, required access and security schemes are
//! exact. Body schemas are named after their `edgefleet_wire::api` types but not spelled
//! out field by field (the wire crate has no schema derivation yet), except `ErrorBody`.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::routes::{Access, RouteSpec};

pub fn document(routes: &[RouteSpec]) -> Value {
    let mut paths = Map::new();
    let mut types = BTreeSet::new();
    for route in routes {
        types.extend(route.request.map(base_type));
        types.insert(base_type(route.response));
        let operations = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(operations) = operations {
            operations.insert(route.method.as_str().to_owned(), operation(route));
        }
    }
    let mut schemas = Map::new();
    for name in types {
        schemas.insert(
            name.to_owned(),
            json!({ "type": "object", "description": format!("edgefleet_wire::api::{name} (JSON)") }),
        );
    }
    schemas.insert(
        "ErrorBody".into(),
        json!({
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": { "type": "string", "description": "bad_request, unauthorized, forbidden, not_found, conflict, payload_too_large, invalid_manifest, internal, ..." },
                "message": { "type": "string" },
                "details": { "type": "array", "items": { "type": "string" } }
            }
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "edgefleet control plane",
            "version": edgefleet_wire::AGENT_VERSION,
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiToken": { "type": "http", "scheme": "bearer", "description": "API token <id>.<secret>" },
                "nodeCertificate": { "type": "mutualTLS", "description": "the node's client certificate, issued at enrollment" }
            }
        }
    })
}

/// `NodeSummary[]` → `NodeSummary`.
fn base_type(name: &str) -> &str {
    name.trim_end_matches("[]")
}

fn schema_ref(name: &str) -> Value {
    let reference = json!({ "$ref": format!("#/components/schemas/{}", base_type(name)) });
    if name.ends_with("[]") {
        json!({ "type": "array", "items": reference })
    } else {
        reference
    }
}

fn operation(route: &RouteSpec) -> Value {
    let mut parameters: Vec<Value> = path_parameters(route.path)
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    parameters.extend(
        route
            .query
            .iter()
            .map(|name| json!({ "name": name, "in": "query", "required": false, "schema": { "type": "string" } })),
    );
    let mut operation = json!({
        "operationId": operation_id(route),
        "summary": route.summary,
        "x-edgefleet-access": route.access.describe(),
        "parameters": parameters,
        "responses": {
            "200": {
                "description": route.response,
                "content": { "application/json": { "schema": schema_ref(route.response) } }
            },
            "default": {
                "description": "an error",
                "content": { "application/json": { "schema": schema_ref("ErrorBody") } }
            }
        }
    });
    let security = match route.access {
        Access::Public | Access::JoinToken => json!([]),
        Access::Node => json!([{ "nodeCertificate": [] }]),
        Access::Token(_) => json!([{ "apiToken": [] }]),
    };
    if let Value::Object(map) = &mut operation {
        map.insert("security".into(), security);
        if let Some(request) = route.request {
            map.insert(
                "requestBody".into(),
                json!({
                    "required": true,
                    "content": { "application/json": { "schema": schema_ref(request) } }
                }),
            );
        }
    }
    operation
}

fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

fn operation_id(route: &RouteSpec) -> String {
    let path: Vec<&str> = route
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches(['{', '}']))
        .collect();
    format!("{}_{}", route.method.as_str(), path.join("_")).replace(['-', '.'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::table;

    #[test]
    fn every_route_is_documented_with_its_access() {
        let routes = table();
        let doc = document(&routes);
        assert_eq!(doc["openapi"], "3.1.0");
        for route in &routes {
            let op = &doc["paths"][route.path][route.method.as_str()];
            assert_eq!(
                op["summary"],
                route.summary,
                "{} {}",
                route.method.as_str(),
                route.path
            );
            assert_eq!(op["x-edgefleet-access"], route.access.describe());
        }
        let revoke = &doc["paths"]["/v1/nodes/{name}/revoke"]["post"];
        assert_eq!(revoke["x-edgefleet-access"], "admin");
        assert_eq!(revoke["parameters"][0]["name"], "name");
        assert_eq!(
            doc["paths"]["/v1/nodes"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
                ["type"],
            "array"
        );
        let ids: BTreeSet<String> = routes.iter().map(operation_id).collect();
        assert_eq!(ids.len(), routes.len(), "operation ids are unique");
    }
}
