//! The HTTP routes: LibreTranslate's (`POST /translate`, `GET /languages`,
//! `GET /frontend/settings`), a native `POST /v1/translate` with the decoder's settings, and
//! `GET /health`. Errors are `{"error": "..."}` with LibreTranslate's status codes: 400 for a
//! bad request, 403 for a missing or wrong key, 413 for an oversized body, 503 (with
//! `Retry-After`) when the queue is full, 504 when a request takes longer than the timeout.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gnmt_infer::{BeamOptions, LineResult};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::detect::detect;
use crate::metrics::HttpMetrics;
use crate::pool::{Pool, Refused};
use crate::Limits;

/// A language as LibreTranslate names it: an ISO 639-1 code and an English name.
#[derive(Debug, Clone, PartialEq)]
pub struct Language {
    pub code: String,
    pub name: String,
}

impl Language {
    /// The language of `code`, named from a short table (the code itself when unknown).
    pub fn from_code(code: &str) -> Self {
        let name = match code {
            "ar" => "Arabic",
            "cs" => "Czech",
            "de" => "German",
            "en" => "English",
            "es" => "Spanish",
            "fr" => "French",
            "it" => "Italian",
            "ja" => "Japanese",
            "nl" => "Dutch",
            "pl" => "Polish",
            "pt" => "Portuguese",
            "ro" => "Romanian",
            "ru" => "Russian",
            "tr" => "Turkish",
            "uk" => "Ukrainian",
            "zh" => "Chinese",
            other => other,
        };
        Self {
            code: code.to_string(),
            name: name.to_string(),
        }
    }
}

/// One model the server translates with: its language pair and its decoding pool.
#[derive(Clone)]
pub struct ServedModel {
    pub source: Language,
    pub target: Language,
    pub pool: Pool,
}

/// Every model served, each for one language pair.
#[derive(Clone, Default)]
pub struct Served {
    pub models: Vec<ServedModel>,
}

impl Served {
    /// The model for `source` into `target`; `source` `auto` detects, from `sample`, which of
    /// the languages served into `target` it is (with the confidence).
    fn find(
        &self,
        source: &str,
        target: &str,
        sample: &str,
    ) -> Result<(&ServedModel, f64), ApiError> {
        if !self.models.iter().any(|m| m.target.code == target) {
            return Err(ApiError::bad(format!("{target} is not supported")));
        }
        if source == "auto" {
            let into: Vec<&ServedModel> = self
                .models
                .iter()
                .filter(|m| m.target.code == target)
                .collect();
            let sources: Vec<&Language> = into.iter().map(|m| &m.source).collect();
            let (language, confidence) = detect(sample, &sources);
            let model = into
                .into_iter()
                .find(|m| m.source == *language)
                .expect("detect picks one of the candidates");
            return Ok((model, confidence));
        }
        if !self.models.iter().any(|m| m.source.code == source) {
            return Err(ApiError::bad(format!("{source} is not supported")));
        }
        self.models
            .iter()
            .find(|m| m.source.code == source && m.target.code == target)
            .map(|m| (m, 100.0))
            .ok_or_else(|| ApiError::bad(format!("{source} to {target} is not supported")))
    }

    /// Every language served as a source, once each, in order of appearance.
    fn sources(&self) -> Vec<&Language> {
        let mut sources: Vec<&Language> = Vec::new();
        for m in &self.models {
            if !sources.contains(&&m.source) {
                sources.push(&m.source);
            }
        }
        sources
    }
}

struct App {
    served: Served,
    limits: Limits,
    metrics: HttpMetrics,
}

/// The server's routes over `served`, within `limits`.
pub fn router(served: Served, limits: Limits) -> Router {
    let body_bytes = limits.body_bytes;
    let cors = limits.cors;
    let app = Arc::new(App {
        served,
        limits,
        metrics: HttpMetrics::new(),
    });
    let router = Router::new()
        .route("/", get(page))
        .route("/translate", post(libre_translate))
        .route("/languages", get(languages))
        .route("/detect", post(detect_language))
        .route("/frontend/settings", get(frontend_settings))
        .route("/v1/translate", post(native_translate))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), count_request))
        .layer(DefaultBodyLimit::max(body_bytes))
        .layer(request_log())
        .with_state(app);
    if cors {
        router.layer(tower_http::cors::CorsLayer::permissive())
    } else {
        router
    }
}

/// One log line per request and per answer (status, latency) at INFO, through `tracing`:
/// silent unless the program installs a subscriber (`gnmt serve` does; RUST_LOG filters).
fn request_log() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
> {
    use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
    TraceLayer::new_for_http()
        .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
}

/// Counts every routed request by route and status, with its latency.
async fn count_request(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = std::time::Instant::now();
    let response = next.run(request).await;
    app.metrics
        .record(&route, response.status().as_u16(), start.elapsed());
    response
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics.render(&app.served);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /`: the page (plain HTML and a little JavaScript, built into the binary).
async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("page.html"),
    )
        .into_response()
}

/// An error reply: a status and LibreTranslate's `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn from_refusal(refused: Refused) -> Self {
        match refused {
            Refused::Full => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "the translation queue is full; try again shortly".into(),
            },
            Refused::Stopped => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "the server is stopping".into(),
            },
            Refused::Failed(e) => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("translation failed: {e}"),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `q`: one text or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Texts {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct LibreRequest {
    q: Option<Texts>,
    source: Option<String>,
    target: Option<String>,
    format: Option<String>,
    api_key: Option<String>,
    #[serde(default, deserialize_with = "number_or_string")]
    alternatives: Option<usize>,
}

/// A count given as a JSON number or, in form bodies, as a string.
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(usize),
        Text(String),
    }
    match Option::<Either>::deserialize(d)? {
        None => Ok(None),
        Some(Either::Number(n)) => Ok(Some(n)),
        Some(Either::Text(s)) if s.trim().is_empty() => Ok(None),
        Some(Either::Text(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("not a count: {s:?}"))),
    }
}

/// The body as JSON or as a form, by its content type (JSON when none is given).
fn parse_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if content_type.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::bad(format!("Invalid request: {e}")))
    } else if content_type.starts_with("multipart/form-data") {
        Err(ApiError::bad(
            "Invalid request: multipart bodies are not supported; send JSON or a urlencoded form",
        ))
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("Invalid request: {e}")))
    }
}

fn check_key(limits: &Limits, given: Option<&str>) -> Result<(), ApiError> {
    match &limits.api_key {
        Some(key) if given != Some(key.as_str()) => Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: "Invalid API key".into(),
        }),
        _ => Ok(()),
    }
}

fn check_chars(limits: &Limits, texts: &[String]) -> Result<(), ApiError> {
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    if chars > limits.char_limit {
        return Err(ApiError::bad(format!(
            "Invalid request: request ({chars}) exceeds text limit ({})",
            limits.char_limit
        )));
    }
    Ok(())
}

/// Translates `lines` on `pool` within the request timeout.
async fn run(
    app: &App,
    pool: &Pool,
    lines: Vec<String>,
    options: BeamOptions,
) -> Result<Vec<LineResult>, ApiError> {
    match tokio::time::timeout(app.limits.timeout, pool.translate(lines, options)).await {
        Ok(result) => result.map_err(ApiError::from_refusal),
        Err(_) => Err(ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!(
                "the translation took longer than {} s",
                app.limits.timeout.as_secs_f64()
            ),
        }),
    }
}

async fn libre_translate(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: LibreRequest = parse_body(&headers, &body)?;
    check_key(&app.limits, req.api_key.as_deref())?;
    let (texts, batch) = match req.q {
        None => return Err(ApiError::bad("Invalid request: missing q parameter")),
        Some(Texts::One(t)) => (vec![t], false),
        Some(Texts::Many(ts)) => (ts, true),
    };
    let target = req
        .target
        .ok_or_else(|| ApiError::bad("Invalid request: missing target parameter"))?;
    let source = req.source.unwrap_or_else(|| "auto".to_string());
    let html = match req.format.as_deref() {
        None | Some("text") => false,
        Some("html") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "Invalid request: format {other:?}: text or html"
            )))
        }
    };
    check_chars(&app.limits, &texts)?;
    let (model, confidence) = app.served.find(&source, &target, &texts.join("\n"))?;
    let alternatives = req.alternatives.unwrap_or(0);
    let mut options = model.pool.defaults();
    if alternatives + 1 > options.beam_size {
        return Err(ApiError::bad(format!(
            "Invalid request: {alternatives} alternatives need a beam of {}; this model's is {}",
            alternatives + 1,
            options.beam_size
        )));
    }
    options.n_best = alternatives + 1;

    // Each text is split into lines (and, in HTML, into the text between tags); all of them
    // go to the pool as one job and are put back together in order.
    let pieces: Vec<Vec<Piece>> = texts
        .iter()
        .map(|t| if html { html_pieces(t) } else { text_pieces(t) })
        .collect();
    let lines: Vec<String> = pieces
        .iter()
        .flatten()
        .filter_map(|p| match p {
            Piece::Translate(s) => Some(s.clone()),
            Piece::Keep(_) => None,
        })
        .collect();
    let results = run(&app, &model.pool, lines, options).await?;
    let mut results = results.into_iter();
    let mut translated = Vec::new();
    let mut alternative_texts = Vec::new();
    for text_pieces in &pieces {
        let mut best = String::new();
        let mut alts = vec![String::new(); alternatives];
        for piece in text_pieces {
            match piece {
                Piece::Keep(s) => {
                    best.push_str(s);
                    alts.iter_mut().for_each(|a| a.push_str(s));
                }
                Piece::Translate(_) => {
                    let r = results.next().expect("one result per line sent");
                    let nth = |k: usize| {
                        let text = r.nbest.get(k).map_or("", |t| t.text.as_str());
                        if html {
                            escape_html(text)
                        } else {
                            text.to_string()
                        }
                    };
                    best.push_str(&nth(0));
                    for (k, a) in alts.iter_mut().enumerate() {
                        a.push_str(&nth(k + 1));
                    }
                }
            }
        }
        translated.push(best);
        alternative_texts.push(alts);
    }
    let detected = json!({ "confidence": confidence, "language": model.source.code });
    let mut reply = serde_json::Map::new();
    if batch {
        reply.insert("translatedText".into(), json!(translated));
        if alternatives > 0 {
            reply.insert("alternatives".into(), json!(alternative_texts));
        }
        if source == "auto" {
            reply.insert(
                "detectedLanguage".into(),
                json!(vec![detected; translated.len()]),
            );
        }
    } else {
        reply.insert("translatedText".into(), json!(translated[0]));
        if alternatives > 0 {
            reply.insert("alternatives".into(), json!(alternative_texts[0]));
        }
        if source == "auto" {
            reply.insert("detectedLanguage".into(), detected);
        }
    }
    Ok(Json(Value::Object(reply)))
}

/// Part of a text: translated, or kept as it is (line breaks, tags, surrounding space).
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Translate(String),
    Keep(String),
}

/// A plain text's lines, translated one by one; line breaks and blank lines kept.
fn text_pieces(text: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    for (k, line) in text.split('\n').enumerate() {
        if k > 0 {
            pieces.push(Piece::Keep("\n".into()));
        }
        push_trimmed(&mut pieces, line);
    }
    pieces
}

/// `s` as its leading space, its content to translate, its trailing space.
fn push_trimmed(pieces: &mut Vec<Piece>, s: &str) {
    let content = s.trim();
    if content.is_empty() {
        if !s.is_empty() {
            pieces.push(Piece::Keep(s.to_string()));
        }
        return;
    }
    let start = s.len() - s.trim_start().len();
    let end = start + content.len();
    if start > 0 {
        pieces.push(Piece::Keep(s[..start].to_string()));
    }
    pieces.push(Piece::Translate(content.to_string()));
    if end < s.len() {
        pieces.push(Piece::Keep(s[end..].to_string()));
    }
}

/// An HTML fragment: tags kept in place, the text between them translated (its entities
/// decoded first, and the translation escaped again). Line breaks inside a text run become
/// spaces, as a browser shows them.
fn html_pieces(html: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = html;
    while !rest.is_empty() {
        match rest.find('<') {
            Some(0) => {
                let end = rest.find('>').map_or(rest.len(), |e| e + 1);
                pieces.push(Piece::Keep(rest[..end].to_string()));
                rest = &rest[end..];
            }
            Some(i) => {
                push_html_text(&mut pieces, &rest[..i]);
                rest = &rest[i..];
            }
            None => {
                push_html_text(&mut pieces, rest);
                rest = "";
            }
        }
    }
    pieces
}

fn push_html_text(pieces: &mut Vec<Piece>, raw: &str) {
    let mut trimmed = Vec::new();
    push_trimmed(&mut trimmed, raw);
    for piece in trimmed {
        pieces.push(match piece {
            Piece::Translate(s) => Piece::Translate(unescape_html(&s.replace('\n', " "))),
            keep => keep,
        });
    }
}

fn unescape_html(s: &str) -> String {
    s.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[derive(Debug, Deserialize)]
struct DetectRequest {
    q: Option<String>,
    api_key: Option<String>,
}

/// `POST /detect`: which served source language `q` is in, as LibreTranslate answers it.
async fn detect_language(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: DetectRequest = parse_body(&headers, &body)?;
    check_key(&app.limits, req.api_key.as_deref())?;
    let q = req
        .q
        .ok_or_else(|| ApiError::bad("Invalid request: missing q parameter"))?;
    check_chars(&app.limits, std::slice::from_ref(&q))?;
    let sources = app.served.sources();
    if sources.is_empty() {
        return Err(ApiError::bad("no model is served"));
    }
    let (language, confidence) = detect(&q, &sources);
    Ok(Json(
        json!([{ "confidence": confidence, "language": language.code }]),
    ))
}

async fn languages(State(app): State<Arc<App>>) -> Json<Value> {
    let list: Vec<Value> = app
        .served
        .sources()
        .into_iter()
        .map(|s| {
            let targets: Vec<&str> = app
                .served
                .models
                .iter()
                .filter(|m| m.source == *s)
                .map(|m| m.target.code.as_str())
                .collect();
            json!({ "code": s.code, "name": s.name, "targets": targets })
        })
        .collect();
    Json(json!(list))
}

async fn frontend_settings(State(app): State<Arc<App>>) -> Json<Value> {
    let first = app.served.models.first();
    let language = |l: Option<&Language>| match l {
        Some(l) => json!({ "code": l.code, "name": l.name }),
        None => Value::Null,
    };
    Json(json!({
        "charLimit": app.limits.char_limit,
        "frontendTimeout": app.limits.timeout.as_millis() as u64,
        "apiKeys": app.limits.api_key.is_some(),
        "keyRequired": app.limits.api_key.is_some(),
        "suggestions": false,
        "filesTranslation": false,
        "supportedFilesFormat": [],
        "language": {
            "source": language(first.map(|m| &m.source)),
            "target": language(first.map(|m| &m.target)),
        },
    }))
}

async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    use std::sync::atomic::Ordering::SeqCst;
    let models: Vec<Value> = app
        .served
        .models
        .iter()
        .map(|m| {
            let s = m.pool.stats();
            json!({
                "source": m.source.code,
                "target": m.target.code,
                "queued_lines": s.queued_lines.load(SeqCst),
                "batches": s.batches.load(SeqCst),
                "lines": s.lines.load(SeqCst),
                "abandoned_requests": s.abandoned.load(SeqCst),
            })
        })
        .collect();
    Json(json!({ "status": "ok", "models": models }))
}

/// `POST /v1/translate`: lines in, n-best translations with their scores out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeRequest {
    lines: Vec<String>,
    source: String,
    target: String,
    beam_size: Option<usize>,
    alpha: Option<f64>,
    beta: Option<f64>,
    n_best: Option<usize>,
    /// Also return each hypothesis's attention over the source pieces, with the pieces.
    #[serde(default)]
    attention: bool,
    api_key: Option<String>,
}

async fn native_translate(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: NativeRequest = parse_body(&headers, &body)?;
    check_key(&app.limits, req.api_key.as_deref())?;
    check_chars(&app.limits, &req.lines)?;
    let (model, _) = app
        .served
        .find(&req.source, &req.target, &req.lines.join("\n"))?;
    let mut options = model.pool.defaults();
    if let Some(k) = req.beam_size {
        if !(1..=256).contains(&k) {
            return Err(ApiError::bad(format!("beam_size {k}: 1 to 256")));
        }
        options.beam_size = k;
    }
    for (name, value, field) in [
        ("alpha", req.alpha, &mut options.alpha),
        ("beta", req.beta, &mut options.beta),
    ] {
        if let Some(v) = value {
            if !(0.0..=10.0).contains(&v) {
                return Err(ApiError::bad(format!("{name} {v}: 0 to 10")));
            }
            *field = v;
        }
    }
    let n_best = req.n_best.unwrap_or(1);
    if !(1..=options.beam_size).contains(&n_best) {
        return Err(ApiError::bad(format!(
            "n_best {n_best}: 1 to the beam size, {}",
            options.beam_size
        )));
    }
    options.n_best = n_best;
    options.keep_attention = req.attention;
    if let Some(line) = req.lines.iter().position(|l| l.contains('\n')) {
        return Err(ApiError::bad(format!(
            "lines[{line}] holds a line break: send one line per entry"
        )));
    }
    let results = run(&app, &model.pool, req.lines.clone(), options).await?;
    let translations: Vec<Value> = results
        .iter()
        .zip(&req.lines)
        .map(|(r, line)| {
            let nbest: Vec<Value> = r
                .nbest
                .iter()
                .map(|t| {
                    let mut h = json!({
                        "text": t.text,
                        "score": t.hypothesis.score,
                        "log_prob": t.hypothesis.log_prob,
                    });
                    if req.attention {
                        let mut pieces = model.pool.pieces(&t.hypothesis.tokens);
                        if t.hypothesis.attention.len() > pieces.len() {
                            pieces.push("</s>".into());
                        }
                        h["pieces"] = json!(pieces);
                        h["attention"] = json!(t.hypothesis.attention);
                    }
                    h
                })
                .collect();
            let mut translation =
                json!({ "nbest": nbest, "source_tokens": r.source_tokens, "cropped": r.cropped });
            if req.attention {
                translation["source_pieces"] = json!(model.pool.source_pieces(line));
            }
            translation
        })
        .collect();
    Ok(Json(json!({ "translations": translations })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(s: &str) -> Piece {
        Piece::Keep(s.into())
    }

    fn tr(s: &str) -> Piece {
        Piece::Translate(s.into())
    }

    #[test]
    fn text_keeps_its_line_breaks_and_surrounding_space() {
        assert_eq!(
            text_pieces(" A dog.\n\nA cat. "),
            vec![
                keep(" "),
                tr("A dog."),
                keep("\n"),
                keep("\n"),
                tr("A cat."),
                keep(" ")
            ]
        );
    }

    #[test]
    fn html_keeps_tags_and_translates_the_text_between() {
        assert_eq!(
            html_pieces("<p>A dog &amp; a cat.</p> <br/>Two men."),
            vec![
                keep("<p>"),
                tr("A dog & a cat."),
                keep("</p>"),
                keep(" "),
                keep("<br/>"),
                tr("Two men."),
            ]
        );
        assert_eq!(escape_html("a < b & c"), "a &lt; b &amp; c");
    }
}
