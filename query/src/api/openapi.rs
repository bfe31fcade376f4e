//! `/openapi.json`: each route's roles, parameters, body and answer, described from the
//! handlers' own types.

use super::*;

/// One route as `/openapi.json` describes it.
#[derive(Clone, Debug, Serialize)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    /// `None`: no authentication (the probes).
    pub roles: Option<&'static [Role]>,
    pub summary: &'static str,
    /// What it takes and answers.
    #[serde(skip)]
    pub io: Io,
}

/// The JSON Schema of a type, from its definition (schemars).
pub(super) type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

pub(super) fn schema_of<T: JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

/// A route's inputs and its answer, as the handler's own types: its query parameters, its
/// JSON body, and its 200 answer (`ok`, in the first of `content`; other content types as
/// text or bytes).
#[derive(Clone, Copy, Debug)]
pub struct Io {
    query: Option<SchemaFn>,
    body: Option<SchemaFn>,
    ok: Option<SchemaFn>,
    content: &'static [&'static str],
}

impl Io {
    /// Answers JSON of type `T`.
    pub(super) fn json<T: JsonSchema>() -> Io {
        Io {
            query: None,
            body: None,
            ok: Some(schema_of::<T>),
            content: &["application/json"],
        }
    }

    /// Answers text.
    pub(super) fn text() -> Io {
        Io {
            query: None,
            body: None,
            ok: None,
            content: &["text/plain"],
        }
    }

    /// Answers OpenMetrics text.
    pub(super) fn openmetrics() -> Io {
        Io {
            content: &["application/openmetrics-text"],
            ..Io::text()
        }
    }

    /// Takes query parameters `Q`.
    pub(super) fn query<Q: JsonSchema>(mut self) -> Io {
        self.query = Some(schema_of::<Q>);
        self
    }

    /// Takes a JSON body `B`.
    pub(super) fn body<B: JsonSchema>(mut self) -> Io {
        self.body = Some(schema_of::<B>);
        self
    }

    /// Answers in these content types too.
    pub(super) fn also(mut self, content: &'static [&'static str]) -> Io {
        self.content = content;
        self
    }
}

/// An OpenAPI 3.1 description of [`routes`]: each route's roles, parameters, body and answer,
/// their JSON Schemas derived from the handlers' own types (schemars).
pub(crate) fn openapi_doc() -> serde_json::Value {
    use schemars::generate::{Contract, SchemaSettings};
    use serde_json::{Value, json};
    let settings = |contract: Contract| {
        SchemaSettings::draft2020_12().with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.contract = contract;
        })
    };
    // Inputs as they are read, answers as they are written; parameters inline (each becomes
    // its own parameter object).
    let mut inputs = settings(Contract::Deserialize).into_generator();
    let mut answers = settings(Contract::Serialize).into_generator();
    let mut params = settings(Contract::Deserialize)
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let error_schema = answers.subschema_for::<ErrorBody>().to_value();
    let mut paths = serde_json::Map::new();
    for r in routes() {
        let mut parameters: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if let Some(q) = r.io.query {
            let schema = q(&mut params).to_value();
            let required = schema["required"].as_array().cloned().unwrap_or_default();
            if let Some(props) = schema["properties"].as_object() {
                for (name, s) in props {
                    parameters.push(json!({
                        "name": name, "in": "query",
                        "required": required.contains(&Value::from(name.as_str())),
                        "description": s.get("description").cloned().unwrap_or(Value::Null),
                        "schema": s,
                    }));
                }
            }
        }
        let mut content = serde_json::Map::new();
        for (i, ct) in r.io.content.iter().enumerate() {
            let schema = match (i, r.io.ok) {
                (0, Some(ok)) => ok(&mut answers).to_value(),
                _ if ct.starts_with("text/") => json!({"type": "string"}),
                _ => json!({"type": "string", "contentEncoding": "binary"}),
            };
            content.insert((*ct).to_owned(), json!({"schema": schema}));
        }
        let error = json!({"content": {"application/json": {"schema": error_schema}}});
        let with = |d: &str| {
            let mut e = error.clone();
            e["description"] = d.into();
            e
        };
        let mut op = json!({
            "summary": r.summary,
            "parameters": parameters,
            "responses": {"200": {"description": "OK", "content": content}},
        });
        if let Some(b) = r.io.body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": b(&mut inputs).to_value()}}});
        }
        if let Some(roles) = r.roles {
            op["security"] = json!([{"bearer": []}]);
            op["x-vigil-roles"] = roles.iter().map(|x| x.as_str()).collect::<Vec<_>>().into();
            op["responses"]["400"] = with("the request is not valid (the reason in `error`)");
            op["responses"]["401"] = with("no valid credential");
            op["responses"]["403"] = with("none of the route's roles");
            op["responses"]["503"] =
                with("the call could not be recorded, or the service it needs does not run here");
        }
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    let mut schemas = inputs.take_definitions(true);
    schemas.extend(answers.take_definitions(true));
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Vigil analyst API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "An API key or a JWT (HS256, RS256, ES256)"}},
        },
    })
}

pub(super) async fn openapi() -> Response {
    Json(openapi_doc()).into_response()
}
