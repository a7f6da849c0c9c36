//! A fake Kubernetes API server for tests, in process, on loopback.
//!
//! No API server can run on the machines the tests run on, so the
//! orchestrator's Kubernetes code is tested against this one. It answers
//! exactly the requests the orchestrator makes, the way the real one does:
//!
//! - `GET` of one object, `GET` of a collection with `labelSelector` /
//!   `fieldSelector` (equality only) returning a `*List` with a
//!   `resourceVersion`;
//! - `GET ...?watch=true&resourceVersion=N`: a stream of newline-delimited
//!   `{"type": "ADDED"|"MODIFIED"|"DELETED", "object": ...}` for every
//!   change after `N` (replayed from its log, then live), and a `410 Gone`
//!   `ERROR` event for a version older than the log;
//! - `POST` (create, `201`, server fields filled in) and `PATCH` with
//!   `application/merge-patch+json`;
//! - `403 Forbidden` `Status` bodies worded like the real RBAC authorizer
//!   for any verb and resource the test forbids.
//!
//! Objects come from recorded JSON (`fixtures/`); every request is logged
//! for the test to inspect.

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The recorded fixtures, by file name.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic_free(&path, &e));
    serde_json::from_str(&text).unwrap_or_else(|e| panic_free(&path, &e))
}

#[allow(clippy::panic)]
fn panic_free<T>(path: &str, e: &dyn std::fmt::Display) -> T {
    // Test support: a broken fixture is a broken test.
    panic!("fixture {path}: {e}")
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, `PATCH`, ...
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The body, parsed as JSON when it is.
    pub body: Value,
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    collection: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// collection path -> name -> object
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    log: Vec<Change>,
    /// Changes older than this are compacted (watching from before gets 410).
    compacted_before: u64,
    forbidden: BTreeSet<(String, String)>,
    requests: Vec<Recorded>,
    /// Bumped to end every open watch.
    watch_epoch: u64,
    /// Watch responses still open.
    open_watches: usize,
}

/// Counts a watch response as open until its body is dropped (the client
/// went away or the server ended it).
struct OpenWatch(Arc<Mutex<Store>>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        let mut s = lock(&self.0);
        s.open_watches = s.open_watches.saturating_sub(1);
    }
}

impl Store {
    /// Stores `object` under a new resourceVersion: its collection, the
    /// version, whether it replaced one, and the object as stored.
    fn put(&mut self, mut object: Value) -> (String, u64, bool, Value) {
        let collection = collection_of(&object);
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let existed = self
            .objects
            .entry(collection.clone())
            .or_default()
            .insert(name, object.clone())
            .is_some();
        (collection, rv, existed, object)
    }
}

/// The fake server. Dropping it stops accepting connections.
pub struct FakeApiServer {
    address: SocketAddr,
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where an object lives: `api/v1/namespaces/NS/pods`,
/// `apis/ray.io/v1/namespaces/NS/rayclusters`, ...
fn collection_of(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let kind = object["kind"].as_str().unwrap_or("");
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let plural = match kind {
        "Pod" => "pods".to_string(),
        "Event" => "events".to_string(),
        "RayCluster" => "rayclusters".to_string(),
        other => format!("{}s", other.to_lowercase()),
    };
    let prefix = if api_version.contains('/') {
        format!("apis/{api_version}")
    } else {
        format!("api/{api_version}")
    };
    format!("{prefix}/namespaces/{ns}/{plural}")
}

fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    match store.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl FakeApiServer {
    /// Starts on 127.0.0.1 with `objects` (each with apiVersion, kind and
    /// metadata.namespace/name).
    pub async fn start(objects: Vec<Value>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let store = Arc::new(Mutex::new(Store {
            rv: 1000,
            ..Store::default()
        }));
        let changed = Arc::new(Notify::new());
        let server = Self {
            address,
            store: Arc::clone(&store),
            changed: Arc::clone(&changed),
            task: tokio::spawn(accept(listener, store, changed)),
        };
        for o in objects {
            server.apply(o);
        }
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED` for watchers),
    /// with a new resourceVersion.
    pub fn apply(&self, object: Value) {
        let mut store = lock(&self.store);
        let (collection, rv, existed, object) = store.put(object);
        store.log.push(Change {
            rv,
            collection,
            kind: if existed { "MODIFIED" } else { "ADDED" },
            object,
        });
        drop(store);
        self.changed.notify_waiters();
    }

    /// Deletes an object (`DELETED` for watchers).
    pub fn delete(&self, object: &Value) {
        let collection = collection_of(object);
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let mut store = lock(&self.store);
        store.rv += 1;
        let rv = store.rv;
        if let Some(mut gone) = store
            .objects
            .get_mut(&collection)
            .and_then(|c| c.remove(name))
        {
            gone["metadata"]["resourceVersion"] = json!(rv.to_string());
            store.log.push(Change {
                rv,
                collection,
                kind: "DELETED",
                object: gone,
            });
        }
        drop(store);
        self.changed.notify_waiters();
    }

    /// The stored object, as the server has it now.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let collection = collection_of(&json!({
            "apiVersion": api_version, "kind": kind, "metadata": {"namespace": namespace}
        }));
        lock(&self.store)
            .objects
            .get(&collection)
            .and_then(|c| c.get(name))
            .cloned()
    }

    /// Every object of `kind` in `namespace`.
    pub fn all(&self, api_version: &str, kind: &str, namespace: &str) -> Vec<Value> {
        let collection = collection_of(&json!({
            "apiVersion": api_version, "kind": kind, "metadata": {"namespace": namespace}
        }));
        lock(&self.store)
            .objects
            .get(&collection)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Answers `verb` (`get`, `list`, `watch`, `create`, `patch`) on
    /// `resource` (plural) with 403 from now on.
    pub fn forbid(&self, verb: &str, resource: &str) {
        lock(&self.store)
            .forbidden
            .insert((verb.to_string(), resource.to_string()));
    }

    /// Allows what [`Self::forbid`] forbade.
    pub fn allow(&self, verb: &str, resource: &str) {
        lock(&self.store)
            .forbidden
            .remove(&(verb.to_string(), resource.to_string()));
    }

    /// Forgets the change log up to now: a watch from an older version
    /// gets `410 Gone`.
    pub fn compact(&self) {
        let mut store = lock(&self.store);
        store.compacted_before = store.rv;
        store.log.clear();
    }

    /// Like an API server restart after etcd compaction: `object` is
    /// stored without a watch event, the change log is forgotten and every
    /// open watch ends, so clients must re-watch, get `410 Gone` for their
    /// old version and list again to see `object`.
    pub fn compact_with(&self, object: Value) {
        let mut store = lock(&self.store);
        store.put(object);
        store.compacted_before = store.rv + 1;
        store.log.clear();
        store.watch_epoch += 1;
        drop(store);
        self.changed.notify_waiters();
    }

    /// Watch responses currently open.
    pub fn open_watches(&self) -> usize {
        lock(&self.store).open_watches
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.store).requests.clone()
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(status: StatusCode, value: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn status_body(code: u16, reason: &str, message: String, details: Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code
    })
}

async fn accept(listener: TcpListener, store: Arc<Mutex<Store>>, changed: Arc<Notify>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let store = Arc::clone(&store);
        let changed = Arc::clone(&changed);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let store = Arc::clone(&store);
                let changed = Arc::clone(&changed);
                async move { Ok::<_, Infallible>(handle(req, store, changed).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn query(uri: &hyper::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Equality selectors: `a=b,c=d` against labels or `metadata.name`.
fn matches(
    object: &Value,
    label_selector: Option<&String>,
    field_selector: Option<&String>,
) -> bool {
    let labels = &object["metadata"]["labels"];
    let label_ok = label_selector.is_none_or(|sel| {
        sel.split(',')
            .filter(|s| !s.is_empty())
            .all(|term| match term.split_once('=') {
                Some((k, v)) => {
                    labels[k.trim_end_matches('=')].as_str() == Some(v.trim_start_matches('='))
                }
                None => labels.get(term).is_some(),
            })
    });
    let field_ok = field_selector.is_none_or(|sel| {
        sel.split(',')
            .filter(|s| !s.is_empty())
            .all(|term| match term.split_once('=') {
                Some(("metadata.name", v)) => object["metadata"]["name"].as_str() == Some(v),
                Some(("metadata.namespace", v)) => {
                    object["metadata"]["namespace"].as_str() == Some(v)
                }
                _ => false,
            })
    });
    label_ok && field_ok
}

/// Core list items carry no apiVersion/kind, as the real server sends them.
fn list_item(collection: &str, mut object: Value) -> Value {
    if collection.starts_with("api/")
        && let Some(map) = object.as_object_mut()
    {
        map.remove("apiVersion");
        map.remove("kind");
    }
    object
}

/// What a request's path names: `api/v1/namespaces/NS/RES[/NAME]` or
/// `apis/G/V/namespaces/NS/RES[/NAME]`.
struct Target {
    namespace: String,
    resource: String,
    group: String,
    name: Option<String>,
    /// The path up to the resource: the key of its objects in the store.
    collection: String,
}

impl Target {
    fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let base = if segments.first() == Some(&"apis") {
            3
        } else {
            2
        };
        if segments.len() < base + 3 || segments.get(base) != Some(&"namespaces") {
            return None;
        }
        Some(Self {
            namespace: segments[base + 1].to_string(),
            resource: segments[base + 2].to_string(),
            group: if base == 3 { segments[1] } else { "" }.to_string(),
            name: segments.get(base + 3).map(|s| s.to_string()),
            collection: segments[..base + 3].join("/"),
        })
    }

    fn not_found(&self) -> Response<Body> {
        full(
            StatusCode::NOT_FOUND,
            &status_body(
                404,
                "NotFound",
                format!(
                    "{} {:?} not found",
                    self.resource,
                    self.name.clone().unwrap_or_default()
                ),
                json!({"name": self.name, "kind": self.resource}),
            ),
        )
    }

    /// The API server's answer to a verb RBAC does not allow.
    fn forbidden(&self, verb: &str) -> Response<Body> {
        let (resource, namespace, group) = (&self.resource, &self.namespace, &self.group);
        let in_group = if group.is_empty() {
            "\"\"".to_string()
        } else {
            format!("\"{group}\"")
        };
        let object = self
            .name
            .as_deref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        let message = format!(
            "{resource}{object} is forbidden: User \"system:serviceaccount:{namespace}:ray-orchestrator\" cannot {verb} resource \"{resource}\" in API group {in_group} in the namespace \"{namespace}\""
        );
        let mut details = json!({"kind": resource});
        if let Some(n) = &self.name {
            details["name"] = json!(n);
        }
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        full(
            StatusCode::FORBIDDEN,
            &status_body(403, "Forbidden", message, details),
        )
    }
}

async fn handle(
    req: Request<Incoming>,
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    lock(&store).requests.push(Recorded {
        method: method.to_string(),
        uri: uri.to_string(),
        body: body.clone(),
    });
    let q = query(&uri);
    let Some(target) = Target::parse(uri.path()) else {
        return full(
            StatusCode::NOT_FOUND,
            &status_body(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({})",
                    uri.path()
                ),
                json!({}),
            ),
        );
    };
    let watch = q.get("watch").is_some_and(|v| v == "true" || v == "1");
    let verb = match (&method, &target.name, watch) {
        (&Method::GET, Some(_), _) => "get",
        (&Method::GET, None, true) => "watch",
        (&Method::GET, None, false) => "list",
        (&Method::POST, _, _) => "create",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, _, _) => "delete",
        _ => "update",
    };
    if lock(&store)
        .forbidden
        .contains(&(verb.to_string(), target.resource.clone()))
    {
        return target.forbidden(verb);
    }
    match verb {
        "get" => get(&store, &target),
        "list" => list(&store, &target, &q),
        "watch" => watch_response(store, changed, target.collection, q),
        "create" => create(&store, target, body),
        "patch" => patch(&store, &target, &body),
        _ => full(
            StatusCode::METHOD_NOT_ALLOWED,
            &status_body(
                405,
                "MethodNotAllowed",
                format!("{verb} is not supported by the fake"),
                json!({}),
            ),
        ),
    }
}

fn get(store: &Mutex<Store>, target: &Target) -> Response<Body> {
    let found = lock(store)
        .objects
        .get(&target.collection)
        .and_then(|c| target.name.as_ref().and_then(|n| c.get(n)))
        .cloned();
    match found {
        Some(o) => full(StatusCode::OK, &o),
        None => target.not_found(),
    }
}

fn list(store: &Mutex<Store>, target: &Target, q: &BTreeMap<String, String>) -> Response<Body> {
    let s = lock(store);
    let items: Vec<Value> = s
        .objects
        .get(&target.collection)
        .map(|c| {
            c.values()
                .filter(|o| matches(o, q.get("labelSelector"), q.get("fieldSelector")))
                .map(|o| list_item(&target.collection, o.clone()))
                .collect()
        })
        .unwrap_or_default();
    let (api_version, kind) = match target.resource.as_str() {
        "pods" => ("v1", "PodList"),
        "events" => ("v1", "EventList"),
        "rayclusters" => ("ray.io/v1", "RayClusterList"),
        "leaderworkersets" => ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSetList"),
        _ => ("v1", "List"),
    };
    full(
        StatusCode::OK,
        &json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"resourceVersion": s.rv.to_string()},
            "items": items
        }),
    )
}

fn create(store: &Mutex<Store>, target: Target, mut object: Value) -> Response<Body> {
    let mut s = lock(store);
    s.rv += 1;
    let rv = s.rv;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    object["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012}"));
    object["metadata"]["creationTimestamp"] = json!("2026-11-25T12:00:00Z");
    object["metadata"]["namespace"] = json!(target.namespace);
    let object_name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let existed = s
        .objects
        .get(&target.collection)
        .is_some_and(|c| c.contains_key(&object_name));
    if existed {
        return full(
            StatusCode::CONFLICT,
            &status_body(
                409,
                "AlreadyExists",
                format!("{} {object_name:?} already exists", target.resource),
                json!({"name": object_name, "kind": target.resource}),
            ),
        );
    }
    s.objects
        .entry(target.collection)
        .or_default()
        .insert(object_name, object.clone());
    full(StatusCode::CREATED, &object)
}

fn patch(store: &Mutex<Store>, target: &Target, body: &Value) -> Response<Body> {
    let mut s = lock(store);
    s.rv += 1;
    let rv = s.rv;
    let found = s
        .objects
        .get_mut(&target.collection)
        .and_then(|c| target.name.as_ref().and_then(|n| c.get_mut(n)));
    match found {
        Some(object) => {
            merge_patch(object, body);
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            let o = object.clone();
            full(StatusCode::OK, &o)
        }
        None => {
            drop(s);
            target.not_found()
        }
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn watch_response(
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
    collection: String,
    q: BTreeMap<String, String>,
) -> Response<Body> {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let labels = q.get("labelSelector").cloned();
    let fields = q.get("fieldSelector").cloned();
    let (gone, epoch) = {
        let mut s = lock(&store);
        s.open_watches += 1;
        (from != 0 && from < s.compacted_before, s.watch_epoch)
    };
    let open = OpenWatch(Arc::clone(&store));
    let stream = futures_util::stream::unfold(
        (from, gone, false),
        move |(mut cursor, gone, done)| {
            let _open = &open;
            let store = Arc::clone(&store);
            let changed = Arc::clone(&changed);
            let collection = collection.clone();
            let labels = labels.clone();
            let fields = fields.clone();
            async move {
                if done {
                    return None;
                }
                if gone {
                    let line = json!({"type": "ERROR", "object": status_body(410, "Expired", format!("too old resource version: {cursor}"), json!({}))});
                    return Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{line}\n")))),
                        (cursor, false, true),
                    ));
                }
                loop {
                    let notified = changed.notified();
                    if lock(&store).watch_epoch != epoch {
                        return None;
                    }
                    let next: Vec<Change> = lock(&store)
                        .log
                        .iter()
                        .filter(|c| c.rv > cursor && c.collection == collection)
                        .cloned()
                        .collect();
                    let mut text = String::new();
                    for c in next {
                        cursor = c.rv;
                        if matches(&c.object, labels.as_ref(), fields.as_ref()) {
                            text.push_str(&json!({"type": c.kind, "object": c.object}).to_string());
                            text.push('\n');
                        }
                    }
                    if !text.is_empty() {
                        return Some((Ok(Frame::data(Bytes::from(text))), (cursor, false, false)));
                    }
                    notified.await;
                }
            }
        },
    );
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
