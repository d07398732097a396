//! The Presidio-compatible HTTP API, exercised over real HTTP on loopback with reqwest, the way
//! Presidio clients call it.

use std::sync::Arc;

use serde_json::{json, Value};
use ztee_dlp::http::{router, DlpState};
use ztee_dlp::{KeyedHasher, Scanner, ScannerConfig};

async fn serve() -> String {
    let scanner = Scanner::new(ScannerConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut state = DlpState::new(Arc::new(scanner));
    state.hash_key =
        Some(KeyedHasher::new(b"test-hash-key-0123456789").unwrap_or_else(|e| panic!("{e}")));
    state.max_body = 64 * 1024;
    let app = router(Arc::new(state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

async fn post(base: &str, path: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status().as_u16();
    let value = resp
        .json::<Value>()
        .await
        .unwrap_or_else(|e| panic!("{path} body: {e}"));
    (status, value)
}

#[tokio::test]
async fn analyze_returns_presidio_shaped_results() {
    let base = serve().await;
    let text = "Héllo, my card is 4111 1111 1111 1111 and email a@b.io";
    let (status, body) = post(
        &base,
        "/analyze",
        &json!({"text": text, "language": "en"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let results = body
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {body}"));
    let card = results
        .iter()
        .find(|r| r["entity_type"] == "CREDIT_CARD")
        .unwrap_or_else(|| panic!("{body}"));
    // Character offsets (Presidio's convention), not bytes: "é" is one character.
    assert_eq!(card["start"], 18);
    assert_eq!(card["end"], 37);
    assert_eq!(card["score"], 1.0);
    assert_eq!(
        card["recognition_metadata"]["recognizer_name"],
        "credit_card.luhn"
    );
    assert!(card.get("analysis_explanation").is_some());

    let (_, only_email) = post(
        &base,
        "/analyze",
        &json!({"text": text, "language": "en", "entities": ["EMAIL_ADDRESS"], "score_threshold": 0.5})
            .to_string(),
    )
    .await;
    let types: Vec<&Value> = only_email
        .as_array()
        .map(|a| a.iter().map(|r| &r["entity_type"]).collect())
        .unwrap_or_default();
    assert_eq!(types, vec![&json!("EMAIL_ADDRESS")]);

    let (_, allowed) = post(
        &base,
        "/analyze",
        &json!({"text": "mail a@b.io", "language": "en", "allow_list": ["a@b.io"]}).to_string(),
    )
    .await;
    assert_eq!(allowed, json!([]));
}

#[tokio::test]
async fn analyze_then_anonymize_round_trip() {
    let base = serve().await;
    let text = "pay 4111-1111-1111-1111 from a@b.io";
    let (_, results) = post(
        &base,
        "/analyze",
        &json!({"text": text, "language": "en"}).to_string(),
    )
    .await;
    let (status, body) = post(
        &base,
        "/anonymize",
        &json!({
            "text": text,
            "analyzer_results": results,
            "anonymizers": {
                "DEFAULT": {"type": "replace", "new_value": "<X>"},
                "CREDIT_CARD": {"type": "mask", "mode": "pci"}
            }
        })
        .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text"], "pay 4111-1111-****-1111 from <X>");
    assert_eq!(body["items"][0]["operator"], "mask");

    // Presidio's mask parameters, keyed hash and encrypt/deanonymize.
    let (_, masked) = post(
        &base,
        "/anonymize",
        &json!({"text": text, "analyzer_results": results,
                "anonymizers": {"DEFAULT": {"type": "mask", "masking_char": "#", "chars_to_mask": 4, "from_end": true}}})
        .to_string(),
    )
    .await;
    assert_eq!(masked["text"], "pay 4111-1111-1111-#### from a@####");
    let (_, hashed) = post(
        &base,
        "/anonymize",
        &json!({"text": text, "analyzer_results": results,
                "anonymizers": {"DEFAULT": {"type": "hash", "hash_type": "sha256"}}})
        .to_string(),
    )
    .await;
    let expected = KeyedHasher::new(b"test-hash-key-0123456789")
        .unwrap_or_else(|e| panic!("{e}"))
        .hash_pan("4111111111111111");
    assert!(
        hashed["text"]
            .as_str()
            .is_some_and(|t| t.contains(&expected)),
        "{hashed}"
    );
    let key = "WmZq4t7w!z%C&F)J";
    let (_, encrypted) = post(
        &base,
        "/anonymize",
        &json!({"text": text, "analyzer_results": results,
                "anonymizers": {"DEFAULT": {"type": "encrypt", "key": key}}})
        .to_string(),
    )
    .await;
    let enc_text = encrypted["text"].as_str().unwrap_or_default().to_string();
    assert!(!enc_text.contains("4111"));
    let items: Vec<Value> = encrypted["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|i| json!({"start": i["start"], "end": i["end"], "entity_type": i["entity_type"]}))
        .collect();
    let (status, decrypted) = post(
        &base,
        "/deanonymize",
        &json!({"text": enc_text, "anonymizer_results": items,
                "deanonymizers": {"DEFAULT": {"type": "decrypt", "key": key}}})
        .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{decrypted}");
    assert_eq!(decrypted["text"], text);
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let base = serve().await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("/analyze", "{\"text\": \"x\", \"language\": ".to_string(), "line 1, column"),
        ("/analyze", json!({"language": "en"}).to_string(), "missing field `text`"),
        (
            "/analyze",
            json!({"text": "x", "language": "en", "entities": ["NOT_A_THING"]}).to_string(),
            "unknown entity type `NOT_A_THING`",
        ),
        (
            "/analyze",
            json!({"text": "x", "language": "en", "score_threshold": 3}).to_string(),
            "outside [0, 1]",
        ),
        (
            "/anonymize",
            json!({"text": "abc", "analyzer_results": [{"start": 1, "end": 9, "entity_type": "CREDIT_CARD", "score": 1.0}]})
                .to_string(),
            "analyzer_results[0]",
        ),
        (
            "/anonymize",
            json!({"text": "abc", "analyzer_results": [], "anonymizers": {"DEFAULT": {"type": "shred"}}})
                .to_string(),
            "unknown operator type `shred`",
        ),
        (
            "/anonymize",
            json!({"text": "abc", "analyzer_results": [], "anonymizers": {"DEFAULT": {"type": "hash", "hash_type": "md5"}}})
                .to_string(),
            "hash_type `md5`",
        ),
        (
            "/anonymize",
            json!({"text": "abc", "analyzer_results": [], "anonymizers": {"DEFAULT": {"type": "encrypt", "key": "short"}}})
                .to_string(),
            "16 or 32",
        ),
    ];
    for (path, body, expected) in cases {
        let (status, resp) = post(&base, path, &body).await;
        assert_eq!(status, 400, "{path} {body}: {resp}");
        let msg = resp["error"].as_str().unwrap_or_default();
        assert!(msg.contains(expected), "{path}: {msg:?} lacks {expected:?}");
    }
    // Over the body limit: refused with a 413 and a JSON error, not processed.
    let big = json!({"text": "x".repeat(100_000), "language": "en"}).to_string();
    let (status, resp) = post(&base, "/analyze", &big).await;
    assert_eq!(status, 413);
    assert!(
        resp["error"]
            .as_str()
            .is_some_and(|m| m.contains("length limit")),
        "{resp}"
    );
}

#[tokio::test]
async fn supported_entities_and_health() {
    let base = serve().await;
    let entities: Vec<String> = reqwest::get(format!("{base}/supportedentities?language=en"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for e in [
        "CREDIT_CARD",
        "CARD_TRACK_DATA",
        "IBAN_CODE",
        "US_SSN",
        "SECRET",
    ] {
        assert!(entities.iter().any(|x| x == e), "{e}");
    }
    let health = reqwest::get(format!("{base}/health"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(health.status().as_u16(), 200);
}
