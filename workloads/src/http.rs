//! The `http` workload: the user's own service, driven through its HTTP API
//! (`[workload] kind = "http"`, configured by `[workload.http]`).
//!
//! Each client lives in a region and talks to one of that region's service instances
//! over a keep-alive connection pool (reqwest: tokio, HTTP/1.1 keep-alive and a
//! per-host pool out of the box, maintained, and small without TLS). A step reads or
//! writes a key through the campaign's request templates, which take `{base}`, `{key}`
//! and `{unique}`: every write carries a value unique to the run (Jepsen's unique
//! writes), and a read names the write it saw by the unique value its response holds
//! (at a JSON pointer, or a regular expression's first group). The service knows no
//! versions, so the history's values name only their write (`{"write": id}`): the
//! checker takes the versions from the commit observer's `commit` events
//! (docs/history.md, *Values without versions*). Operations are recorded at node
//! `app:<region>`.
//!
//! A response's status decides the outcome: the `ok` codes are `ok`, the `fail` codes
//! certainly changed nothing (`fail`); any other status, a timeout or a reset may have
//! applied (`info`). A connection that was never made is `fail`.
//!
//! The final phase reads every key directly on every cache node (decoding the cached
//! value as `[observe] value` says) and in the database (`[observe.database]`'s table).
//!
//! Header values may name environment variables (`${TOKEN}`); their values are read at
//! the start and never written to the run directory, the history or a message.

use crate::campaign::{ObserveDatabase, Workload};
use crate::workload::{self, key_name, BoxFuture, Endpoints, Keys, Op, OpError};
use crate::workload::{Recording, Who};
use anyhow::{bail, Context, Result};
use coherence_store::with_sources;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// `[workload.http]`: the service and how to drive it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Per region, the base URL(s) of the instances its clients use (the lab's
    /// reference service when absent in the lab).
    #[serde(default)]
    pub regions: Vec<HttpRegion>,
    /// The read request: `"GET {base}/items/{key}"`.
    pub read: String,
    /// The write request: `"PUT {base}/items/{key}"`; `{unique}` in it or its body.
    pub write: String,
    /// The write's body template, e.g. `'{"value": "{unique}"}'`.
    #[serde(default)]
    pub write_body: Option<String>,
    /// A request that creates a key before the workload uses it (each key once).
    #[serde(default)]
    pub create: Option<String>,
    /// The create request's body template.
    #[serde(default)]
    pub create_body: Option<String>,
    /// Where a read's response holds the unique value: a JSON pointer (`/value`).
    #[serde(default)]
    pub unique: Option<String>,
    /// Or, for a response that is not JSON, a regular expression whose first group is
    /// the unique value.
    #[serde(default)]
    pub unique_regex: Option<String>,
    /// Status codes that mean the request happened (default 200, 201, 204).
    #[serde(default = "ok_codes")]
    pub ok: Vec<u16>,
    /// Status codes that mean it certainly changed nothing (default: the 4xx a server
    /// sends before it acts: 400, 401, 403, 404, 405, 409, 412, 422, 429).
    #[serde(default = "fail_codes")]
    pub fail: Vec<u16>,
    /// Request headers; a value may name environment variables as `${NAME}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn ok_codes() -> Vec<u16> {
    vec![200, 201, 204]
}

fn fail_codes() -> Vec<u16> {
    vec![400, 401, 403, 404, 405, 409, 412, 422, 429]
}

/// `[[workload.http.regions]]`: one region's instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRegion {
    /// The region (as the cache regions are named).
    pub name: String,
    /// Base URLs, `http://host:port`.
    pub base: Vec<String>,
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Base,
    Key,
    Unique,
}

/// A request or body template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Part>);

impl Template {
    /// Parses `{base}`, `{key}` and `{unique}` out of `text`; any other `{name}` (a
    /// brace then letters then a brace) is an error, every other brace is text (JSON).
    fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('{') {
            lit.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if name_len > 0 && after[name_len..].starts_with('}') {
                let part = match &after[..name_len] {
                    "base" => Part::Base,
                    "key" => Part::Key,
                    "unique" => Part::Unique,
                    other => {
                        return Err(format!(
                            "unknown placeholder {{{other}}}: use {{base}}, {{key}} or {{unique}}"
                        ))
                    }
                };
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(part);
                rest = &after[name_len + 1..];
            } else {
                lit.push('{');
                rest = after;
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template(parts))
    }

    fn has(&self, p: &Part) -> bool {
        self.0.contains(p)
    }

    fn fill(&self, base: &str, key: &str, unique: &str) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Base => out.push_str(base),
                Part::Key => out.push_str(key),
                Part::Unique => out.push_str(unique),
            }
        }
        out
    }
}

/// A request: its method, URL template and body template.
#[derive(Debug, Clone)]
struct Request {
    method: reqwest::Method,
    url: Template,
    body: Option<Template>,
}

impl Request {
    fn parse(line: &str, body: Option<&str>) -> Result<Request, String> {
        let (method, url) = line.trim().split_once(' ').ok_or_else(|| {
            format!("{line:?} is not a request: write the method, a space, the URL, e.g. \"GET {{base}}/items/{{key}}\"")
        })?;
        let method = match method {
            "GET" | "PUT" | "POST" | "PATCH" | "DELETE" => {
                reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?
            }
            other => {
                return Err(format!(
                    "unknown method {other:?}: use GET, PUT, POST, PATCH or DELETE"
                ))
            }
        };
        let url = Template::parse(url.trim())?;
        match url.0.first() {
            Some(Part::Base) => {}
            _ => {
                return Err(format!(
                    "the URL {:?} must start with {{base}} (the region's instance)",
                    url.fill("{base}", "{key}", "{unique}")
                ))
            }
        }
        if !url.has(&Part::Key) {
            return Err("the URL must name the item: put {key} in it".into());
        }
        let body = body.map(Template::parse).transpose()?;
        Ok(Request { method, url, body })
    }

    fn has_unique(&self) -> bool {
        self.url.has(&Part::Unique) || self.body.as_ref().is_some_and(|b| b.has(&Part::Unique))
    }
}

/// How a read's response names the write it saw.
#[derive(Debug, Clone)]
enum Extract {
    Pointer(String),
    Regex(regex::Regex),
}

impl Extract {
    /// The unique value in `body`, if it holds one.
    fn find(&self, body: &[u8]) -> Option<String> {
        match self {
            Extract::Pointer(p) => {
                let v: Value = serde_json::from_slice(body).ok()?;
                match v.pointer(p)? {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }
            }
            Extract::Regex(r) => {
                let text = std::str::from_utf8(body).ok()?;
                Some(r.captures(text)?.get(1)?.as_str().to_string())
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Extract::Pointer(p) => format!("JSON pointer {p:?} ([workload.http] unique)"),
            Extract::Regex(r) => format!("{:?} ([workload.http] unique_regex)", r.as_str()),
        }
    }
}

/// `[workload.http]`, checked and compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    read: Request,
    write: Request,
    create: Option<Request>,
    unique: Extract,
    ok: Vec<u16>,
    fail: Vec<u16>,
    /// Header names (as the campaign writes them, and parsed) and their templates
    /// (`${NAME}` unresolved).
    headers: Vec<(String, reqwest::header::HeaderName, String)>,
    regions: Vec<HttpRegion>,
}

impl Compiled {
    /// Checks every field; an error names the field (`workload.http.read`, ...) and
    /// what is wrong.
    pub fn new(h: &Http) -> Result<Compiled, (String, String)> {
        let field = |f: &str| format!("workload.http.{f}");
        let read = Request::parse(&h.read, None).map_err(|e| (field("read"), e))?;
        let write =
            Request::parse(&h.write, h.write_body.as_deref()).map_err(|e| (field("write"), e))?;
        if !write.has_unique() {
            return Err((
                field("write"),
                "a write must carry the run's unique value: put {unique} in its URL or write_body"
                    .into(),
            ));
        }
        let create = h
            .create
            .as_deref()
            .map(|c| Request::parse(c, h.create_body.as_deref()))
            .transpose()
            .map_err(|e| (field("create"), e))?;
        if create.as_ref().is_some_and(|c| !c.has_unique()) {
            return Err((
                field("create"),
                "a create must carry the run's unique value too: put {unique} in its URL or create_body".into(),
            ));
        }
        let unique = match (&h.unique, &h.unique_regex) {
            (Some(p), None) => {
                if !(p.is_empty() || p.starts_with('/')) {
                    return Err((
                        field("unique"),
                        format!("{p:?} is not a JSON pointer: it starts with '/', e.g. \"/value\" or \"/item/value\""),
                    ));
                }
                Extract::Pointer(p.clone())
            }
            (None, Some(r)) => {
                let re = regex::Regex::new(r).map_err(|e| (field("unique_regex"), e.to_string()))?;
                if re.captures_len() < 2 {
                    return Err((
                        field("unique_regex"),
                        "give the unique value a group: (...)".into(),
                    ));
                }
                Extract::Regex(re)
            }
            (None, None) => {
                return Err((
                    field("unique"),
                    "say where a read's response holds the unique value: unique = \"/value\" (a JSON pointer) or unique_regex".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err((
                    field("unique_regex"),
                    "give unique or unique_regex, not both".into(),
                ))
            }
        };
        for (name, codes) in [("ok", &h.ok), ("fail", &h.fail)] {
            if let Some(c) = codes.iter().find(|c| !(100..=599).contains(*c)) {
                return Err((field(name), format!("{c} is not an HTTP status code")));
            }
        }
        if h.ok.is_empty() {
            return Err((
                field("ok"),
                "name at least one status code that means ok".into(),
            ));
        }
        if let Some(c) = h.ok.iter().find(|c| h.fail.contains(c)) {
            return Err((field("fail"), format!("{c} is in both ok and fail")));
        }
        let mut headers = Vec::new();
        for (name, value) in &h.headers {
            let n = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| (field("headers"), format!("{name:?} is not a header name")))?;
            env_names(value).map_err(|e| (field("headers"), format!("header {name}: {e}")))?;
            headers.push((name.clone(), n, value.clone()));
        }
        let mut regions = Vec::new();
        for r in &h.regions {
            if r.base.is_empty() {
                return Err((
                    field("regions"),
                    format!("region {:?}: give at least one base URL", r.name),
                ));
            }
            let mut bases = Vec::new();
            for b in &r.base {
                bases.push(check_base(b).map_err(|e| (field("regions"), e))?);
            }
            regions.push(HttpRegion {
                name: r.name.clone(),
                base: bases,
            });
        }
        Ok(Compiled {
            read,
            write,
            create,
            unique,
            ok: h.ok.clone(),
            fail: h.fail.clone(),
            headers,
            regions,
        })
    }

    /// The headers with `${NAME}`s read from the environment; an error names the
    /// header and the variable, never a value.
    fn resolve_headers(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<reqwest::header::HeaderMap> {
        let mut map = reqwest::header::HeaderMap::new();
        for (name, header, template) in &self.headers {
            let mut value = String::new();
            let mut rest = template.as_str();
            while let Some(at) = rest.find("${") {
                value.push_str(&rest[..at]);
                let end = rest[at..].find('}').map(|e| at + e).unwrap_or(rest.len());
                let var = &rest[at + 2..end];
                match env(var) {
                    Some(v) if !v.is_empty() => value.push_str(&v),
                    _ => bail!(
                        "header {name} of [workload.http] needs the environment variable {var}, which is not set: export {var}=..."
                    ),
                }
                rest = &rest[(end + 1).min(rest.len())..];
            }
            value.push_str(rest);
            let mut v = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                anyhow::anyhow!("header {name} of [workload.http]: its value (from the environment) is not a valid header value")
            })?;
            v.set_sensitive(true);
            map.insert(header.clone(), v);
        }
        Ok(map)
    }
}

/// The environment variables a header value names (`${NAME}`).
fn env_names(value: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        let Some(end) = rest[at..].find('}') else {
            return Err("an unclosed ${".into());
        };
        let name = &rest[at + 2..at + end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{name:?} is not an environment variable's name"));
        }
        names.push(name.to_string());
        rest = &rest[at + end + 1..];
    }
    Ok(names)
}

/// A base URL, checked: `http://host[:port]` with no path, no trailing `/`.
fn check_base(b: &str) -> Result<String, String> {
    let b = b.trim_end_matches('/');
    if b.starts_with("https://") {
        return Err(format!(
            "{b}: https is not built in; reach the service over http (a tunnel or the plain port)"
        ));
    }
    let Some(rest) = b.strip_prefix("http://") else {
        return Err(format!("{b:?} is not a base URL: write http://host:port"));
    };
    if rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "{b:?}: a base URL is http://host:port, without a path (put the path in the request)"
        ));
    }
    Ok(b.to_string())
}

/// The `http` workload of a campaign, against its endpoints.
pub struct HttpWorkload {
    work: Workload,
    ends: Endpoints,
    http: Option<Arc<Compiled>>,
    /// Why the workload cannot run, found once when it is opened (a campaign field, a
    /// header's environment variable); [`HttpWorkload::preflight`] says it.
    refused: Option<String>,
    /// Per region: its name, base URLs and shared connection pool.
    regions: Vec<(String, Vec<String>, reqwest::Client)>,
    /// Makes the run's unique values unlike any earlier run's.
    nonce: String,
}

impl HttpWorkload {
    /// The workload `work` configures against `ends`.
    pub fn new(work: &Workload, ends: &Endpoints) -> HttpWorkload {
        let compiled = match &work.http {
            Some(h) => Compiled::new(h).map_err(|(field, e)| format!("field `{field}`: {e}")),
            None => Err("kind = \"http\" needs a [workload.http] section".to_string()),
        };
        let env = |n: &str| std::env::var(n).ok();
        let headers = compiled
            .as_ref()
            .map_err(String::clone)
            .and_then(|h| h.resolve_headers(&env).map_err(|e| e.to_string()));
        let refused = compiled.as_ref().err().or(headers.as_ref().err()).cloned();
        let http = compiled.ok().map(Arc::new);
        let headers = headers.unwrap_or_default();
        let client = || {
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(work.concurrency as usize)
                .tcp_nodelay(true)
                .connect_timeout(work.op_timeout)
                .default_headers(headers.clone())
                .build()
                .unwrap_or_default()
        };
        let from_campaign = http.as_ref().map(|h| h.regions.clone()).unwrap_or_default();
        let regions = if from_campaign.is_empty() {
            ends.apps
                .iter()
                .map(|a| (a.name.clone(), a.bases.clone(), client()))
                .collect()
        } else {
            from_campaign
                .into_iter()
                .map(|r| (r.name, r.base, client()))
                .collect()
        };
        let nonce = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
                & 0xff_ffff_ffff
        );
        HttpWorkload {
            work: work.clone(),
            ends: ends.clone(),
            http,
            refused,
            regions,
            nonce,
        }
    }

    async fn preflight(&self) -> Result<()> {
        if let Some(why) = &self.refused {
            bail!("{why}");
        }
        let http = self.http.as_ref().expect("compiled when not refused");
        if self.regions.is_empty() {
            bail!("[workload.http] names no region: add [[workload.http.regions]] with each region's base URL(s)");
        }
        let key = key_name(0);
        for (region, bases, client) in &self.regions {
            for base in bases {
                let url = http.read.url.fill(base, &key, "");
                let sent = client
                    .request(http.read.method.clone(), &url)
                    .timeout(Duration::from_secs(5))
                    .send();
                let response = match sent.await {
                    Ok(r) => r,
                    Err(e) => bail!(
                        "the service of region {region} at {base} does not answer ({} {url}: {}); check [workload.http] regions, or start it",
                        http.read.method,
                        with_sources(&e)
                    ),
                };
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap_or_default();
                if !http.ok.contains(&status) {
                    bail!(
                        "the service of region {region} answered {status} to {} {url} ({}): a read of {key} must succeed before the run (create the items, or check [workload.http] read and ok)",
                        http.read.method,
                        excerpt(&body)
                    );
                }
                if http.unique.find(&body).is_none() {
                    bail!(
                        "field `workload.http.unique`: the response to {} {url} has no unique value at {}: it was {}",
                        http.read.method,
                        http.unique.describe(),
                        excerpt(&body)
                    );
                }
            }
        }
        Ok(())
    }
}

impl workload::Workload for HttpWorkload {
    fn preflight(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.preflight())
    }

    fn open(&self, who: Who, rec: Recording) -> Box<dyn workload::Client> {
        let id = match who {
            Who::Worker(i) => i,
            Who::Final => self.work.concurrency,
        };
        let n = self.regions.len().max(1);
        let region = id as usize % n;
        let (name, bases, client) = self
            .regions
            .get(region)
            .cloned()
            .unwrap_or_else(|| (String::new(), vec![String::new()], reqwest::Client::new()));
        let base = bases[(id as usize / n) % bases.len().max(1)].clone();
        Box::new(Client {
            rec,
            id,
            http: self.http.clone(),
            client,
            base,
            node: format!("app:{name}"),
            region: name,
            keys: Keys::new(&self.work),
            work: self.work.clone(),
            ends: self.ends.clone(),
            writes: 0,
            nonce: self.nonce.clone(),
        })
    }
}

struct Client {
    rec: Recording,
    id: u32,
    http: Option<Arc<Compiled>>,
    client: reqwest::Client,
    base: String,
    node: String,
    region: String,
    keys: Keys,
    work: Workload,
    ends: Endpoints,
    writes: u64,
    nonce: String,
}

impl workload::Client for Client {
    fn recording(&mut self) -> &mut Recording {
        &mut self.rec
    }

    fn setup(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // Each client creates its share of the keys, when the service needs it.
            let Some(create) = self.http.as_ref().and_then(|h| h.create.clone()) else {
                return Ok(());
            };
            let mut i = self.id;
            while i < self.work.keys {
                self.send_write(&key_name(i), &create).await;
                i += self.work.concurrency;
            }
            Ok(())
        })
    }

    fn invoke<'a>(&'a mut self, rng: &'a mut ChaCha8Rng) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(http) = self.http.clone() else {
                return;
            };
            let key = self.keys.pick(rng);
            if rng.random_bool(self.work.read_fraction) {
                self.read(&key).await;
            } else {
                self.send_write(&key, &http.write).await;
            }
        })
    }

    fn final_phase(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.final_reads())
    }
}

/// What a response's status says.
enum Status {
    Ok,
    Fail,
    Unknown,
}

impl Client {
    fn status(&self, code: u16) -> Status {
        match &self.http {
            Some(h) if h.ok.contains(&code) => Status::Ok,
            Some(h) if h.fail.contains(&code) => Status::Fail,
            _ => Status::Unknown,
        }
    }

    async fn read(&mut self, key: &str) {
        let node = self.node.clone();
        let region = self.region.clone();
        let op = Op {
            f: "read",
            key,
            node: &node,
            value: None,
            region: Some(&region),
        };
        workload::op(self, op, async move |c: &mut Client| {
            let http = c.http.clone().expect("a workload with requests");
            let url = http.read.url.fill(&c.base, key, "");
            let response = c
                .client
                .request(http.read.method.clone(), &url)
                .send()
                .await
                .map_err(send_error)?;
            let code = response.status().as_u16();
            let body = response.bytes().await.map_err(send_error)?;
            match c.status(code) {
                Status::Ok => match http.unique.find(&body) {
                    Some(u) => Ok(json!({"write": u})),
                    None => Err(OpError::certain(format!(
                        "{code}, but no unique value at {}: {}",
                        http.unique.describe(),
                        excerpt(&body)
                    ))),
                },
                // A read changes nothing, whatever its status.
                _ => Err(OpError::certain(format!("{code}: {}", excerpt(&body)))),
            }
        })
        .await;
    }

    async fn send_write(&mut self, key: &str, request: &Request) {
        self.writes += 1;
        let unique = format!("w{}-{}-{}", self.nonce, self.id, self.writes);
        let node = self.node.clone();
        let region = self.region.clone();
        let op = Op {
            f: "write",
            key,
            node: &node,
            value: Some(json!({"write": unique})),
            region: Some(&region),
        };
        workload::op(self, op, async move |c: &mut Client| {
            let url = request.url.fill(&c.base, key, &unique);
            let mut req = c.client.request(request.method.clone(), &url);
            if let Some(body) = &request.body {
                let text = body.fill(&c.base, key, &unique);
                if serde_json::from_str::<Value>(&text).is_ok() {
                    req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
                }
                req = req.body(text);
            }
            let response = req.send().await.map_err(send_error)?;
            let code = response.status().as_u16();
            let body = response.bytes().await.unwrap_or_default();
            match c.status(code) {
                Status::Ok => Ok(json!({"write": unique})),
                Status::Fail => Err(OpError::certain(format!("{code}: {}", excerpt(&body)))),
                Status::Unknown => Err(OpError::unknown(format!("{code}: {}", excerpt(&body)))),
            }
        })
        .await;
    }

    /// The final phase: every key on every cache node, decoded as `[observe] value`
    /// says, and in the database's table.
    async fn final_reads(&mut self) -> Result<()> {
        let backends: Vec<_> = self
            .ends
            .regions
            .iter()
            .map(|r| coherence_cache::open(r, Duration::from_millis(500)))
            .collect();
        let decode = Decode::new(&self.ends.cached_value)?;
        let table = self.ends.table.clone().context(
            "the http workload's final phase reads the service's table: give [observe.database]",
        )?;
        let select = format!(
            "SELECT {}::text FROM {} WHERE {}::text = $1",
            crate::commits::ident(&table.write_column),
            table_name(&table),
            crate::commits::ident(&table.key_column)
        );
        let mut db: Option<tokio_postgres::Client> = None;
        let mut db_name = String::new();
        for i in 0..self.work.keys {
            let key = key_name(i);
            for (r, backend) in backends.iter().enumerate() {
                for node in backend.nodes() {
                    let region = self.ends.regions[r].name.clone();
                    let op = Op {
                        f: "final-read",
                        key: &key,
                        node: &node.name,
                        value: None,
                        region: Some(&region),
                    };
                    let (backend, decode) = (backend.clone(), decode.clone());
                    let (k, n) = (key.clone(), node.clone());
                    workload::op(self, op, async move |_c: &mut Client| {
                        let mut con = backend.connect(&n).await.map_err(OpError::certain)?;
                        let got: Option<String> = redis::cmd("GET")
                            .arg(&k)
                            .query_async(&mut con)
                            .await
                            .map_err(OpError::certain)?;
                        match got {
                            None => Ok(Value::Null),
                            Some(s) => decode.write_of(&s).map(|w| json!({"write": w})),
                        }
                    })
                    .await;
                }
            }
            if db.as_ref().is_none_or(|c| c.is_closed()) {
                db = None;
                for node in &self.ends.db_writers {
                    if let Ok(c) = crate::cache_aside::pg_connect(node, &self.ends.db_params).await
                    {
                        let primary = c
                            .query_one("SELECT NOT pg_is_in_recovery()", &[])
                            .await
                            .is_ok_and(|r| r.get::<_, bool>(0));
                        if primary || self.ends.db_writers.len() == 1 {
                            db_name = node.name.clone();
                            db = Some(c);
                            break;
                        }
                    }
                }
            }
            let node = if db_name.is_empty() {
                self.ends
                    .db_writers
                    .first()
                    .map(|n| n.name.clone())
                    .unwrap_or_default()
            } else {
                db_name.clone()
            };
            let op = Op {
                f: "db-final-read",
                key: &key,
                node: &node,
                value: None,
                region: None,
            };
            let (select, conn) = (select.clone(), db.as_ref());
            let (k, table_name) = (key.clone(), table.table.clone());
            workload::op(self, op, async move |_c: &mut Client| {
                let conn = conn.ok_or_else(|| OpError::certain("no database primary answers"))?;
                let row = conn
                    .query_opt(&select, &[&k])
                    .await
                    .map_err(OpError::certain)?
                    .ok_or_else(|| OpError::certain(format!("no row for {k} in {table_name}")))?;
                let w: Option<String> = row.get(0);
                Ok(json!({"write": w.unwrap_or_default()}))
            })
            .await;
        }
        Ok(())
    }
}

/// The table's name, quoted, with its schema when it has one (`schema.table`).
fn table_name(t: &ObserveDatabase) -> String {
    match t.table.split_once('.') {
        Some((schema, table)) => format!(
            "{}.{}",
            crate::commits::ident(schema),
            crate::commits::ident(table)
        ),
        None => crate::commits::ident(&t.table),
    }
}

/// How the final phase decodes a cached value into the write's unique value.
#[derive(Debug, Clone)]
pub enum Decode {
    /// `versioned-json`: `{"version", "write"}`.
    VersionedJson,
    /// `json:<pointer>`.
    Pointer(String),
}

impl Decode {
    /// Parses `[observe] value`.
    pub fn new(format: &str) -> Result<Decode> {
        match format {
            "versioned-json" => Ok(Decode::VersionedJson),
            f => match f.strip_prefix("json:") {
                Some(p) if p.is_empty() || p.starts_with('/') => Ok(Decode::Pointer(p.to_string())),
                _ => bail!("unknown value format {f:?}: use versioned-json or json:<JSON pointer>, e.g. json:/value"),
            },
        }
    }

    /// The value a cached string stands for in the history: `{"version", "write"}`
    /// (`versioned-json` with a version) or `{"write"}`; `None` when it names none.
    pub fn held(&self, cached: &str) -> Option<Value> {
        let write = self.write_of(cached).ok()?;
        let version = match self {
            Decode::VersionedJson => serde_json::from_str::<Value>(cached)
                .ok()
                .and_then(|v| v.get("version")?.as_i64())
                .filter(|v| *v >= 0),
            Decode::Pointer(_) => None,
        };
        Some(match version {
            Some(v) => json!({"version": v, "write": write}),
            None => json!({"write": write}),
        })
    }

    /// The unique value a cached string names.
    pub fn write_of(&self, cached: &str) -> Result<String, OpError> {
        let v: Value = serde_json::from_str(cached)
            .map_err(|e| OpError::certain(format!("the cached value is not JSON: {e}")))?;
        let at = match self {
            Decode::VersionedJson => v.get("write"),
            Decode::Pointer(p) => v.pointer(p),
        };
        match at {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(OpError::certain(format!(
                "the cached value has no write at {}: {}",
                match self {
                    Decode::VersionedJson => "\"write\"".to_string(),
                    Decode::Pointer(p) => format!("{p:?}"),
                },
                excerpt(cached.as_bytes())
            ))),
        }
    }
}

/// A request that never reached the server changed nothing (`fail`); one that may
/// have (a timeout, a reset after sending) is `info`.
fn send_error(e: reqwest::Error) -> OpError {
    if e.is_connect() || e.is_builder() {
        OpError::certain(with_sources(&e))
    } else {
        OpError::unknown(with_sources(&e))
    }
}

/// At most 200 characters of a response body, as text.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(extra: &str) -> Http {
        toml::from_str(&format!(
            "read = \"GET {{base}}/items/{{key}}\"\nwrite = \"PUT {{base}}/items/{{key}}\"\n\
             write_body = '{{\"value\": \"{{unique}}\"}}'\nunique = \"/value\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn templates_fill_placeholders_and_keep_json_braces() {
        let c = Compiled::new(&http("")).unwrap();
        assert_eq!(
            c.read.url.fill("http://a:1", "k3", "u"),
            "http://a:1/items/k3"
        );
        assert_eq!(
            c.write
                .body
                .as_ref()
                .unwrap()
                .fill("http://a:1", "k3", "w1"),
            r#"{"value": "w1"}"#
        );
        assert_eq!(c.write.method, reqwest::Method::PUT);
    }

    #[test]
    fn bad_templates_name_their_field() {
        let cases = [
            (
                "read = \"GET {base}/items/{id}\"",
                "workload.http.read",
                "unknown placeholder {id}",
            ),
            (
                "read = \"FETCH {base}/items/{key}\"",
                "workload.http.read",
                "unknown method",
            ),
            (
                "read = \"GET http://x/items/{key}\"",
                "workload.http.read",
                "must start with {base}",
            ),
            (
                "read = \"GET {base}/items\"",
                "workload.http.read",
                "put {key} in it",
            ),
            (
                "write_body = '{\"value\": 1}'",
                "workload.http.write",
                "{unique}",
            ),
            (
                "unique = \"value\"",
                "workload.http.unique",
                "not a JSON pointer",
            ),
            (
                "ok = [200]\nfail = [200]",
                "workload.http.fail",
                "both ok and fail",
            ),
            ("ok = [999]", "workload.http.ok", "not an HTTP status code"),
            (
                "headers = { Authorization = \"Bearer ${TO KEN}\" }",
                "workload.http.headers",
                "not an environment variable",
            ),
            (
                "[[regions]]\nname = \"r1\"\nbase = [\"https://x:1\"]",
                "workload.http.regions",
                "https is not built in",
            ),
            (
                "[[regions]]\nname = \"r1\"\nbase = [\"http://x:1/api\"]",
                "workload.http.regions",
                "without a path",
            ),
        ];
        for (line, field, message) in cases {
            // The case's line replaces the default of the same field.
            let mut text = String::from(
                "read = \"GET {base}/items/{key}\"\nwrite = \"PUT {base}/items/{key}\"\nwrite_body = '{\"value\": \"{unique}\"}'\nunique = \"/value\"\n",
            );
            let name = line.split(['=', '\n']).next().unwrap().trim();
            if !name.starts_with('[') {
                text = text
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{name} ")))
                    .map(|l| format!("{l}\n"))
                    .collect();
            }
            text.push_str(line);
            text.push('\n');
            let h: Http = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let (f, e) = Compiled::new(&h)
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"));
            assert_eq!(f, field, "{text}");
            assert!(e.contains(message), "{e} ({text})");
        }
    }

    #[test]
    fn header_values_come_from_the_environment_and_a_missing_one_is_named() {
        let c = Compiled::new(&http(
            "headers = { Authorization = \"Bearer ${COH_TOKEN}\" }",
        ))
        .unwrap();
        let map = c
            .resolve_headers(&|n| (n == "COH_TOKEN").then(|| "s3cret".to_string()))
            .unwrap();
        assert_eq!(map["authorization"], "Bearer s3cret");
        assert!(map["authorization"].is_sensitive());
        let e = c.resolve_headers(&|_| None).unwrap_err().to_string();
        assert!(
            e.contains("COH_TOKEN") && e.contains("Authorization"),
            "{e}"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn unique_values_are_found_by_pointer_or_regex() {
        let p = Extract::Pointer("/item/value".into());
        assert_eq!(p.find(br#"{"item":{"value":"w1"}}"#).as_deref(), Some("w1"));
        assert_eq!(p.find(br#"{"item":{}}"#), None);
        assert_eq!(p.find(b"not json"), None);
        let r = Extract::Regex(regex::Regex::new("value=(\\w+)").unwrap());
        assert_eq!(r.find(b"key=k1 value=w7-2").as_deref(), Some("w7"));
    }

    #[test]
    fn cached_values_decode_to_their_write() {
        let v = Decode::new("versioned-json").unwrap();
        assert_eq!(v.write_of(r#"{"version":3,"write":"w1"}"#).unwrap(), "w1");
        let p = Decode::new("json:/value").unwrap();
        assert_eq!(p.write_of(r#"{"value":"w2"}"#).unwrap(), "w2");
        assert!(p.write_of("garbage").is_err());
        assert!(Decode::new("yaml").is_err());
    }
}
