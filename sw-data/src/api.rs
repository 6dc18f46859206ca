//! The page API: `fetch('/_stead/v1/...')` answered by the worker from the local store.
//! See `sw/PAGE-API.md` for every route. Bodies and answers are JSON; errors are
//! problem objects (RFC 9457) with fitting status codes.

use std::ops::Bound;
use std::rc::Rc;

use serde_json::{Value as J, json};
use stead_core::ids::{RecordId, SpaceId};
use stead_core::membership::{InviteTerms, Member, Membership as Members, Role};
use stead_core::ops::Op;
use stead_core::query::{Cursor, Filter, Query};
use stead_core::schema::Schema;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{BroadcastChannel, Headers, Request, RequestMode, Response, ResponseInit};

use super::engine::{Engine, PutMembers, get_members_invited, invite_not_usable, parse_invite, put_members};
use super::json::{from_value, record, to_value};
use super::{Data, DataError, Membership, WebClock, WebRandom};

thread_local! {
    static CHANNEL: Option<BroadcastChannel> = BroadcastChannel::new("stead").ok();
}

/// Posts a message to every page of the origin.
pub fn broadcast(message: J) {
    CHANNEL.with(|c| {
        if let (Some(c), Ok(v)) = (c, js_sys::JSON::parse(&message.to_string())) {
            let _ = c.post_message(&v);
        }
    });
}

pub async fn handle(request: Request, rel: String) -> Result<JsValue, JsValue> {
    let parts: Vec<&str> = rel.split('/').collect();
    let blob = match parts.as_slice() {
        ["_stead", "v1", "spaces", space, "blobs", sha] if request.method() == "GET" => Some((*space, *sha)),
        _ => None,
    };
    let answer = async {
        check_caller(&request, blob.is_some())?;
        match blob {
            Some((space, sha)) => blob_response(&request, space, sha).await,
            None => {
                let (status, body) = route(&request, &rel).await?;
                Ok(respond(status, &body, "application/json")?)
            }
        }
    };
    match answer.await {
        Ok(r) => Ok(r.into()),
        Err(e) => problem(e).map(Into::into),
    }
}

/// Refuses what no page of the app sends, so that another site cannot use the page API
/// through the person's browser (a cross-site form post can carry JSON in a `text/plain`
/// body).
///
/// What a worker can tell, measured in Chromium 156: it sees neither `Sec-Fetch-Site`
/// nor `Origin` on a page's `fetch`, but it only receives fetches from clients it
/// controls, which are of its own origin. Another site reaches it only by navigating the
/// person's tab or a window (a link, a form); a form post shows its `Origin`. So a
/// foreign `Origin` or `Sec-Fetch-Site` is refused wherever it is visible, and so is
/// every navigation but a blob read: the blob headers keep any blob inert, and the app
/// may link to a file to open or download it.
fn check_caller(request: &Request, blob_read: bool) -> Result<(), DataError> {
    let forbidden = |detail: String| Err(DataError::new(403, "forbidden", detail));
    let headers = request.headers();
    let navigate = request.mode() == RequestMode::Navigate;
    match headers.get("sec-fetch-site")?.as_deref() {
        None | Some("same-origin") => {}
        // The person typed or bookmarked the address.
        Some("none") if navigate => {}
        Some(site) => return forbidden(format!("a {site} request cannot use the page API")),
    }
    if let Some(origin) = headers.get("origin")? {
        let own = js_sys::global().unchecked_into::<web_sys::WorkerGlobalScope>().location().origin();
        if origin != own {
            return forbidden(format!("a request from {origin} cannot use the page API of {own}"));
        }
    }
    if navigate && !blob_read {
        return forbidden("the page API answers the app's fetches, not navigations (a link, a form, a window, the address bar)".into());
    }
    Ok(())
}

fn problem(e: DataError) -> Result<Response, JsValue> {
    let mut body = json!({"type": "about:blank", "title": e.title, "status": e.status, "detail": e.detail});
    if let (Some(J::Object(extra)), J::Object(b)) = (e.extra, &mut body) {
        b.extend(extra);
    }
    respond(e.status, &body, "application/problem+json")
}

/// `GET spaces/{space}/blobs/{sha256}?mime=`: the blob's plaintext, whole or one range.
async fn blob_response(request: &Request, space: &str, sha: &str) -> Result<Response, DataError> {
    let engine = Data::get().engine(parse_id::<SpaceId>("space", space)?).await?;
    let mut content = super::blobs::get(&engine, sha).await?;
    let headers = Headers::new()?;
    // Any member of the space chose these bytes, and any page can put any `mime` in the
    // URL: served as asked, an HTML or SVG blob would run as the app, able to read every
    // space. So the type must be well formed, the browser may not sniff another, a
    // rendered blob is sandboxed, and only inert types show in the tab.
    let mime = super::blobs::media_type(params(request)?.get("mime").as_deref());
    headers.set("content-type", &mime)?;
    headers.set("x-content-type-options", "nosniff")?;
    headers.set("content-security-policy", super::blobs::CSP)?;
    if !super::blobs::shows_inline(&mime) {
        headers.set("content-disposition", "attachment")?;
    }
    headers.set("accept-ranges", "bytes")?;
    // Content-addressed: the bytes behind this URL never change.
    headers.set("cache-control", "private, max-age=31536000, immutable")?;
    let init = ResponseInit::new();
    let len = content.len() as u64;
    if let Some(h) = request.headers().get("range")? {
        match super::blobs::range(&h, len) {
            Some((a, b)) => {
                content = content[a as usize..=b as usize].to_vec();
                headers.set("content-range", &format!("bytes {a}-{b}/{len}"))?;
                init.set_status(206);
            }
            None => {
                headers.set("content-range", &format!("bytes */{len}"))?;
                init.set_status(416);
                init.set_headers(&headers);
                return Ok(Response::new_with_opt_str_and_init(None, &init)?);
            }
        }
    }
    init.set_headers(&headers);
    // A copy the JS heap owns: a view of wasm memory is freed and reused when `content`
    // drops, and WebKit read the body from the view after that (a range came back with
    // its first bytes overwritten).
    let body = js_sys::Uint8Array::from(&content[..]);
    Ok(Response::new_with_opt_buffer_source_and_init(Some(&body), &init)?)
}

fn respond(status: u16, body: &J, mime: &str) -> Result<Response, JsValue> {
    let headers = Headers::new()?;
    headers.set("content-type", mime)?;
    // A navigation to a blob URL can get a problem instead: as inert as the blob.
    headers.set("x-content-type-options", "nosniff")?;
    headers.set("content-security-policy", super::blobs::CSP)?;
    headers.set("cache-control", "no-store")?;
    let init = ResponseInit::new();
    init.set_status(status);
    init.set_headers(&headers);
    Response::new_with_opt_str_and_init(Some(&body.to_string()), &init)
}

/// The request's JSON body, `null` when there is none. It must be declared
/// `application/json`: a page's `fetch` can say so, an HTML form cannot.
async fn body(request: &Request) -> Result<J, DataError> {
    let declared = request.headers().get("content-type")?;
    let is_json = |t: &str| t.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/json");
    if declared.as_deref().is_some_and(|t| !is_json(t)) {
        return Err(not_json(declared.as_deref()));
    }
    let text = JsFuture::from(request.text()?).await?.as_string().unwrap_or_default();
    if text.trim().is_empty() {
        return Ok(J::Null);
    }
    if declared.is_none() {
        return Err(not_json(None));
    }
    serde_json::from_str(&text).map_err(|e| DataError::bad_request(format!("the body is not JSON: {e}")))
}

fn not_json(declared: Option<&str>) -> DataError {
    let declared = declared.map_or("no content-type".to_owned(), |t| format!("content-type {t:?}"));
    DataError::new(415, "unsupported media type", format!("the body must be JSON sent as content-type application/json, not {declared}"))
}

fn params(request: &Request) -> Result<web_sys::UrlSearchParams, DataError> {
    Ok(web_sys::Url::new(&request.url())?.search_params())
}

fn parse_id<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, DataError> {
    s.parse().map_err(|_| DataError::bad_request(format!("{s:?} is not a {what} id")))
}

type Answer = Result<(u16, J), DataError>;

/// Every route of the page API, relative to `/_stead/v1/`, as `GET /_stead/v1/` lists
/// them; `sw/PAGE-API.md` has the details.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "", "this index"),
    ("GET", "spaces", "the spaces this browser holds"),
    ("POST", "spaces", "create a space: {storage?, schema?, creation_token?}"),
    ("POST", "join", "join a space through an invite code: {invite}"),
    ("GET", "spaces/{space}/status", "sync state, pending entries, storage estimate"),
    ("PUT", "spaces/{space}/schema", "set the space's schema"),
    ("POST", "spaces/{space}/invites", "make an invite code: {role?, expires_in_days?}"),
    ("GET", "spaces/{space}/invites", "the invites and their states"),
    ("DELETE", "spaces/{space}/invites/{key}", "cancel a pending invite"),
    ("GET", "spaces/{space}/members", "the members and their roles"),
    ("DELETE", "spaces/{space}/members/{replica}", "remove a device (rotates the space's key)"),
    ("POST", "spaces/{space}/blobs", "store a blob (the body, with its content type)"),
    ("GET", "spaces/{space}/blobs/{sha256}", "a stored blob (Range supported)"),
    ("POST", "spaces/{space}/undo", "undo this device's last changes: {n?}"),
    ("GET", "spaces/{space}/collections/{collection}", "query records (filters by index)"),
    ("POST", "spaces/{space}/collections/{collection}", "create a record, or many: {fields} | {records}"),
    ("GET", "spaces/{space}/collections/{collection}/{id}", "one record"),
    ("PATCH", "spaces/{space}/collections/{collection}/{id}", "set fields: {fields, if_version?}"),
    ("DELETE", "spaces/{space}/collections/{collection}/{id}", "delete a record (?if_version=)"),
    ("POST", "spaces/{space}/collections/{collection}/{id}/restore", "restore a deleted record"),
    ("POST", "spaces/{space}/collections/{collection}/{id}/counters/{field}", "add to a counter: {delta}"),
    ("POST", "spaces/{space}/collections/{collection}/{id}/sets/{field}", "add to or remove from a set: {add} | {remove}"),
    ("GET", "spaces/{space}/collections/{collection}/{id}/history", "the record's history"),
];

/// `GET /_stead/v1/`: what this worker answers, so a client can check the API's version.
fn index() -> J {
    let routes: Vec<J> = ROUTES.iter().map(|(m, p, what)| json!({"method": m, "path": format!("/_stead/v1/{p}"), "what": what})).collect();
    json!({
        "api": "stead page API",
        "version": 1,
        "worker": env!("CARGO_PKG_VERSION"),
        "routes": routes,
    })
}

async fn route(request: &Request, rel: &str) -> Answer {
    let method = request.method();
    let path = rel.strip_prefix("_stead/v1/").unwrap_or_default();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let data = Data::get();
    match (method.as_str(), parts.as_slice()) {
        ("GET", []) => Ok((200, index())),
        ("GET", ["spaces"]) => {
            let spaces: Vec<String> = data.spaces().await?.iter().map(ToString::to_string).collect();
            Ok((200, json!({ "spaces": spaces })))
        }
        ("POST", ["spaces"]) => create_space(&data, body(request).await?).await,
        ("POST", ["join"]) => join(&data, body(request).await?).await,
        (_, ["spaces", space, rest @ ..]) => {
            let engine = data.engine(parse_id::<SpaceId>("space", space)?).await?;
            let answer = space_route(&engine, request, &method, rest).await;
            engine.check_incomplete();
            answer
        }
        _ => Err(DataError::not_found(format!("no route {method} /_stead/v1/{path}"))),
    }
}

fn schema_from(j: &J) -> Result<Option<Schema>, DataError> {
    match j.get("schema") {
        None | Some(J::Null) => Ok(None),
        Some(s) => Ok(Some(Schema::from_json(&s.to_string()).map_err(|e| DataError::new(422, "invalid schema", e.to_string()))?)),
    }
}

async fn create_space(data: &Data, body: J) -> Answer {
    use stead_core::env::Random;
    let schema = schema_from(&body)?;
    let storage = match body.get("storage").and_then(J::as_str) {
        None => super::StorageKind::detect().await,
        Some("opfs") => super::StorageKind::Opfs,
        Some("indexeddb") => super::StorageKind::Indexeddb,
        Some(other) => return Err(DataError::bad_request(format!("storage {other:?}: expected \"opfs\" or \"indexeddb\""))),
    };
    let creation_token = match body.get("creation_token") {
        None | Some(J::Null) => None,
        Some(J::String(t)) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => Some(t.clone()),
        Some(_) => return Err(DataError::bad_request("creation_token: expected a string of visible ASCII characters")),
    };
    let mut rng = WebRandom;
    let space = SpaceId::generate(&WebClock, &mut rng);
    let mut me = new_device(space, storage);
    me.key = stead_core::crypto::SpaceKey(rng.array());
    me.creation_token = creation_token;
    let members = Members::genesis(space, member_card(&me), &me.signing)?;
    let engine = data.add_space(me, members).await?;
    if let Some(s) = schema {
        set_schema(&engine, s).await?;
    }
    Ok((201, json!({ "space": space.to_string(), "status": engine.status_json() })))
}

/// A fresh device identity in `space`: replica id, Ed25519 and X25519 keys. The space
/// key is filled in by the caller.
fn new_device(space: SpaceId, storage: super::StorageKind) -> Membership {
    use stead_core::env::Random;
    let mut rng = WebRandom;
    Membership {
        space,
        replica: stead_core::ids::ReplicaId::generate(&WebClock, &mut rng),
        signing: ed25519_dalek::SigningKey::from_bytes(&rng.array()),
        agreement: rng.array(),
        key: stead_core::crypto::SpaceKey([0; 32]),
        storage,
        creation_token: None,
    }
}

/// The public keys of a device, as the membership log names it.
fn member_card(me: &Membership) -> Member {
    Member { replica: me.replica, signing: me.signing.verifying_key().to_bytes(), agreement: stead_core::crypto::agreement_public(&me.agreement) }
}

/// How many times a join is made again on top of a log that moved on meanwhile.
const JOIN_ATTEMPTS: usize = 4;

/// `POST join {"invite": code}`: this device makes its own identity for the space, reads
/// the membership log with the invite's key, appends its join (signed by that key, once)
/// and publishes it. The invite works once: a second device gets 410.
async fn join(data: &Data, body: J) -> Answer {
    let code = body.get("invite").and_then(J::as_str).ok_or_else(|| DataError::bad_request("expected {\"invite\": \"<code>\"}"))?;
    let (space, secret) = parse_invite(code)?;
    if data.spaces().await?.contains(&space) {
        return Ok((200, json!({ "space": space.to_string(), "joined": false })));
    }
    let mut me = new_device(space, super::StorageKind::detect().await);
    let mut attempt = 0;
    let members = loop {
        attempt += 1;
        let mut members = get_members_invited(space, &secret).await?;
        let ring = members.join(&secret, member_card(&me), &me.agreement, &mut WebRandom).map_err(|e| match e {
            stead_core::Error::Membership { .. } => invite_not_usable(),
            other => other.into(),
        })?;
        me.key = ring.current().ok_or(stead_core::Error::NoCurrentKey)?.clone();
        match put_members(&members, None).await {
            Ok(()) => break members,
            // The log moved on meanwhile (another join, a rotation): join again on top.
            Err(PutMembers::Conflict) if attempt < JOIN_ATTEMPTS => {}
            Err(PutMembers::Conflict) => {
                return Err(DataError::new(503, "busy", "the space's membership log kept changing while joining: try again"));
            }
            Err(PutMembers::Refused(410, _)) => return Err(invite_not_usable()),
            Err(PutMembers::Refused(status, reason)) => return Err(DataError::new(403, "not joined", format!("HTTP {status}: {reason}"))),
            Err(PutMembers::Failed(reason)) => return Err(DataError::new(503, "offline", format!("the server could not be reached: {reason}"))),
        }
    };
    let engine = data.add_space(me, members).await?;
    let role = engine.read(|r| r.members().role(engine.me().replica)).map(Role::as_str);
    Ok((201, json!({ "space": space.to_string(), "joined": true, "role": role, "status": engine.status_json() })))
}

/// The longest an invite may stay open, in days: what stead-server takes by default
/// (`--max-invite-days`).
const MAX_INVITE_DAYS: f64 = 30.0;
/// What an invite grants unless the page says otherwise.
const DEFAULT_INVITE_ROLE: Role = Role::Writer;
const DEFAULT_INVITE_DAYS: f64 = 7.0;

/// The terms of `POST spaces/{space}/invites` `{"role"?, "expires_in_days"?}`.
fn invite_terms(body: &J) -> Result<InviteTerms, DataError> {
    let role = match body.get("role") {
        None | Some(J::Null) => DEFAULT_INVITE_ROLE,
        Some(J::String(r)) => r.parse().map_err(|_| DataError::bad_request(format!("role {r:?}: expected \"owner\", \"writer\" or \"reader\"")))?,
        Some(other) => return Err(DataError::bad_request(format!("role {other}: expected \"owner\", \"writer\" or \"reader\""))),
    };
    let days = match body.get("expires_in_days") {
        None | Some(J::Null) => DEFAULT_INVITE_DAYS,
        Some(d) => d
            .as_f64()
            .filter(|d| *d > 0.0 && *d <= MAX_INVITE_DAYS)
            .ok_or_else(|| DataError::bad_request(format!("expires_in_days {d}: expected a number above 0, at most {MAX_INVITE_DAYS}")))?,
    };
    let expires_ms = super::now_ms() + (days * 24.0 * 3600.0 * 1000.0) as u64;
    Ok(InviteTerms { role, expires_ms })
}

async fn set_schema(engine: &Rc<Engine>, schema: Schema) -> Result<(), DataError> {
    let text = schema.to_json();
    engine.read(|r| r.set_schema(schema))?;
    // The replica keeps the schema in memory; the store keeps it for the next wake.
    engine.put_meta("schema", text.as_bytes())?;
    engine.flush().await
}

fn record_id(s: &str) -> Result<RecordId, DataError> {
    parse_id("record", s)
}

async fn space_route(engine: &Rc<Engine>, request: &Request, method: &str, rest: &[&str]) -> Answer {
    match (method, rest) {
        ("GET", ["status"]) => {
            let mut status = engine.status_json();
            status["storage"] = match stead_sw_common::storage_estimate().await {
                Some(e) => json!({"usage": e.usage, "quota": e.quota}),
                None => J::Null,
            };
            Ok((200, status))
        }
        ("PUT", ["schema"]) => {
            let b = body(request).await?;
            let schema = schema_from(&json!({ "schema": b }))?.ok_or_else(|| DataError::bad_request("expected a schema"))?;
            set_schema(engine, schema).await?;
            Ok((200, json!({"ok": true})))
        }
        ("POST", ["invites"]) => {
            let terms = invite_terms(&body(request).await?)?;
            let (code, published) = engine.invite(terms).await?;
            Ok((201, json!({ "invite": code, "role": terms.role.as_str(), "expires": terms.expires_ms, "published": published })))
        }
        ("GET", ["invites"]) => {
            // Joins reach the server, not the inviter: take the server's log if it can be
            // had (offline, the list is this device's).
            let _ = engine.take_server_members().await;
            Ok((200, json!({ "invites": engine.invites() })))
        }
        ("DELETE", ["invites", key]) => Ok((200, json!({ "revoked": engine.revoke_invite(key).await? }))),
        ("GET", ["members"]) => {
            let _ = engine.take_server_members().await;
            let me = engine.me().replica;
            let list: Vec<J> = engine.read(|r| {
                r.members()
                    .members()
                    .map(|(m, role, active)| json!({"replica": m.replica.to_string(), "role": role.as_str(), "active": active, "me": m.replica == me}))
                    .collect()
            });
            Ok((200, json!({ "members": list })))
        }
        ("DELETE", ["members", replica]) => {
            engine.remove_member(parse_id("replica", replica)?).await?;
            Ok((200, json!({ "removed": replica })))
        }
        ("POST", ["blobs"]) => {
            let buf = JsFuture::from(request.array_buffer()?).await?;
            let content = js_sys::Uint8Array::new(&buf).to_vec();
            let mime = super::blobs::media_type(request.headers().get("content-type")?.as_deref());
            let sha = super::blobs::put(engine, &content).await?;
            Ok((201, json!({ "sha256": sha, "size": content.len(), "mime": mime })))
        }
        ("POST", ["undo"]) => {
            let n = body(request).await?.get("n").and_then(J::as_u64).unwrap_or(1) as usize;
            // Undo reads its own old entries and records' histories from the whole log.
            engine.load_all().await?;
            let undone = engine.write(|r, rng| Ok(r.undo(n, super::now_ms(), rng)?.map(|e| e.header.seq))).await?;
            Ok((200, json!({ "undone": undone.is_some() })))
        }
        ("GET", ["collections", c]) => query(engine, request, c),
        ("POST", ["collections", c]) => {
            let b = body(request).await?;
            if b.get("records").is_some() {
                return bulk_create(engine, c, &b).await;
            }
            let id = match b.get("id").and_then(J::as_str) {
                Some(s) => record_id(s)?,
                None => RecordId::generate(&WebClock, &mut WebRandom),
            };
            let ops = set_ops(engine, c, id, &b)?;
            engine.write(|r, rng| Ok(r.commit(ops, super::now_ms(), rng)?)).await?;
            get(engine, c, id).map(|j| (201, j))
        }
        ("GET", ["collections", c, id]) => get(engine, c, record_id(id)?).map(|j| (200, j)),
        ("PATCH", ["collections", c, id]) => {
            let id = record_id(id)?;
            let b = body(request).await?;
            let ops = set_ops(engine, c, id, &b)?;
            commit_checked(engine, c, id, b.get("if_version").and_then(J::as_str), ops).await?;
            get(engine, c, id).map(|j| (200, j))
        }
        ("DELETE", ["collections", c, id]) => {
            let id = record_id(id)?;
            let expected = params(request)?.get("if_version");
            let op = Op::Delete { collection: (*c).into(), record: id };
            commit_checked(engine, c, id, expected.as_deref(), vec![op]).await?;
            Ok((200, json!({"deleted": id.to_string()})))
        }
        ("POST", ["collections", c, id, "restore"]) => {
            let id = record_id(id)?;
            let op = Op::Restore { collection: (*c).into(), record: id };
            commit_checked(engine, c, id, None, vec![op]).await?;
            get(engine, c, id).map(|j| (200, j))
        }
        ("POST", ["collections", c, id, "counters", field]) => {
            let id = record_id(id)?;
            let b = body(request).await?;
            let delta = b.get("delta").and_then(J::as_i64).ok_or_else(|| DataError::bad_request("expected {\"delta\": <integer>}"))?;
            let op = Op::CounterAdd { collection: (*c).into(), record: id, field: (*field).into(), delta };
            commit_checked(engine, c, id, None, vec![op]).await?;
            get(engine, c, id).map(|j| (200, j))
        }
        ("POST", ["collections", c, id, "sets", field]) => {
            let id = record_id(id)?;
            let b = body(request).await?;
            let schema = engine.read(|r| r.schema().cloned());
            let op = if let Some(v) = b.get("add") {
                let elem = to_value(schema.as_ref(), c, field, v).map_err(|e| DataError::new(422, "invalid", e))?;
                Op::SetAdd { collection: (*c).into(), record: id, field: (*field).into(), elem }
            } else if let Some(v) = b.get("remove") {
                let elem = to_value(schema.as_ref(), c, field, v).map_err(|e| DataError::new(422, "invalid", e))?;
                // Remove what this device has seen added: the OR-set's observed tags.
                let tags = engine.read(|r| {
                    r.get(c, id).and_then(|rec| rec.field(field)).map(|s| s.set_tags(&elem)).unwrap_or_default()
                });
                Op::SetRemove { collection: (*c).into(), record: id, field: (*field).into(), elem, tags }
            } else {
                return Err(DataError::bad_request("expected {\"add\": v} or {\"remove\": v}"));
            };
            commit_checked(engine, c, id, None, vec![op]).await?;
            get(engine, c, id).map(|j| (200, j))
        }
        ("GET", ["collections", c, id, "history"]) => {
            let id = record_id(id)?;
            engine.load_all().await?;
            let items = engine.read(|r| r.history(c, id))?;
            let out: Vec<J> = items
                .iter()
                .map(|h| json!({"stamp": h.stamp.to_string(), "replica": h.stamp.replica.to_string(), "op": format!("{:?}", h.op)}))
                .collect();
            Ok((200, json!({ "history": out })))
        }
        _ => Err(DataError::not_found(format!("no route {method} .../{}", rest.join("/")))),
    }
}

/// `POST …/{collection}` with `{"records": [{"fields"}...], "entries": "one"|"each"}`:
/// many records at once, as one change (`one`, the default) or one change per record
/// (`each`), stored with one flush.
async fn bulk_create(engine: &Rc<Engine>, c: &str, b: &J) -> Answer {
    let records = b["records"].as_array().ok_or_else(|| DataError::bad_request("records: expected an array"))?;
    let each = match b.get("entries").and_then(J::as_str) {
        None | Some("one") => false,
        Some("each") => true,
        Some(other) => return Err(DataError::bad_request(format!("entries {other:?}: expected \"one\" or \"each\""))),
    };
    let mut batches: Vec<Vec<Op>> = Vec::new();
    let mut ids = Vec::new();
    for r in records {
        let id = RecordId::generate(&WebClock, &mut WebRandom);
        let ops = set_ops(engine, c, id, r)?;
        ids.push(J::String(id.to_string()));
        match batches.last_mut() {
            Some(last) if !each => last.extend(ops),
            _ => batches.push(ops),
        }
    }
    engine
        .write(|r, rng| {
            for ops in batches {
                r.commit(ops, super::now_ms(), rng)?;
            }
            Ok(())
        })
        .await?;
    Ok((201, json!({ "ids": ids })))
}

/// Commits `ops`; with `expected`, only if the record is still at that version.
async fn commit_checked(engine: &Rc<Engine>, c: &str, id: RecordId, expected: Option<&str>, ops: Vec<Op>) -> Result<(), DataError> {
    engine
        .write(|r, rng| {
            if let Some(expected) = expected {
                let current = r.version(c, id);
                if current.to_string() != expected {
                    return Err(DataError {
                        status: 409,
                        title: "conflict",
                        detail: format!("{c}/{id} is at version {current}, not {expected}"),
                        extra: Some(json!({ "current_version": current.to_string() })),
                    });
                }
            }
            Ok(r.commit(ops, super::now_ms(), rng)?)
        })
        .await?;
    Ok(())
}

fn set_ops(engine: &Engine, c: &str, id: RecordId, body: &J) -> Result<Vec<Op>, DataError> {
    let fields = body.get("fields").and_then(J::as_object).ok_or_else(|| DataError::bad_request("expected {\"fields\": {...}}"))?;
    let schema = engine.read(|r| r.schema().cloned());
    fields
        .iter()
        .map(|(f, v)| {
            let value = to_value(schema.as_ref(), c, f, v).map_err(|e| DataError::new(422, "invalid", e))?;
            Ok(Op::Set { collection: c.into(), record: id, field: f.clone(), value })
        })
        .collect()
}

fn get(engine: &Engine, c: &str, id: RecordId) -> Result<J, DataError> {
    engine.read(|r| {
        let schema = r.schema().cloned();
        r.get(c, id).map(|rec| record(schema.as_ref(), c, id, rec)).ok_or_else(|| DataError::not_found(format!("no record {c}/{id}")))
    })
}

/// `GET .../collections/{c}?limit=&after=&field=&eq=&from=&to=`: a page of records,
/// through an index when a field is named.
fn query(engine: &Engine, request: &Request, c: &str) -> Answer {
    let p = params(request)?;
    let limit = p.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100usize).clamp(1, 1000);
    let schema = engine.read(|r| r.schema().cloned());
    let json_param = |name: &str| -> Result<Option<J>, DataError> {
        p.get(name).map(|s| serde_json::from_str(&s).map_err(|e| DataError::bad_request(format!("{name}: not JSON: {e}")))).transpose()
    };
    let filter = match p.get("field") {
        None => Filter::All,
        Some(field) => {
            let val = |j: J| to_value(schema.as_ref(), c, &field, &j).map_err(|e| DataError::new(422, "invalid", e));
            if let Some(eq) = json_param("eq")? {
                let value = val(eq)?;
                Filter::Eq { field, value }
            } else {
                let from = json_param("from")?.map(val).transpose()?.map_or(Bound::Unbounded, Bound::Included);
                let to = json_param("to")?.map(val).transpose()?.map_or(Bound::Unbounded, Bound::Excluded);
                Filter::Range { field, from, to }
            }
        }
    };
    let after = match json_param("after")? {
        None => None,
        Some(j) => {
            let record = j.get("record").and_then(J::as_str).ok_or_else(|| DataError::bad_request("after: expected {record, key}"))?;
            let key = match j.get("key") {
                None | Some(J::Null) => None,
                Some(k) => Some(to_value(schema.as_ref(), c, p.get("field").as_deref().unwrap_or(""), k).map_err(|e| DataError::new(422, "invalid", e))?),
            };
            Some(Cursor { key, record: record_id(record)? })
        }
    };
    let q = Query { collection: c.into(), filter, limit, after };
    engine.read(|r| {
        let page = match r.schema() {
            Some(_) => r.query(&q)?,
            // With no schema there are no indexes, but a collection can still be listed.
            None if q.filter == Filter::All => r.list(&q),
            None => return Err(DataError::new(422, "no index", format!("filtering {c} needs a schema with an index on the field"))),
        };
        let schema = r.schema().cloned();
        let records: Vec<J> = page.records.iter().filter_map(|id| r.get(c, *id).map(|rec| record(schema.as_ref(), c, *id, rec))).collect();
        let next = page.next.map(|n| json!({"record": n.record.to_string(), "key": n.key.as_ref().map(from_value)}));
        Ok((200, json!({ "records": records, "next": next })))
    })
}

