//! `/v1/openapi.json` matches the real API: its paths and methods are the
//! router's routes (each answers, none is missing), and real requests and
//! the real answers to them, over TCP from the real `serve`, validate
//! against the document's schemas (with the `jsonschema` crate), for each
//! status the API gave.

mod http_api_common;

use http_api_common::{ACCOUNT, Api, USER, simple_message};
use serde_json::{Value, json};
use std::collections::BTreeSet;

struct Document(Value);

impl Document {
    fn operation(&self, method: &str, path: &str) -> &Value {
        let operation = &self.0["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        operation
    }

    /// Validates `instance` against the schema at `schema` (a `$ref` or an
    /// inline schema), resolving references within the document.
    fn validate(&self, schema: &Value, instance: &Value, what: &str) {
        let mut root = self.0.clone();
        root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        let schema = schema.clone();
        match schema.get("$ref") {
            Some(reference) => root["$ref"] = reference.clone(),
            None => root["allOf"] = json!([schema]),
        }
        let validator = jsonschema::draft202012::new(&root).expect("the schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:?}\n{instance:#}");
    }

    fn check_request(&self, method: &str, path: &str, body: &Value) {
        let schema =
            &self.operation(method, path)["requestBody"]["content"]["application/json"]["schema"];
        self.validate(schema, body, &format!("request of {method} {path}"));
    }

    /// A request the document itself says is wrong (an unknown field).
    fn check_nonconforming_request(&self, method: &str, path: &str, body: &Value) {
        let schema =
            self.operation(method, path)["requestBody"]["content"]["application/json"]["schema"]
                .clone();
        let mut root = self.0.clone();
        root["$ref"] = schema["$ref"].clone();
        let validator = jsonschema::draft202012::new(&root).expect("the schema compiles");
        assert!(!validator.is_valid(body), "the document allows {body}");
    }

    fn check_response(&self, method: &str, path: &str, status: u16, body: &Value) {
        let response = &self.operation(method, path)["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {status}, which the document does not list: {body}"
        );
        let schema = &response["content"]["application/json"]["schema"];
        self.validate(schema, body, &format!("answer {status} of {method} {path}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes_and_the_real_traffic() {
    let api = Api::start().await;
    let document = api
        .request(reqwest::Method::GET, "/v1/openapi.json", None, &[], None)
        .await;
    assert_eq!(document.status, 200);
    assert!(
        document.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "OpenAPI 3.1"
    );
    let document = Document(document.body);

    // The document's operations are exactly the router's.
    let mut documented = BTreeSet::new();
    for (path, item) in document.0["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = oxirelay::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routed);
    // Each answers as documented without a key (none is a 404 or 405),
    // and a path that is not documented is not served.
    for (method, path) in &routed {
        let concrete = path.replace("{id}", "0123456789ABCDEF");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let response = api
            .client
            .request(method.clone(), format!("{}{concrete}", api.base))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let expected = if path == "/v1/openapi.json" { 200 } else { 401 };
        assert_eq!(status, expected, "{method} {path}");
    }
    let missing = api
        .client
        .get(format!("{}/v1/nothing", api.base))
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status().as_u16(), 404);

    let key = api.sender_key("documented").await;
    let slow = api
        .create_key(
            "documented-slow",
            &[
                "--scope",
                "send",
                "--allowed-from",
                USER,
                "--account",
                ACCOUNT,
                "--rate",
                "1/min",
            ],
        )
        .await;
    // Each real request: (method, documented path, concrete path, key, body).
    let structured = json!({
        "from": {"email": USER, "name": "Docs"},
        "to": ["a@example.net", {"email": "b@example.net"}],
        "bcc": ["c@example.net"],
        "reply_to": {"email": USER},
        "subject": "documented",
        "text": "t",
        "html": "<p>h</p>",
        "attachments": [{"filename": "a.txt", "content_type": "text/plain", "content": "aGk="}],
        "headers": {"X-Doc": "1"},
        "tags": ["docs"],
        "account": ACCOUNT,
    });
    // (method, path, body); the one with `colour` is refused by both.
    let exchanges: Vec<(&str, &str, Value)> = vec![
        ("post", "/v1/messages", structured),
        (
            "post",
            "/v1/messages",
            json!({"from": USER, "to": ["a@example.net"], "subject": "x\ny"}),
        ),
        (
            "post",
            "/v1/messages",
            json!({"from": USER, "to": ["a@example.net"], "subject": "ok", "colour": "red"}),
        ),
        (
            "post",
            "/v1/messages",
            json!({"from": "boss@example.com", "to": ["a@example.net"]}),
        ),
        (
            "post",
            "/v1/messages/raw",
            json!({"mail_from": USER, "rcpt_to": ["a@example.net"], "message": format!("From: {USER}\nSubject: raw\n\nbody\n"), "tags": ["docs"]}),
        ),
        (
            "post",
            "/v1/messages/batch",
            json!({"messages": [simple_message("a@example.net", "b1"), {"from": USER, "to": ["bad"]}]}),
        ),
    ];
    let mut ids = Vec::new();
    for (method, path, body) in &exchanges {
        if body.get("colour").is_some() {
            document.check_nonconforming_request(method, path, body);
        } else {
            document.check_request(method, path, body);
        }
        let answer = api.post(path, &key, body).await;
        document.check_response(method, path, answer.status, &answer.body);
        if answer.status == 202 {
            ids.push(answer.body["id"].as_str().expect("id").to_string());
        }
    }
    assert_eq!(ids.len(), 2, "the structured and the raw message");

    // Rate limited, with the documented answer.
    let first = api
        .post(
            "/v1/messages",
            &slow,
            &simple_message("a@example.net", "slow"),
        )
        .await;
    document.check_response("post", "/v1/messages", first.status, &first.body);
    let limited = api
        .post(
            "/v1/messages",
            &slow,
            &simple_message("a@example.net", "slow"),
        )
        .await;
    assert_eq!(limited.status, 429);
    document.check_response("post", "/v1/messages", 429, &limited.body);

    // Reading and cancelling.
    api.wait_for_attempts(&[&ids[0]]);
    let shown = api.get(&format!("/v1/messages/{}", ids[0]), &key).await;
    document.check_response("get", "/v1/messages/{id}", shown.status, &shown.body);
    assert_eq!(shown.status, 200);
    let none = api.get("/v1/messages/0123456789ABCDEF", &key).await;
    document.check_response("get", "/v1/messages/{id}", none.status, &none.body);
    for query in [
        "",
        "?status=delivered&limit=2",
        "?tag=docs",
        "?since=yesterday",
        "?colour=red",
    ] {
        let listed = api.get(&format!("/v1/messages{query}"), &key).await;
        document.check_response("get", "/v1/messages", listed.status, &listed.body);
    }
    let delivered = api
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/messages/{}", ids[0]),
            Some(&key),
            &[],
            None,
        )
        .await;
    assert_eq!(delivered.status, 409);
    document.check_response("delete", "/v1/messages/{id}", 409, &delivered.body);
    let unknown = api
        .request(
            reqwest::Method::DELETE,
            "/v1/messages/0123456789ABCDEF",
            Some(&key),
            &[],
            None,
        )
        .await;
    document.check_response("delete", "/v1/messages/{id}", unknown.status, &unknown.body);
    let unauthenticated = api
        .request(
            reqwest::Method::GET,
            "/v1/messages",
            Some("oxr_nope"),
            &[],
            None,
        )
        .await;
    document.check_response(
        "get",
        "/v1/messages",
        unauthenticated.status,
        &unauthenticated.body,
    );
    assert!(api.relay.terminate().success());
}
