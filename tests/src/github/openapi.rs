//! GitHub's OpenAPI descriptions as validators: the REST API (`@octokit/openapi`,
//! `generated/api.github.com.json`, OpenAPI 3.0.3) for the stand-in's requests and answers, and
//! the webhooks (`@octokit/openapi-webhooks`, OpenAPI 3.1) for the payloads tests send
//! ([`super::webhooks`]). Both are npm packages pinned in `tests/openapi/package.json` and
//! installed by `scripts/install-deps`; without them every validation fails with "run
//! scripts/install-deps" (never a silent pass).
//!
//! How: each description is read once per process (a `OnceLock`, on first use). The REST
//! schemas the stand-in needs (the request bodies and answers of [`OPERATIONS`], `basic-error`,
//! `validation-error`) are compiled with `boon` (JSON Schema 2020-12, format assertions on)
//! right then, and the parsed document is dropped (about 0.6 s in a debug build). A webhook's
//! payload schema is compiled on its first use, alone with the components it refers to
//! (compiling all 261 up front takes 7.5 s). OpenAPI 3.0's `nullable: true` is not JSON
//! Schema: it is rewritten on load as `anyOf: [schema, {type: null}]` (what 3.1 writes as a
//! type list). A `$ref`'d response or request body (`#/components/responses/…`) is followed
//! here; `$ref`s inside schemas are boon's. boon's `uri-template` format is replaced by a
//! whole-string check (boon 0.6 splits at `/`, so GitHub's own `…/commits{/sha}` fails it).
//!
//! Why boon rather than `jsonschema`: boon is one crate over `serde_json`, `regex`, `url` and
//! `fluent-uri` (most of which the workspace already builds for reqwest), with no network loader
//! and no default features to turn off; `jsonschema` brings `referencing`, `fancy-regex`, an
//! HTTP resolver feature set and more. Build cost measured in `tests/README.md`.
//!
//! Which status codes: a documented status is checked against its schema; an error GitHub may
//! send on any operation but the description leaves out (401, 403, 404, 422, 5xx, …) is
//! checked against `basic-error` (`validation-error` for 422); an undocumented success status
//! is a violation.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// The folder `npm ci` fills (`tests/openapi/node_modules/@octokit`).
pub fn packages_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi/node_modules/@octokit")
}

/// The REST operations the stand-in answers (OpenAPI path template, method): their schemas are
/// compiled when the description is loaded.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("/repos/{owner}/{repo}/statuses/{sha}", "post"),
    ("/repos/{owner}/{repo}/contents/{path}", "get"),
    ("/repos/{owner}/{repo}/branches/{branch}", "get"),
    ("/repos/{owner}/{repo}/git/ref/{ref}", "get"),
    ("/repos/{owner}/{repo}/check-runs", "post"),
    ("/repos/{owner}/{repo}/check-runs/{check_run_id}", "patch"),
    ("/repos/{owner}/{repo}/check-runs/{check_run_id}", "get"),
    ("/repos/{owner}/{repo}/commits/{ref}/check-runs", "get"),
    (
        "/repos/{owner}/{repo}/collaborators/{username}/permission",
        "get",
    ),
    ("/app/installations/{installation_id}/access_tokens", "post"),
    ("/installation/token", "delete"),
    (
        "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions",
        "post",
    ),
    ("/repos/{owner}/{repo}/pulls/{pull_number}", "get"),
];

/// One loaded description: its schemas compiled (boon's `Schemas`), found by JSON pointer.
pub struct Description {
    name: &'static str,
    schemas: boon::Schemas,
    by_pointer: HashMap<String, boon::SchemaIndex>,
    /// What the REST operations document: request body pointer and whether it is required,
    /// and each response status's schema pointer (`None`: no JSON body).
    operations: HashMap<(String, String), Operation>,
    /// For a description whose schemas are compiled on first use (the webhooks': compiling
    /// all 261 takes seconds): the document, and what was compiled so far.
    lazy: Option<Lazy>,
}

struct Lazy {
    doc: Value,
    compiled: Mutex<HashMap<String, Arc<Compiled>>>,
}

type Compiled = Result<(boon::Schemas, boon::SchemaIndex), String>;

/// Compiles the schema at `pointer` of `doc` alone: a copy of `doc` holding only that schema
/// and the components it refers to (transitively) is given to a new compiler.
fn compile_one(name: &str, doc: &Value, pointer: &str) -> Compiled {
    let Some(root) = doc.pointer(pointer) else {
        return Err(format!("{name}: nothing at {pointer}"));
    };
    let mut subset = Value::Object(Map::new());
    put(&mut subset, pointer, root.clone());
    let mut todo = vec![root];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = todo.pop() {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    if let Some(p) = r.strip_prefix('#') {
                        if seen.insert(p.to_owned()) {
                            if let Some(target) = doc.pointer(p) {
                                put(&mut subset, p, target.clone());
                                todo.push(target);
                            }
                        }
                    }
                }
                todo.extend(m.values());
            }
            Value::Array(a) => todo.extend(a.iter()),
            _ => {}
        }
    }
    let mut compiler = compiler();
    compiler
        .add_resource(BASE, subset)
        .map_err(|e| format!("{name}: {e}"))?;
    let mut schemas = boon::Schemas::new();
    let index = compiler
        .compile(&format!("{BASE}#{}", fragment(pointer)), &mut schemas)
        .map_err(|e| format!("{name}: cannot compile {pointer}: {e}"))?;
    Ok((schemas, index))
}

/// A compiler as both descriptions need it: format assertions on, and RFC 6570's
/// `uri-template` checked whole (boon 0.6 checks it per path segment, so GitHub's own
/// `…/commits{/sha}` fails there).
fn compiler() -> boon::Compiler {
    let mut c = boon::Compiler::new();
    c.enable_format_assertions();
    c.register_format(boon::Format {
        name: "uri-template",
        func: uri_template,
    });
    c
}

/// RFC 6570 level 4, loosely: braces balanced and not nested, an expression's operator and
/// variable names from the RFC's sets, and no space or control character outside.
fn uri_template(v: &Value) -> Result<(), Box<dyn std::error::Error>> {
    let Value::String(s) = v else { return Ok(()) };
    let mut rest = s.as_str();
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("a closing brace without an opening one".into());
        }
        let Some(len) = rest[open + 1..].find(['{', '}']) else {
            return Err("no matching closing brace".into());
        };
        let expr = &rest[open + 1..open + 1 + len];
        if rest[open + 1 + len..].starts_with('{') {
            return Err("nested curly braces".into());
        }
        let names = expr.trim_start_matches(['+', '#', '.', '/', ';', '?', '&']);
        let ok_name = |n: &str| {
            let n = n.trim_end_matches('*');
            let n = n.split_once(':').map_or(n, |(n, _)| n);
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'%')
        };
        if !names.split(',').all(ok_name) {
            return Err(format!("bad expression {{{expr}}}").into());
        }
        rest = &rest[open + 2 + len..];
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("space or control character".into());
    }
    Ok(())
}

/// Sets the value at a JSON pointer, creating objects on the way.
fn put(doc: &mut Value, pointer: &str, v: Value) {
    let mut at = doc;
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (i, t) in tokens.iter().enumerate() {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        let Value::Object(m) = at else { return };
        if i + 1 == tokens.len() {
            m.insert(t.clone(), v);
            return;
        }
        at = m
            .entry(t.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[derive(Default)]
struct Operation {
    request: Option<(String, bool)>,
    responses: HashMap<u16, Option<String>>,
}

const BASE: &str = "https://sdci.invalid/openapi.json";

/// Follows local `$ref`s (`#/…`) from `pointer` until a value that is not a reference.
fn resolve(doc: &Value, mut pointer: String) -> Option<(String, &Value)> {
    let mut v = doc.pointer(&pointer)?;
    for _ in 0..16 {
        let Some(r) = v.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let p = r.strip_prefix('#')?;
        v = doc.pointer(p)?;
        pointer = p.to_owned();
    }
    Some((pointer, v))
}

impl Description {
    /// Reads the description, lists the schemas to compile (`wanted` adds pointers of its
    /// own), and compiles them all; the document itself is not kept.
    fn load(
        name: &'static str,
        relative: &str,
        operations: &[(&str, &str)],
        wanted: impl Fn(&Value) -> Vec<String>,
        lazy: bool,
    ) -> Result<Self, String> {
        let path = packages_dir().join(relative);
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "GitHub's OpenAPI description {} cannot be read ({e}): run scripts/install-deps",
                path.display()
            )
        })?;
        let mut doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is not JSON ({e}): run scripts/install-deps",
                path.display()
            )
        })?;
        drop(bytes);
        rewrite_nullable(&mut doc);
        let mut pointers = wanted(&doc);
        let mut ops = HashMap::new();
        for (template, method) in operations {
            let op_ptr = format!("/paths/{}/{method}", escape(template));
            if doc.pointer(&op_ptr).is_none() {
                return Err(format!(
                    "{name}: {method} {template} is not an operation (a newer description?)"
                ));
            }
            let mut op = Operation::default();
            if let Some((p, rb)) = resolve(&doc, format!("{op_ptr}/requestBody")) {
                let schema = format!("{p}/content/application~1json/schema");
                if doc.pointer(&schema).is_some() {
                    pointers.push(schema.clone());
                    let required = rb.get("required") == Some(&Value::Bool(true));
                    op.request = Some((schema, required));
                }
            }
            let statuses: Vec<String> = doc
                .pointer(&format!("{op_ptr}/responses"))
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for status in statuses {
                let Ok(code) = status.parse::<u16>() else {
                    continue;
                };
                let schema =
                    resolve(&doc, format!("{op_ptr}/responses/{status}")).and_then(|(p, _)| {
                        let s = format!("{p}/content/application~1json/schema");
                        doc.pointer(&s).map(|_| s)
                    });
                if let Some(s) = &schema {
                    pointers.push(s.clone());
                }
                op.responses.insert(code, schema);
            }
            ops.insert(((*template).to_owned(), (*method).to_owned()), op);
        }
        let mut schemas = boon::Schemas::new();
        let mut by_pointer = HashMap::new();
        if lazy {
            return Ok(Self {
                name,
                schemas,
                by_pointer,
                operations: ops,
                lazy: Some(Lazy {
                    doc,
                    compiled: Mutex::new(HashMap::new()),
                }),
            });
        }
        let mut compiler = compiler();
        compiler
            .add_resource(BASE, doc)
            .map_err(|e| format!("{name}: {e}"))?;
        for p in pointers {
            let index = compiler
                .compile(&format!("{BASE}#{}", fragment(&p)), &mut schemas)
                .map_err(|e| format!("{name}: cannot compile {p}: {e}"))?;
            by_pointer.insert(p, index);
        }
        Ok(Self {
            name,
            schemas,
            by_pointer,
            operations: ops,
            lazy: None,
        })
    }

    /// Validates `instance` against the compiled schema at `pointer`; `Err` says where and why.
    pub fn validate_at(&self, pointer: &str, instance: &Value) -> Result<(), String> {
        // `{:#}` is boon's detailed, multi-line form: every failing keyword and location.
        if let Some(index) = self.by_pointer.get(pointer) {
            return self
                .schemas
                .validate(instance, *index)
                .map_err(|e| format!("{e:#}"));
        }
        let Some(lazy) = &self.lazy else {
            return Err(format!("{}: no schema compiled at {pointer}", self.name));
        };
        let compiled = {
            let mut m = lazy.compiled.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(pointer.to_owned())
                .or_insert_with(|| Arc::new(compile_one(self.name, &lazy.doc, pointer)))
                .clone()
        };
        let (schemas, index) = compiled.as_ref().as_ref().map_err(Clone::clone)?;
        schemas
            .validate(instance, *index)
            .map_err(|e| format!("{e:#}"))
    }

    fn operation(&self, template: &str, method: &str) -> Result<&Operation, String> {
        self.operations
            .get(&(template.to_owned(), method.to_ascii_lowercase()))
            .ok_or_else(|| format!("{method} {template} is not an operation the stand-in checks"))
    }

    /// Whether a compiled schema exists at `pointer`.
    pub fn has(&self, pointer: &str) -> bool {
        self.by_pointer.contains_key(pointer)
            || self
                .lazy
                .as_ref()
                .is_some_and(|l| l.doc.pointer(pointer).is_some())
    }
}

/// A JSON pointer as a URL fragment: everything but unreserved characters, `/` and `~`
/// percent-encoded (`{owner}` → `%7Bowner%7D`).
fn fragment(pointer: &str) -> String {
    let mut out = String::with_capacity(pointer.len());
    for b in pointer.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A JSON pointer token (`/` → `~1`, `~` → `~0`).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// OpenAPI 3.0's `nullable: true` as JSON Schema: `anyOf: [the schema, {type: null}]`.
fn rewrite_nullable(v: &mut Value) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(rewrite_nullable),
        Value::Object(map) => {
            map.values_mut().for_each(rewrite_nullable);
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
                let inner = Value::Object(std::mem::take(map));
                let mut null = Map::new();
                null.insert("type".into(), Value::String("null".into()));
                map.insert(
                    "anyOf".into(),
                    Value::Array(vec![inner, Value::Object(null)]),
                );
            }
        }
        _ => {}
    }
}

const BASIC_ERROR: &str = "/components/schemas/basic-error";
const VALIDATION_ERROR: &str = "/components/schemas/validation-error";

static REST: OnceLock<Result<Description, String>> = OnceLock::new();
static WEBHOOKS: OnceLock<Result<Description, String>> = OnceLock::new();

/// The REST API's description (`api.github.com.json`), loaded and compiled once per process.
pub fn rest() -> Result<&'static Description, String> {
    REST.get_or_init(|| {
        Description::load(
            "api.github.com",
            "openapi/generated/api.github.com.json",
            OPERATIONS,
            |_| vec![BASIC_ERROR.to_owned(), VALIDATION_ERROR.to_owned()],
            false,
        )
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The webhooks' description (`api.github.com.json` of openapi-webhooks), loaded once per
/// process; a webhook's payload schema is compiled on its first use (alone with the
/// components it refers to: compiling all 261 up front takes seconds).
pub fn webhooks() -> Result<&'static Description, String> {
    WEBHOOKS
        .get_or_init(|| {
            Description::load(
                "webhooks api.github.com",
                "openapi-webhooks/generated/api.github.com.json",
                &[],
                |_| Vec::new(),
                true,
            )
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Where the payload schema of webhook `key` (e.g. `check-run-rerequested`) is.
pub fn webhook_pointer(key: &str) -> String {
    format!(
        "/webhooks/{}/post/requestBody/content/application~1json/schema",
        escape(key)
    )
}

/// Checks a request body against the operation's `requestBody` (`application/json`). An
/// operation without a request body must get none.
pub fn check_request(template: &str, method: &str, body: &[u8]) -> Result<(), String> {
    let d = rest()?;
    let op = d.operation(template, method)?;
    let Some((schema, required)) = &op.request else {
        return if body.is_empty() {
            Ok(())
        } else {
            Err(format!("{method} {template} takes no request body"))
        };
    };
    if body.is_empty() {
        return if *required {
            Err(format!("{method} {template} requires a request body"))
        } else {
            Ok(())
        };
    }
    let instance: Value =
        serde_json::from_slice(body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    d.validate_at(schema, &instance)
        .map_err(|e| format!("request body of {method} {template}: {e}"))
}

/// Checks an answer's status and body against the operation's `responses`.
pub fn check_response(
    template: &str,
    method: &str,
    status: u16,
    body: Option<&Value>,
) -> Result<(), String> {
    let d = rest()?;
    let op = d.operation(template, method)?;
    let schema = match op.responses.get(&status) {
        Some(s) => s.as_deref(),
        None if status == 422 => Some(VALIDATION_ERROR),
        None if status >= 400 => Some(BASIC_ERROR),
        None if status == 304 => None,
        None => {
            return Err(format!(
                "{method} {template}: GitHub documents no {status} answer"
            ))
        }
    };
    match (schema, body) {
        (Some(s), Some(b)) => d
            .validate_at(s, b)
            .map_err(|e| format!("{status} answer of {method} {template}: {e}")),
        (Some(_), None) => Err(format!(
            "{method} {template}: a {status} answer has a JSON body on GitHub"
        )),
        (None, Some(_)) => Err(format!(
            "{method} {template}: a {status} answer has no JSON body on GitHub"
        )),
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nullable_becomes_a_null_alternative() {
        let mut v = json!({"type": "string", "nullable": true, "enum": ["a"]});
        rewrite_nullable(&mut v);
        assert_eq!(
            v,
            json!({"anyOf": [{"type": "string", "enum": ["a"]}, {"type": "null"}]})
        );
    }

    #[test]
    fn the_rest_description_loads_and_rejects_a_wrong_request_and_a_wrong_answer() {
        let t = std::time::Instant::now();
        let d = rest().unwrap();
        eprintln!(
            "api.github.com.json loaded and compiled in {:?}",
            t.elapsed()
        );
        assert!(d.has(BASIC_ERROR));
        let statuses = "/repos/{owner}/{repo}/statuses/{sha}";
        check_request(statuses, "post", br#"{"state":"success","context":"ci"}"#).unwrap();
        let err = check_request(statuses, "post", br#"{"state":"bogus"}"#).unwrap_err();
        assert!(err.contains("state"), "{err}");
        let err = check_response(statuses, "post", 201, Some(&json!({"id": "one"}))).unwrap_err();
        assert!(err.contains("201 answer"), "{err}");
        let err = check_response(statuses, "post", 200, Some(&json!({}))).unwrap_err();
        assert!(err.contains("documents no 200"), "{err}");
        check_response(statuses, "post", 403, Some(&json!({"message": "no"}))).unwrap();
    }

    #[test]
    fn the_webhooks_description_loads() {
        let t = std::time::Instant::now();
        let d = webhooks().unwrap();
        eprintln!(
            "webhooks api.github.com.json loaded and compiled in {:?}",
            t.elapsed()
        );
        assert!(d.has(&webhook_pointer("push")));
        let t = std::time::Instant::now();
        let err = d.validate_at(&webhook_pointer("push"), &json!({"ref": "refs/heads/main"}));
        eprintln!("push compiled and checked in {:?}", t.elapsed());
        assert!(err.unwrap_err().contains("missing properties"));
    }

    #[test]
    fn uri_templates_are_checked_whole() {
        let ok = |s: &str| uri_template(&json!(s)).is_ok();
        assert!(ok("https://api.github.com/repos/o/r/commits{/sha}"));
        assert!(ok(
            "https://api.github.com/notifications{?since,all,participating}"
        ));
        assert!(ok(
            "https://api.github.com/repos/o/r/compare/{base}...{head}"
        ));
        assert!(!ok("https://x/{a{b}}"));
        assert!(!ok("https://x/{a"));
        assert!(!ok("https://x/a}"));
        assert!(!ok("https://x/{a b}"));
    }

    #[test]
    fn a_pointer_becomes_a_fragment() {
        assert_eq!(
            fragment("/paths/~1repos~1{owner}/post"),
            "/paths/~1repos~1%7Bowner%7D/post"
        );
    }
}
