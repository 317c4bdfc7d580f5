//! The OpenAPI 3.1 document of the API, written by hand; a test checks that it lists exactly
//! the routes the router serves.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

/// The OpenAPI document served at `/api/openapi.json`.
pub fn openapi() -> Value {
    let name_param = json!({
        "name": "name", "in": "path", "required": true,
        "description": "File name: 1–255 bytes, no '/', '\\\\' or control characters, not starting with '.'",
        "schema": { "type": "string" }
    });
    let bearer = json!([{ "bearer": [] }]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "DisGraFS",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Files with automatic tags, searchable and browsable as a file–tag graph. Every error is a JSON object {\"error\": message}."
        },
        "paths": {
            "/": {
                "get": {
                    "summary": "The browser UI (upload, search, tag graph); served with a strict Content-Security-Policy, Cache-Control: no-cache and an ETag",
                    "responses": {
                        "200": { "description": "The page", "content": { "text/html": { "schema": { "type": "string" } } } },
                        "304": { "description": "The ETag matched If-None-Match" }
                    }
                }
            },
            "/ui/{asset}": {
                "parameters": [{
                    "name": "asset", "in": "path", "required": true,
                    "description": "A script, style sheet or image of the UI, e.g. app.js",
                    "schema": { "type": "string" }
                }],
                "get": {
                    "summary": "A static asset of the browser UI (embedded in the binary), with the page's headers",
                    "responses": {
                        "200": { "description": "The asset, with its content type" },
                        "304": { "description": "The ETag matched If-None-Match" },
                        "404": error_response("No such asset")
                    }
                }
            },
            "/api/files/{name}": {
                "parameters": [name_param],
                "put": {
                    "summary": "Upload (create or replace) a file; the raw body is streamed to storage",
                    "security": bearer,
                    "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
                    "responses": {
                        "201": json_response("Stored; the last upload of a name to finish wins", "Uploaded"),
                        "400": error_response("Invalid name or aborted body"),
                        "401": error_response("Missing or wrong bearer token"),
                        "413": error_response("Body larger than --max-upload"),
                        "503": error_response("Stored but not indexed or not queued for tagging")
                    }
                },
                "get": {
                    "summary": "Download a file (supports Range, If-Range and If-None-Match)",
                    "responses": {
                        "200": { "description": "The bytes", "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
                        "206": { "description": "The requested byte range" },
                        "304": { "description": "The ETag matched If-None-Match" },
                        "400": error_response("Invalid name"),
                        "404": error_response("No such file"),
                        "416": error_response("Range not satisfiable")
                    }
                },
                "delete": {
                    "summary": "Delete a file and its graph node",
                    "security": bearer,
                    "responses": {
                        "204": { "description": "Deleted" },
                        "400": error_response("Invalid name"),
                        "401": error_response("Missing or wrong bearer token"),
                        "404": error_response("No such file")
                    }
                }
            },
            "/api/files/{name}/tags": {
                "parameters": [name_param],
                "get": {
                    "summary": "The tags of a file, best first (empty until the tagger has run)",
                    "responses": {
                        "200": { "description": "Tags", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Tag" } } } } },
                        "404": error_response("No such file")
                    }
                }
            },
            "/api/search": {
                "get": {
                    "summary": "Files carrying all given tags, whose name contains a substring, of a kind; ordered by name",
                    "parameters": [
                        query("tags", "Comma-separated tags that must all be present", json!({ "type": "string" })),
                        query("name", "Substring of the name (ASCII case-insensitive)", json!({ "type": "string" })),
                        query("kind", "File kind", json!({ "$ref": "#/components/schemas/Kind" })),
                        query("offset", "Matches to skip", json!({ "type": "integer", "minimum": 0, "default": 0 })),
                        query("limit", "Page size", json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 50 }))
                    ],
                    "responses": {
                        "200": json_response("One page of matches and the total count", "SearchPage"),
                        "400": error_response("Bad parameter")
                    }
                }
            },
            "/api/graph": {
                "get": {
                    "summary": "The neighbourhood of a file (its tags, files sharing them) or of a tag (its files and their tags)",
                    "parameters": [
                        query("file", "Center file name (exclusive with tag)", json!({ "type": "string" })),
                        query("tag", "Center tag (exclusive with file)", json!({ "type": "string" })),
                        query("limit", "Most neighbouring files", json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 50 }))
                    ],
                    "responses": {
                        "200": json_response("Nodes and edges", "Graph"),
                        "400": error_response("Neither or both of file and tag"),
                        "404": error_response("No such file or tag")
                    }
                }
            },
            "/api/openapi.json": {
                "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.1 JSON" } } }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness and store health",
                    "responses": { "200": { "description": "{\"status\": \"ok\"}" }, "503": error_response("A store is unavailable") }
                }
            },
            "/metrics": {
                "get": { "summary": "Prometheus metrics (text format 0.0.4)", "responses": { "200": { "description": "Metrics" } } }
            }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "Kind": { "type": "string", "enum": ["text", "pdf", "image", "audio", "video", "other"] },
                "Uploaded": {
                    "type": "object", "required": ["name", "size", "sha256", "kind"],
                    "properties": {
                        "name": { "type": "string" }, "size": { "type": "integer" },
                        "sha256": { "type": "string" }, "kind": { "$ref": "#/components/schemas/Kind" }
                    }
                },
                "Tag": {
                    "type": "object", "required": ["tag", "score"],
                    "properties": { "tag": { "type": "string" }, "score": { "type": "number", "minimum": 0, "maximum": 1 } }
                },
                "File": {
                    "type": "object", "required": ["name", "size", "sha256", "kind", "uploaded"],
                    "properties": {
                        "name": { "type": "string" }, "size": { "type": "integer" }, "sha256": { "type": "string" },
                        "kind": { "$ref": "#/components/schemas/Kind" },
                        "uploaded": { "type": "integer", "description": "Unix seconds" }
                    }
                },
                "SearchPage": {
                    "type": "object", "required": ["files", "total"],
                    "properties": { "files": { "type": "array", "items": { "$ref": "#/components/schemas/File" } }, "total": { "type": "integer" } }
                },
                "Graph": {
                    "type": "object", "required": ["nodes", "edges"],
                    "properties": {
                        "nodes": { "type": "array", "items": {
                            "type": "object", "required": ["id", "kind", "label"],
                            "properties": { "id": { "type": "string" }, "kind": { "type": "string", "enum": ["file", "tag"] }, "label": { "type": "string" } }
                        } },
                        "edges": { "type": "array", "items": {
                            "type": "object", "required": ["source", "target", "score"],
                            "properties": { "source": { "type": "string" }, "target": { "type": "string" }, "score": { "type": "number" } }
                        } }
                    }
                }
            }
        }
    })
}
