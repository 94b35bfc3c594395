//! Embeddings over HTTP.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::start;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("float array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[tokio::test]
async fn float_embeddings() {
    let env = start().await;
    let got = env
        .post(
            "/v1/embeddings",
            &json!({"model": "text-embedding-3-small", "input": ["first", "second"]}),
        )
        .await;
    assert_eq!(got.status, 200);
    let body = got.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let v = floats(&d["embedding"]);
        assert_eq!(v.len(), 256);
        assert!((norm(&v) - 1.0).abs() < 1e-3);
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    // ceil(5/4) + ceil(6/4) = 4
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "total_tokens": 4})
    );

    // Same input → same vector, whatever else is in the batch.
    let again = env
        .post(
            "/v1/embeddings",
            &json!({"model": "text-embedding-3-small", "input": "second"}),
        )
        .await
        .json();
    assert_eq!(again["data"][0]["embedding"], data[1]["embedding"]);

    let sized = env
        .post(
            "/v1/embeddings",
            &json!({"model": "m", "input": [[1, 2, 3], [4]], "dimensions": 8}),
        )
        .await
        .json();
    assert_eq!(floats(&sized["data"][1]["embedding"]).len(), 8);
    assert_eq!(sized["usage"]["prompt_tokens"], 4);
    let tokens = env
        .post("/v1/embeddings", &json!({"model": "m", "input": [5, 6, 7]}))
        .await
        .json();
    assert_eq!(tokens["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn base64_embeddings_decode_to_the_float_ones() {
    let env = start().await;
    let float = env
        .post(
            "/v1/embeddings",
            &json!({"model": "m", "input": "hello", "dimensions": 32}),
        )
        .await
        .json();
    let b64 = env
        .post(
            "/v1/embeddings",
            &json!({"model": "m", "input": "hello", "dimensions": 32, "encoding_format": "base64"}),
        )
        .await
        .json();
    let text = b64["data"][0]["embedding"].as_str().expect("base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("standard base64");
    assert_eq!(bytes.len(), 32 * 4);
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, floats(&float["data"][0]["embedding"]));
}

#[tokio::test]
async fn embedding_validation() {
    let env = start().await;
    for body in [
        json!({"model": "m", "input": ""}),
        json!({"model": "m", "input": []}),
        json!({"model": "m"}),
        json!({"model": "m", "input": "x", "encoding_format": "hex"}),
        json!({"model": "m", "input": "x", "dimensions": 0}),
        json!({"input": "x"}),
    ] {
        let got = env.post("/v1/embeddings", &body).await;
        assert_eq!(got.status, 400, "{body}");
        let e = got.json();
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(e["error"]["param"].is_string(), "{e}");
    }
}
