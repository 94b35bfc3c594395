//! Embeddings: deterministic unit vectors, float or base64.

use std::time::Duration;

use axum::response::Response;
use base64::Engine as _;
use serde_json::{json, Value};

use super::{
    fault_error, field, invalid_type, invalid_value, missing, plain_response, ApiError, Ctx,
};
use crate::generate::{self, derive_seed, text_tokens, Rng};
use crate::FaultKind;

/// Embedding size when the request does not ask for `dimensions`.
pub(crate) const DEFAULT_DIMENSIONS: usize = 256;

/// One embedding input: text or token ids.
enum EmbeddingInput {
    Text(String),
    Tokens(Vec<Value>),
}

fn parse_embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput>, ApiError> {
    let bad = |detail: &str| invalid_value("input", format!("Invalid 'input': {detail}"));
    let Some(input) = input else {
        return Err(missing("input"));
    };
    let token_list = |items: &[Value]| items.iter().all(|t| t.as_u64().is_some());
    match input {
        Value::String(s) if s.is_empty() => Err(bad("the string is empty.")),
        Value::String(s) => Ok(vec![EmbeddingInput::Text(s.clone())]),
        Value::Array(items) if items.is_empty() => Err(bad("the array is empty.")),
        Value::Array(items) if items.len() > 2048 => Err(bad("more than 2048 inputs.")),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .map(|s| match s.as_str() {
                Some(text) if !text.is_empty() => Ok(EmbeddingInput::Text(text.to_string())),
                _ => Err(bad("an input string is empty.")),
            })
            .collect(),
        Value::Array(items) if token_list(items) => Ok(vec![EmbeddingInput::Tokens(items.clone())]),
        Value::Array(items) if items.iter().all(Value::is_array) => items
            .iter()
            .map(|inner| match inner.as_array() {
                Some(tokens) if !tokens.is_empty() && token_list(tokens) => {
                    Ok(EmbeddingInput::Tokens(tokens.clone()))
                }
                _ => Err(bad(
                    "each token list must be a non-empty array of integers.",
                )),
            })
            .collect(),
        _ => Err(bad(
            "expected a string, an array of strings, an array of integers or an array of \
             integer arrays.",
        )),
    }
}

/// A deterministic unit-length vector for one input.
pub(crate) fn embedding_vector(model: &str, input_key: &str, dims: usize) -> Vec<f32> {
    let digest = generate::sha256(format!("{model}\u{0}{dims}\u{0}{input_key}").as_bytes());
    let mut rng = Rng::new(derive_seed(&digest, "embedding", 0));
    let raw: Vec<f64> = (0..dims).map(|_| rng.unit() * 2.0 - 1.0).collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    raw.iter().map(|x| (x / norm) as f32).collect()
}

pub(super) async fn embeddings(ctx: &Ctx, deployment: Option<String>, body: &Value) -> Response {
    let parsed = (|| -> Result<(String, Vec<EmbeddingInput>, usize, bool), ApiError> {
        if !body.is_object() {
            return Err(ApiError::invalid(
                "The request body is not a valid JSON object.",
                None,
                None,
            ));
        }
        let model = match (deployment, field(body, "model")) {
            (Some(d), _) => d,
            (None, Some(Value::String(m))) if !m.is_empty() => m.clone(),
            (None, Some(other)) if !other.is_string() => {
                return Err(invalid_type("model", "a string", other))
            }
            _ => {
                return Err(ApiError::invalid(
                    "You must provide a model parameter.",
                    Some("model"),
                    Some("missing_required_parameter"),
                ))
            }
        };
        let inputs = parse_embedding_inputs(field(body, "input"))?;
        let dims = match field(body, "dimensions") {
            None => DEFAULT_DIMENSIONS,
            Some(v) => match v.as_u64() {
                Some(d @ 1..=8192) => d as usize,
                _ => {
                    return Err(invalid_value(
                        "dimensions",
                        format!("Invalid 'dimensions': {v}. Expected an integer from 1 to 8192."),
                    ))
                }
            },
        };
        let base64 = match field(body, "encoding_format").map(|v| v.as_str()) {
            None | Some(Some("float")) => false,
            Some(Some("base64")) => true,
            Some(_) => {
                return Err(invalid_value(
                    "encoding_format",
                    "Invalid 'encoding_format': expected 'float' or 'base64'.",
                ))
            }
        };
        Ok((model, inputs, dims, base64))
    })();
    let (model, inputs, dims, base64) = match parsed {
        Ok(p) => p,
        Err(e) => return ctx.error(e),
    };
    let (fault, latency) = {
        let mut state = ctx.shared.state();
        (
            state.take_fault(&ctx.instance, &model),
            state.latency(&ctx.instance, &model),
        )
    };
    if let Some(f) = fault.as_ref().filter(|f| f.kind == FaultKind::Error) {
        return ctx.error(fault_error(ctx.dialect, f, &model));
    }
    let mut prompt_tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let (key, tokens) = match input {
                EmbeddingInput::Text(t) => (format!("t:{t}"), text_tokens(t).max(1)),
                EmbeddingInput::Tokens(ids) => {
                    (format!("i:{}", Value::Array(ids.clone())), ids.len() as u64)
                }
            };
            prompt_tokens += tokens;
            let vector = embedding_vector(&model, &key, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
    .to_string();
    let wait = Duration::from_millis(latency.ttft_ms);
    plain_response(ctx, body, wait, fault.as_ref()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_vectors_are_unit_and_deterministic() {
        let a = embedding_vector("m", "t:hello", 64);
        let b = embedding_vector("m", "t:hello", 64);
        let c = embedding_vector("m", "t:world", 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
}
