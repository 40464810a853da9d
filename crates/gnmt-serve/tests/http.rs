//! The server over real HTTP on loopback, with the shipped model: LibreTranslate's routes and
//! the native one, every error a client can cause, batching across concurrent requests (each
//! line translated as `translate` translates it alone), and graceful shutdown.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use candle::Device;
use gnmt_infer::Translator;
use gnmt_model::{Kernels, Precision};
use gnmt_serve::api::ServedModel;
use gnmt_serve::client::{self, Reply};
use gnmt_serve::{Language, Limits, Pool, PoolOptions, Served};
use serde_json::{json, Value};
use tokio::sync::oneshot;

fn translator() -> Translator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/multi30k-en-de");
    Translator::load(&dir, &Device::Cpu, Kernels::Fused(Precision::F32)).unwrap()
}

/// What `translate` gives for `line` alone, with the model's defaults.
fn alone(line: &str) -> String {
    let t = translator();
    let r = t.translate(&[line], &t.default_options(), 1, 250).unwrap();
    r[0].nbest[0].text.clone()
}

/// A server on a free loopback port, stopped (gracefully) when dropped.
struct Server {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    pool: Pool,
}

impl Server {
    fn start(pool_options: PoolOptions, limits: Limits) -> Self {
        Self::serving(&[("en", "de")], pool_options, limits)
    }

    /// The shipped model served for each of `pairs`; `pool` is the first pair's.
    fn serving(pairs: &[(&str, &str)], pool_options: PoolOptions, limits: Limits) -> Self {
        let models: Vec<ServedModel> = pairs
            .iter()
            .map(|(source, target)| ServedModel {
                source: Language::from_code(source),
                target: Language::from_code(target),
                pool: Pool::start(translator(), pool_options.clone()),
            })
            .collect();
        let pool = models[0].pool.clone();
        let served = Served { models };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(gnmt_serve::serve(listener, served, limits, async {
                let _ = stopped.await;
            }))
        });
        Self {
            address,
            stop: Some(stop),
            thread: Some(thread),
            pool,
        }
    }

    fn default() -> Self {
        Self::start(PoolOptions::default(), Limits::default())
    }

    /// Stops accepting, waits for the requests in flight, and returns how serving ended.
    fn shut_down(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().map_or(Ok(()), |t| t.join().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// The server's `{"error"}` message and JSON bodies, read from a reply.
trait ReplyJson {
    fn json(&self) -> Value;
    fn error(&self) -> String;
}

impl ReplyJson for Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_string()
    }
}

fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Reply {
    client::request(
        address,
        method,
        path,
        content_type,
        body,
        Duration::from_secs(60),
    )
    .unwrap()
}

fn post_json(address: SocketAddr, path: &str, body: &Value) -> Reply {
    request(
        address,
        "POST",
        path,
        "application/json",
        body.to_string().as_bytes(),
    )
}

fn get(address: SocketAddr, path: &str) -> Reply {
    request(address, "GET", path, "text/plain", b"")
}

#[test]
fn libretranslate_routes_answer_as_its_clients_expect() {
    let server = Server::default();
    let a = server.address;
    let line = "A man is riding a bicycle.";

    let r = post_json(
        a,
        "/translate",
        &json!({"q": line, "source": "en", "target": "de"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"translatedText": alone(line)}));

    // Weblate sends arrays; `auto` reports the language; alternatives come from the beam.
    let lines = [
        "Two dogs play in the snow.",
        "",
        "A woman sings.\nA child laughs.",
    ];
    let r = post_json(
        a,
        "/translate",
        &json!({"q": lines, "source": "auto", "target": "de", "alternatives": 2}),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    let texts: Vec<&str> = v["translatedText"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(texts[0], alone(lines[0]));
    assert_eq!(texts[1], "");
    assert_eq!(
        texts[2],
        format!("{}\n{}", alone("A woman sings."), alone("A child laughs."))
    );
    assert_eq!(v["detectedLanguage"][0]["language"], "en");
    assert_eq!(v["alternatives"][0].as_array().unwrap().len(), 2);
    assert_ne!(v["alternatives"][0][0], v["translatedText"][0]);

    // A form body, as the simplest clients send it.
    let r = request(
        a,
        "POST",
        "/translate",
        "application/x-www-form-urlencoded",
        b"q=Two+dogs+play+in+the+snow.&source=en&target=de&alternatives=",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["translatedText"],
        alone("Two dogs play in the snow.")
    );

    // Mastodon sends HTML: tags stay where they are, the text between them is translated.
    let r = post_json(
        a,
        "/translate",
        &json!({"q": "<p>A man is riding a bicycle.</p><br>", "source": "auto", "target": "de", "format": "html"}),
    );
    assert_eq!(
        r.json()["translatedText"],
        format!("<p>{}</p><br>", alone(line))
    );

    let langs = get(a, "/languages").json();
    assert_eq!(
        langs,
        json!([{"code": "en", "name": "English", "targets": ["de"]}])
    );
    let settings = get(a, "/frontend/settings").json();
    assert_eq!(settings["charLimit"], 5000);
    assert_eq!(settings["keyRequired"], false);
    assert_eq!(settings["language"]["target"]["code"], "de");
    let health = get(a, "/health").json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["models"][0]["queued_lines"], 0);
}

#[test]
fn the_native_route_gives_nbest_lists_with_scores() {
    let server = Server::default();
    let r = post_json(
        server.address,
        "/v1/translate",
        &json!({"lines": ["A man is riding a bicycle.", "A dog runs."], "source": "en",
                "target": "de", "beam_size": 4, "n_best": 3}),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    let first = v["translations"][0]["nbest"].as_array().unwrap();
    assert_eq!(first.len(), 3);
    let scores: Vec<f64> = first.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(first[0]["log_prob"].as_f64().unwrap() < 0.0);
    assert_eq!(v["translations"][1]["cropped"], false);
    for (body, needle) in [
        (
            json!({"lines": ["x"], "source": "en", "target": "de", "beam_size": 0}),
            "beam_size 0",
        ),
        (
            json!({"lines": ["x"], "source": "en", "target": "de", "n_best": 9}),
            "n_best 9",
        ),
        (
            json!({"lines": ["a\nb"], "source": "en", "target": "de"}),
            "line break",
        ),
        (
            json!({"lines": ["x"], "source": "en", "target": "de", "beem": 3}),
            "unknown field",
        ),
    ] {
        let r = post_json(server.address, "/v1/translate", &body);
        assert_eq!(r.status, 400, "{body}");
        assert!(r.error().contains(needle), "{body}: {}", r.error());
    }
}

#[test]
fn bad_requests_get_a_4xx_with_a_message_never_a_crash() {
    let limits = Limits {
        char_limit: 40,
        body_bytes: 1000,
        ..Limits::default()
    };
    let server = Server::start(PoolOptions::default(), limits);
    let a = server.address;
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (br#"{"source": "en", "target": "de"}"#, 400, "missing q"),
        (br#"{"q": "Hi.", "source": "en"}"#, 400, "missing target"),
        (
            br#"{"q": "Hi.", "source": "en", "target": "fr"}"#,
            400,
            "fr is not supported",
        ),
        (
            br#"{"q": "Hi.", "source": "es", "target": "de"}"#,
            400,
            "es is not supported",
        ),
        (
            br#"{"q": "Hi.", "target": "de", "format": "pdf"}"#,
            400,
            "format",
        ),
        (br#"{"q": 7, "target": "de"}"#, 400, "Invalid request"),
        (br#"{"q": "Hi.", "target": "de""#, 400, "Invalid request"),
        (
            b"{\"q\": \"\xff\xfe\", \"target\": \"de\"}",
            400,
            "Invalid request",
        ),
        (
            br#"{"q": "Hi.", "target": "de", "alternatives": 9}"#,
            400,
            "alternatives",
        ),
        (
            br#"{"q": "A man is riding a bicycle down a long road.", "target": "de"}"#,
            400,
            "exceeds text limit (40)",
        ),
    ];
    for (body, status, needle) in cases {
        let r = request(a, "POST", "/translate", "application/json", body);
        let shown = String::from_utf8_lossy(body);
        assert_eq!(r.status, status, "{shown}");
        assert!(r.error().contains(needle), "{shown}: {}", r.error());
    }
    let big = vec![b'a'; 2000];
    assert_eq!(
        request(a, "POST", "/translate", "application/json", &big).status,
        413
    );
    assert_eq!(get(a, "/no-such-route").status, 404);
    // The server is still up and well.
    let r = post_json(
        a,
        "/translate",
        &json!({"q": "A dog runs.", "target": "de"}),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn a_key_is_required_when_one_is_set() {
    let limits = Limits {
        api_key: Some("s3cret".into()),
        ..Limits::default()
    };
    let server = Server::start(PoolOptions::default(), limits);
    let a = server.address;
    let r = post_json(
        a,
        "/translate",
        &json!({"q": "A dog runs.", "target": "de"}),
    );
    assert_eq!((r.status, r.error().as_str()), (403, "Invalid API key"));
    let r = post_json(
        a,
        "/translate",
        &json!({"q": "A dog.", "target": "de", "api_key": "nope"}),
    );
    assert_eq!(r.status, 403);
    let r = post_json(
        a,
        "/translate",
        &json!({"q": "A dog.", "target": "de", "api_key": "s3cret"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(get(a, "/frontend/settings").json()["keyRequired"], true);
}

#[test]
fn a_full_queue_says_retry_and_a_slow_request_times_out() {
    let full = Server::start(
        PoolOptions {
            max_queued_lines: 2,
            ..PoolOptions::default()
        },
        Limits::default(),
    );
    let r = post_json(
        full.address,
        "/translate",
        &json!({"q": ["One.", "Two.", "Three."], "target": "de"}),
    );
    assert_eq!(r.status, 503);
    assert!(r.headers.contains("retry-after: 1"), "{}", r.headers);
    assert!(r.error().contains("queue is full"), "{}", r.error());

    let slow = Server::start(
        PoolOptions::default(),
        Limits {
            timeout: Duration::from_millis(1),
            ..Limits::default()
        },
    );
    let many: Vec<String> = (0..100)
        .map(|i| format!("A man with {i} dogs walks down a street."))
        .collect();
    let r = post_json(
        slow.address,
        "/translate",
        &json!({"q": many, "target": "de"}),
    );
    assert_eq!(r.status, 504);
    assert!(r.error().contains("longer than"), "{}", r.error());
}

#[test]
fn concurrent_requests_share_batches_and_translate_as_alone() {
    let server = Server::start(
        PoolOptions {
            batch_wait: Duration::from_millis(100),
            ..PoolOptions::default()
        },
        Limits::default(),
    );
    let lines = [
        "A man is riding a bicycle.",
        "Two dogs play in the snow.",
        "A woman sings on a stage.",
        "Children are playing soccer in a park.",
        "A dog runs.",
        "An old man reads a newspaper on a bench.",
        "A girl in a red dress.",
        "People walk down a busy street.",
    ];
    let start = Arc::new(Barrier::new(lines.len()));
    let address = server.address;
    let threads: Vec<_> = lines
        .iter()
        .map(|&line| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let r = post_json(address, "/translate", &json!({"q": line, "target": "de"}));
                assert_eq!(r.status, 200);
                r.json()["translatedText"].as_str().unwrap().to_string()
            })
        })
        .collect();
    let got: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (line, text) in lines.iter().zip(&got) {
        assert_eq!(text, &alone(line), "{line}");
    }
    use std::sync::atomic::Ordering::SeqCst;
    let stats = server.pool.stats();
    assert_eq!(stats.lines.load(SeqCst), lines.len());
    let batches = stats.batches.load(SeqCst);
    assert!(
        batches < lines.len(),
        "{batches} translate calls for {} requests",
        lines.len()
    );
}

#[test]
fn shutdown_answers_the_requests_in_flight_first() {
    let mut server = Server::start(
        PoolOptions {
            batch_wait: Duration::from_millis(500),
            ..PoolOptions::default()
        },
        Limits::default(),
    );
    let address = server.address;
    let client = std::thread::spawn(move || {
        post_json(
            address,
            "/translate",
            &json!({"q": "A dog runs.", "target": "de"}),
        )
    });
    // The request is in the pool's batching wait when the server is told to stop.
    use std::sync::atomic::Ordering::SeqCst;
    let queued = || server.pool.stats().queued_lines.load(SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while queued() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(queued(), 1, "the request never reached the pool");
    server.shut_down().unwrap();
    let r = client.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["translatedText"], alone("A dog runs."));
    assert!(
        TcpStream::connect(address).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn auto_and_detect_choose_among_the_served_source_languages() {
    let server = Server::serving(
        &[("en", "de"), ("fr", "de")],
        PoolOptions::default(),
        Limits::default(),
    );
    let a = server.address;
    let french = "Un homme fait du vélo dans la rue avec son chien.";
    let r = post_json(a, "/detect", &json!({"q": french}));
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v[0]["language"], "fr");
    assert!(v[0]["confidence"].as_f64().unwrap() > 0.0);
    let r = post_json(
        a,
        "/translate",
        &json!({"q": "A man is riding a bicycle down the street.", "source": "auto", "target": "de"}),
    );
    assert_eq!(r.json()["detectedLanguage"]["language"], "en");
    let r = post_json(
        a,
        "/translate",
        &json!({"q": french, "source": "auto", "target": "de"}),
    );
    assert_eq!(r.json()["detectedLanguage"]["language"], "fr");
    let langs = get(a, "/languages").json();
    assert_eq!(
        langs[1],
        json!({"code": "fr", "name": "French", "targets": ["de"]})
    );
    let r = post_json(a, "/detect", &json!({"text": french}));
    assert_eq!(r.status, 400);
    assert!(r.error().contains("missing q"), "{}", r.error());
}

#[test]
fn metrics_count_requests_latency_and_translation_work() {
    let server = Server::default();
    let a = server.address;
    let r = post_json(
        a,
        "/translate",
        &json!({"q": ["A dog runs.", "A cat sleeps."], "target": "de"}),
    );
    assert_eq!(r.status, 200);
    let bad = post_json(a, "/translate", &json!({"target": "de"}));
    assert_eq!(bad.status, 400);
    let r = get(a, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .contains("content-type: application/openmetrics-text"),
        "{}",
        r.headers
    );
    let text = String::from_utf8(r.body).unwrap();
    for line in [
        r#"gnmt_http_requests_total{route="/translate",status="200"} 1"#,
        r#"gnmt_http_requests_total{route="/translate",status="400"} 1"#,
        r#"gnmt_http_request_duration_seconds_count{route="/translate"} 2"#,
        r#"gnmt_translated_lines_total{pair="en-de"} 2"#,
        r#"gnmt_queued_lines{pair="en-de"} 0"#,
        r#"gnmt_batch_lines_count{pair="en-de"} 1"#,
        r#"gnmt_abandoned_requests_total{pair="en-de"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
    }
    let tokens = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"gnmt_target_tokens_total{pair="en-de"} "#))
        .unwrap_or_else(|| panic!("no target tokens in:\n{text}"));
    assert!(tokens.parse::<u64>().unwrap() >= 4, "{tokens}");
}

#[test]
fn the_page_and_the_attention_it_draws_are_served() {
    let server = Server::default();
    let r = get(server.address, "/");
    assert_eq!(r.status, 200);
    assert!(
        r.headers.contains("content-type: text/html"),
        "{}",
        r.headers
    );
    let html = String::from_utf8(r.body).unwrap();
    assert!(html.contains(r#"<form id="form">"#) && html.contains("v1/translate"));

    let r = post_json(
        server.address,
        "/v1/translate",
        &json!({"lines": ["A man is riding a bicycle."], "source": "en", "target": "de",
                "attention": true}),
    );
    assert_eq!(r.status, 200);
    let t = &r.json()["translations"][0];
    let source = t["source_pieces"].as_array().unwrap();
    assert_eq!(source.last().unwrap(), "</s>");
    assert_eq!(
        source.len(),
        t["source_tokens"].as_u64().unwrap() as usize + 1
    );
    let best = &t["nbest"][0];
    let rows = best["attention"].as_array().unwrap();
    assert_eq!(rows.len(), best["pieces"].as_array().unwrap().len());
    for row in rows {
        let row: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_f64().unwrap())
            .collect();
        assert_eq!(row.len(), source.len());
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{row:?}");
    }
    // Without asking, no attention is sent.
    let r = post_json(
        server.address,
        "/v1/translate",
        &json!({"lines": ["A dog."], "source": "en", "target": "de"}),
    );
    assert!(r.json()["translations"][0].get("source_pieces").is_none());
}
