//! KServe v2 HTTP/REST on `--http-port`: Triton's routes, status mapping, `{"error": ...}`
//! bodies, the binary tensor data extension and gzip/deflate. The only place core errors
//! become HTTP status codes. Every handler decodes, calls one `Core` method and encodes.

mod body;
pub mod infer;
pub mod json;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use serde::Serialize;
use tokio::net::TcpListener;

use super::convert::{encode_model_metadata, encode_server_metadata, encode_statistics};
use super::restrict::{Category, Restrictions};
use crate::core::Core;
use crate::error::InferError;
use crate::proto::inference as pb;
use crate::repository::LoadRequest;
use body::{compress, read_body, BodyError, Encoding};

/// Header naming the length of the JSON part of a binary-extension body.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// HTTP limits (each a flag).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest request body, before and after decompression (`--http-max-input-size`).
    pub max_input_bytes: usize,
    /// Most non-empty body chunks in one request.
    pub max_chunks: usize,
    /// Deepest JSON nesting accepted.
    pub max_json_depth: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_input_bytes: 1 << 26,
            max_chunks: 65_536,
            max_json_depth: 100,
        }
    }
}

#[derive(Clone)]
struct AppState {
    core: Arc<Core>,
    limits: Arc<HttpLimits>,
    restrictions: Arc<Restrictions>,
}

/// The HTTP endpoint, bound and ready to serve.
pub struct HttpEndpoint {
    listener: TcpListener,
    router: Router,
}

impl HttpEndpoint {
    /// Binds `addr`.
    pub async fn bind(
        addr: SocketAddr,
        core: Arc<Core>,
        limits: HttpLimits,
        restrictions: Restrictions,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind HTTP endpoint {addr}"))?;
        tracing::info!("Started HTTPService at {}", listener.local_addr()?);
        let state = AppState {
            core,
            limits: Arc::new(limits),
            restrictions: Arc::new(restrictions),
        };
        let router = Router::new().fallback(dispatch).with_state(state);
        Ok(HttpEndpoint { listener, router })
    }

    /// Serves until `stop` resolves, then waits for in-flight requests.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        // Small JSON answers must not wait on Nagle's algorithm.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        if let Err(e) = axum::serve(listener, self.router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "HTTP endpoint failed");
        }
    }
}

/// One of Triton's routes, with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// Switchyard: the model's deployment state (`deployment.toml` and its runtime).
    Deployment {
        model: String,
    },
    /// Switchyard: an operator's action on the model's deployment (POST to the same path).
    DeploymentAction {
        model: String,
    },
    ServerMetadata,
    Live,
    Ready,
    ModelMetadata {
        model: String,
        version: String,
    },
    ModelReady {
        model: String,
        version: String,
    },
    Infer {
        model: String,
        version: String,
    },
    Config {
        model: String,
        version: String,
    },
    Stats {
        model: String,
        version: String,
    },
    Index {
        repository: String,
    },
    Load {
        repository: String,
        model: String,
    },
    Unload {
        repository: String,
        model: String,
    },
    /// A Triton route Switchyard does not implement (501), with its category.
    Unimplemented {
        what: &'static str,
        category: Category,
    },
}

impl Route {
    /// Matches Triton's route patterns; `None` is 404. Model names are percent-decoded.
    fn parse(path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/v2")?;
        if rest.is_empty() {
            return Some(Route::ServerMetadata);
        }
        let segs: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
        let name = |s: &str| -> Option<String> {
            if s.is_empty() {
                return None;
            }
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        };
        Some(match segs.as_slice() {
            ["health", "live"] => Route::Live,
            ["health", "ready"] => Route::Ready,
            ["models", "stats"] => Route::Stats {
                model: String::new(),
                version: String::new(),
            },
            ["models", m, tail @ ..] => {
                let model = name(m)?;
                let (version, tail) = match tail {
                    ["versions", v, rest @ ..] => {
                        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                            return None;
                        }
                        (v.to_string(), rest)
                    }
                    _ => (String::new(), tail),
                };
                match tail {
                    [] => Route::ModelMetadata { model, version },
                    ["ready"] => Route::ModelReady { model, version },
                    ["infer"] => Route::Infer { model, version },
                    ["config"] => Route::Config { model, version },
                    ["stats"] => Route::Stats { model, version },
                    ["deployment"] if version.is_empty() => Route::Deployment { model },
                    ["trace", "setting"] if version.is_empty() => Route::Unimplemented {
                        what: "trace settings",
                        category: Category::Trace,
                    },
                    ["generate"] | ["generate_stream"] => Route::Unimplemented {
                        what: "the generate extension",
                        category: Category::Inference,
                    },
                    _ => return None,
                }
            }
            ["repository", tail @ ..] => {
                let (repository, tail) = match tail {
                    ["index"] | ["models", ..] => (String::new(), tail),
                    [repo, rest @ ..] => (name(repo)?, rest),
                    [] => return None,
                };
                match tail {
                    ["index"] => Route::Index { repository },
                    ["models", m, "load"] => Route::Load {
                        repository,
                        model: name(m)?,
                    },
                    ["models", m, "unload"] => Route::Unload {
                        repository,
                        model: name(m)?,
                    },
                    _ => return None,
                }
            }
            [shm @ ("systemsharedmemory" | "cudasharedmemory"), tail @ ..] => {
                let ok = matches!(
                    tail,
                    ["status" | "register" | "unregister"]
                        | ["region", _, "status" | "register" | "unregister"]
                );
                if !ok {
                    return None;
                }
                Route::Unimplemented {
                    what: if *shm == "systemsharedmemory" {
                        "system shared memory"
                    } else {
                        "CUDA shared memory"
                    },
                    category: Category::SharedMemory,
                }
            }
            ["trace", "setting"] => Route::Unimplemented {
                what: "trace settings",
                category: Category::Trace,
            },
            ["logging"] => Route::Unimplemented {
                what: "log settings",
                category: Category::Logging,
            },
            _ => return None,
        })
    }

    fn category(&self) -> Category {
        match self {
            Route::Live | Route::Ready | Route::ModelReady { .. } => Category::Health,
            Route::ServerMetadata | Route::ModelMetadata { .. } => Category::Metadata,
            Route::Infer { .. } => Category::Inference,
            Route::Config { .. } => Category::ModelConfig,
            Route::Stats { .. } => Category::Statistics,
            Route::Index { .. }
            | Route::Load { .. }
            | Route::Unload { .. }
            | Route::Deployment { .. }
            | Route::DeploymentAction { .. } => Category::ModelRepository,
            Route::Unimplemented { category, .. } => *category,
        }
    }

    fn method_allowed(&self, m: &Method) -> bool {
        match self {
            Route::Infer { .. }
            | Route::Index { .. }
            | Route::Load { .. }
            | Route::Unload { .. } => m == Method::POST,
            Route::Unimplemented { .. } | Route::Deployment { .. } => {
                m == Method::GET || m == Method::POST
            }
            Route::DeploymentAction { .. } => m == Method::POST,
            _ => m == Method::GET,
        }
    }
}

/// Triton's status for each error class.
fn status_of(e: &InferError) -> StatusCode {
    match e {
        InferError::NotFound(_) => StatusCode::NOT_FOUND,
        InferError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        InferError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        InferError::Exec(crate::executor::ExecError::InvalidInput(_)) => StatusCode::BAD_REQUEST,
        InferError::Exec(_) | InferError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        InferError::InvalidArgument(_)
        | InferError::Cancelled(_)
        | InferError::DeadlineExceeded(_) => StatusCode::BAD_REQUEST,
    }
}

fn error_response(status: StatusCode, msg: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": msg }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn infer_error(e: InferError) -> Response<Body> {
    error_response(status_of(&e), &e.to_string())
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// A JSON (or JSON + binary) answer, compressed if the client accepts it.
fn reply(json: Vec<u8>, binary: Vec<Bytes>, accept: Option<Encoding>) -> Response<Body> {
    let json_len = json.len();
    let is_binary = !binary.is_empty();
    let mut payload = json;
    for b in &binary {
        payload.extend_from_slice(b);
    }
    let (payload, encoding) = match accept {
        Some(enc) => match compress(&payload, enc) {
            Ok(c) => (c, Some(enc)),
            Err(e) => {
                tracing::warn!(error = %e, "response compression failed; sending identity");
                (payload, None)
            }
        },
        None => (payload, None),
    };
    let mut r = Response::new(Body::from(payload));
    let h = r.headers_mut();
    if is_binary {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(HEADER_CONTENT_LENGTH, HeaderValue::from(json_len));
    } else {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if let Some(enc) = encoding {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(enc.name()),
        );
    }
    r
}

fn json_reply(value: &impl Serialize, accept: Option<Encoding>) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(j) => reply(j, Vec::new(), accept),
        Err(e) => infer_error(InferError::Internal(format!("cannot render JSON: {e}"))),
    }
}

fn proto_reply(
    msg: &impl prost::Message,
    full_name: &str,
    accept: Option<Encoding>,
) -> Response<Body> {
    match json::proto_to_json(msg, full_name) {
        Ok(j) => reply(j, Vec::new(), accept),
        Err(e) => infer_error(e),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn dispatch(
    axum::extract::State(st): axum::extract::State<AppState>,
    req: Request<Body>,
) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut response = route_and_handle(&st, &parts, &mut body).await;
    // A body left unread (early error) is drained, bounded, so the connection stays usable
    // and the client gets its answer instead of a reset; past the bound it is closed.
    let closing = response
        .headers()
        .get(header::CONNECTION)
        .is_some_and(|v| v == "close");
    if !closing && !axum::body::HttpBody::is_end_stream(&body) && !body::drain(&mut body).await {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn route_and_handle(
    st: &AppState,
    parts: &axum::http::request::Parts,
    body: &mut Body,
) -> Response<Body> {
    let Some(route) = Route::parse(parts.uri.path()) else {
        return error_response(StatusCode::NOT_FOUND, "Not Found");
    };
    // The restriction first: an unauthorised caller learns nothing about the route.
    if let Err(msg) = st
        .restrictions
        .check(route.category(), |k| header_str(&parts.headers, k))
    {
        return error_response(StatusCode::FORBIDDEN, &msg);
    }
    if !route.method_allowed(&parts.method) {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let accept = body::accepted_encoding(header_str(&parts.headers, "accept-encoding"));
    let route = match route {
        Route::Deployment { model } if parts.method == Method::POST => {
            Route::DeploymentAction { model }
        }
        other => other,
    };
    match handle(st, route, &parts.headers, body, accept).await {
        Ok(r) => r,
        Err(HandlerError::Core(e)) => infer_error(e),
        Err(HandlerError::Body(e)) => body_error(e),
    }
}

/// Largest body of a deployment action, in bytes (it holds a few short fields).
const MAX_ACTION_BODY: usize = 64 * 1024;

/// The body of `POST /v2/models/{m}/deployment`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// set_weight, promote, rollback, pause, resume, kill or unkill.
    action: String,
    /// The version to kill or unkill.
    version: Option<i64>,
    /// The canary's new weight, for set_weight.
    weight_percent: Option<f64>,
    who: Option<String>,
    why: Option<String>,
}

enum HandlerError {
    Core(InferError),
    Body(BodyError),
}

impl From<InferError> for HandlerError {
    fn from(e: InferError) -> Self {
        HandlerError::Core(e)
    }
}

impl From<BodyError> for HandlerError {
    fn from(e: BodyError) -> Self {
        HandlerError::Body(e)
    }
}

fn body_error(e: BodyError) -> Response<Body> {
    let mut r = error_response(StatusCode::BAD_REQUEST, &e.to_string());
    match e {
        BodyError::UnsupportedEncoding(_) => {
            r.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("gzip, deflate"),
            );
        }
        // Too many chunks: close the connection, as Triton does. An over-long body is drained
        // (bounded) by `dispatch` so the client still reads this answer.
        BodyError::TooManyChunks(_) => {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        BodyError::TooLarge { .. } => {}
        BodyError::Read(_) | BodyError::Decompress(_) => {}
    }
    r
}

#[derive(Serialize)]
struct IndexRow {
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
}

fn unsupported_repository(repository: &str) -> Result<(), InferError> {
    if repository.is_empty() {
        Ok(())
    } else {
        Err(InferError::Unsupported(format!(
            "repository '{repository}': Switchyard serves one repository; leave the repository name out"
        )))
    }
}

/// The `parameters` object of a repository request body (empty body: none).
fn parameters_of(
    body: &[u8],
    max_depth: usize,
) -> Result<serde_json::Map<String, serde_json::Value>, InferError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    if json::nesting_exceeds(body, max_depth) {
        return Err(InferError::invalid(format!(
            "JSON nesting is deeper than the limit of {max_depth}"
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| InferError::invalid(format!("failed to parse the request JSON: {e}")))?;
    match v.get("parameters") {
        None => Ok(serde_json::Map::new()),
        Some(serde_json::Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(InferError::invalid("'parameters' must be a JSON object")),
    }
}

/// The load API's body: `{"parameters": {"config": "<json>", "file:<path>": "<base64>"}}`.
fn load_request(body: &[u8], max_depth: usize) -> Result<LoadRequest, InferError> {
    use base64::Engine as _;
    let mut request = LoadRequest::default();
    for (key, value) in parameters_of(body, max_depth)? {
        if key == "config" {
            let serde_json::Value::String(c) = value else {
                return Err(InferError::invalid(
                    "parameter 'config' must be a string holding the JSON config",
                ));
            };
            request.config = Some(c);
        } else if let Some(path) = key.strip_prefix("file:") {
            let serde_json::Value::String(b64) = value else {
                return Err(InferError::invalid(format!(
                    "parameter '{key}' must be a base64 string"
                )));
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| {
                    InferError::invalid(format!("parameter '{key}': invalid base64: {e}"))
                })?;
            request.files.push((path.to_string(), bytes));
        } else {
            return Err(InferError::invalid(format!(
                "unrecognized load parameter '{key}'"
            )));
        }
    }
    Ok(request)
}

async fn handle(
    st: &AppState,
    route: Route,
    headers: &HeaderMap,
    body: &mut Body,
    accept: Option<Encoding>,
) -> Result<Response<Body>, HandlerError> {
    let core = &st.core;
    Ok(match route {
        Route::Live => empty(if core.live() {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        }),
        Route::Ready => empty(if core.ready() {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        }),
        Route::ServerMetadata => proto_reply(
            &encode_server_metadata(core.server_metadata()),
            "inference.ServerMetadataResponse",
            accept,
        ),
        Route::ModelMetadata { model, version } => proto_reply(
            &encode_model_metadata(core.model_metadata(&model, &version)?),
            "inference.ModelMetadataResponse",
            accept,
        ),
        Route::ModelReady { model, version } => {
            if core.model_ready(&model, &version)? {
                empty(StatusCode::OK)
            } else {
                error_response(StatusCode::BAD_REQUEST, "Model version not ready")
            }
        }
        Route::Deployment { model } => json_reply(&core.deployment_state(&model)?, accept),
        Route::DeploymentAction { model } => {
            let limits = HttpLimits {
                max_input_bytes: st.limits.max_input_bytes.min(MAX_ACTION_BODY),
                ..(*st.limits).clone()
            };
            let body = read_body(body, headers, &limits).await?;
            let request: ActionBody = serde_json::from_slice(&body).map_err(|e| {
                InferError::invalid(format!("failed to parse the deployment action JSON: {e}"))
            })?;
            let event = core.deployment_action(
                &model,
                &request.action,
                request.version,
                request.weight_percent,
                request.who.as_deref().unwrap_or_default(),
                request.why.as_deref().unwrap_or_default(),
            )?;
            json_reply(&event, accept)
        }
        Route::Config { model, version } => proto_reply(
            core.model_config(&model, &version)?.as_ref(),
            "inference.ModelConfig",
            accept,
        ),
        Route::Stats { model, version } => {
            let stats = pb::ModelStatisticsResponse {
                model_stats: core
                    .statistics(&model, &version)?
                    .into_iter()
                    .map(encode_statistics)
                    .collect(),
            };
            proto_reply(&stats, "inference.ModelStatisticsResponse", accept)
        }
        Route::Index { .. } => {
            // Like Triton, the index ignores a repository name.
            let body = read_body(body, headers, &st.limits).await?;
            let ready = if body.iter().all(u8::is_ascii_whitespace) {
                false
            } else {
                let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                    InferError::invalid(format!("failed to parse the request JSON: {e}"))
                })?;
                match v.get("ready") {
                    None => false,
                    Some(serde_json::Value::Bool(b)) => *b,
                    Some(_) => return Err(InferError::invalid("'ready' must be a bool").into()),
                }
            };
            let rows: Vec<IndexRow> = core
                .index(ready)
                .into_iter()
                .map(|e| IndexRow {
                    name: e.name,
                    version: e.version,
                    state: e.state,
                    reason: e.reason,
                })
                .collect();
            json_reply(&rows, accept)
        }
        Route::Load { repository, model } => {
            unsupported_repository(&repository)?;
            let body = read_body(body, headers, &st.limits).await?;
            let request = load_request(&body, st.limits.max_json_depth)?;
            core.load_model(&model, request).await?;
            empty(StatusCode::OK)
        }
        Route::Unload { repository, model } => {
            unsupported_repository(&repository)?;
            let body = read_body(body, headers, &st.limits).await?;
            // `unload_dependents` is accepted; Switchyard has no ensembles to cascade to.
            parameters_of(&body, st.limits.max_json_depth)?;
            core.unload_model(&model).await?;
            empty(StatusCode::OK)
        }
        Route::Infer { model, version } => {
            // An unknown model is 404 whatever the body holds.
            let spec = core.model(&model, &version)?.spec.clone();
            let body = read_body(body, headers, &st.limits).await?;
            let header_len =
                infer::header_length(header_str(headers, HEADER_CONTENT_LENGTH), body.len())?;
            let (request, plan) = match header_len {
                Some(0) => infer::raw_binary_request(&spec, &version, body)?,
                Some(n) => {
                    infer::json_request(&model, &version, body, n, st.limits.max_json_depth)?
                }
                None => {
                    let n = body.len();
                    infer::json_request(&model, &version, body, n, st.limits.max_json_depth)?
                }
            };
            let mut request = request;
            request.headers = headers.clone();
            let response = core.infer(request, None).await?;
            let encoded = infer::encode_response(&response, &plan)?;
            reply(encoded.json, encoded.binary, accept)
        }
        Route::Unimplemented { what, .. } => {
            return Err(InferError::Unsupported(format!(
                "{what} are not implemented by Switchyard yet"
            ))
            .into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(model: &str, version: &str) -> (String, String) {
        (model.to_string(), version.to_string())
    }

    #[test]
    fn routes_match_triton_patterns() {
        assert_eq!(Route::parse("/v2"), Some(Route::ServerMetadata));
        assert_eq!(Route::parse("/v2/health/ready"), Some(Route::Ready));
        let (model, version) = m("simple", "3");
        assert_eq!(
            Route::parse("/v2/models/simple/versions/3/infer"),
            Some(Route::Infer { model, version })
        );
        let (model, version) = m("a b", "");
        assert_eq!(
            Route::parse("/v2/models/a%20b/config"),
            Some(Route::Config { model, version })
        );
        assert_eq!(
            Route::parse("/v2/models/stats"),
            Some(Route::Stats {
                model: String::new(),
                version: String::new()
            })
        );
        assert_eq!(
            Route::parse("/v2/repository/r1/models/x/load"),
            Some(Route::Load {
                repository: "r1".into(),
                model: "x".into()
            })
        );
        assert_eq!(
            Route::parse("/v2/repository/index"),
            Some(Route::Index {
                repository: String::new()
            })
        );
        for bad in [
            "/v2/",
            "/v2/models/simple/versions/v1/infer",
            "/v2/models/simple/versions//infer",
            "/v2/models//infer",
            "/v2/models/simple/versions/1/trace/setting",
            "/v2/models/simple/bogus",
            "/v3",
            "/v2/health",
            "/v2/systemsharedmemory/region/x/bogus",
        ] {
            assert_eq!(Route::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn methods_and_categories() {
        let infer = Route::parse("/v2/models/m/infer").unwrap();
        assert!(infer.method_allowed(&Method::POST) && !infer.method_allowed(&Method::GET));
        assert_eq!(infer.category(), Category::Inference);
        let stats = Route::parse("/v2/models/stats").unwrap();
        assert_eq!(stats.category(), Category::Statistics);
        assert_eq!(
            Route::parse("/v2/models/m/versions/2/stats")
                .unwrap()
                .category(),
            Category::Statistics
        );
        assert_eq!(
            Route::parse("/v2/models/m/ready").unwrap().category(),
            Category::Health
        );
    }

    #[test]
    fn status_mapping() {
        assert_eq!(
            status_of(&InferError::invalid("x")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(&InferError::NotFound("x".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(&InferError::Unavailable("x".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_of(&InferError::Unsupported("x".into())),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            status_of(&InferError::Internal("x".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
