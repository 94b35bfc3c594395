//! Shadow evaluation (`[models.NAME.shadow]`): a sample of a model's chat requests is
//! sent again, to a candidate deployment, once the client's answer is complete (a
//! plain answer returned, a stream relayed to its end), and the two are compared and
//! recorded. The mirror is always a plain call; a streamed client answer is not kept,
//! so only a plain one is compared for agreement.
//!
//! The mirror never touches the client: it starts on its own task after the client's
//! answer is in hand, and whatever it meets (an error, a timeout, a full budget) ends
//! only in its own ledger row (`kind = 'shadow'`, `shadow_of` the client's request,
//! `agreement`). It goes only where the caller's data may go (the candidate must meet
//! the caller's regions and tags, and be able to do what the request needs), it counts
//! in no caller's budget, and it stays within the model's daily `budget_usd`.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::chat::{estimate, settle_usage, settle_whole};
use super::error::ApiError;
use super::wire::ChatRequest;
use super::{new_request_id, Generation};
use crate::config::{Constraints, LogicalModel, Shadow};
use crate::contracts::ShadowHold;
use crate::dispatch::{Job, Opened, Rendered};
use crate::ledger::tracker::RequestTracker;
use crate::providers::{adapter, Endpoint};
use crate::routing::{self, Needs};
use crate::types::chat::EmbeddingsRequest;
use crate::types::time::now_ms;

/// A mirror decided on (sampled, allowed, its budget held), waiting for the client's
/// answer to complete. Dropped without [`Mirror::start`] (a stream that broke, a
/// client that went away), it gives its budget hold back and sends nothing.
pub(super) struct Mirror {
    run: Run,
    row: Row,
    hold: ShadowHold,
}

impl Mirror {
    /// Sends the mirror on its own task. `primary` is the client's whole answer when
    /// there is one to compare with (a streamed answer is not kept: no agreement).
    pub(super) fn start(self, primary: Option<Bytes>) {
        let Mirror { mut run, row, hold } = self;
        run.primary = primary;
        let mut tracker = row.tracker(&run.state, Endpoint::ChatCompletions);
        if let Some(prompt) = row.prompt.clone() {
            tracker.log_content(prompt);
        }
        run.row = Some(row);
        tokio::spawn(async move {
            let cost = run.call(tracker).await;
            hold.settle(cost);
        });
    }
}

/// A mirror of the request to the model's shadow candidate when the model has one,
/// the sample draws it, the caller's data policy allows the candidate and the day's
/// shadow budget has room.
pub(super) fn prepare(
    state: &Arc<Generation>,
    model: &LogicalModel,
    req: &ChatRequest,
    caller: &Constraints,
    needs: Needs,
    tracker: &RequestTracker,
) -> Option<Mirror> {
    let shadow = model.shadow.clone()?;
    if shadow.sample_rate <= 0.0
        || (shadow.sample_rate < 1.0 && !rand::random_bool(shadow.sample_rate))
    {
        return None;
    }
    let d = &shadow.candidate;
    let allowed = routing::satisfies(d, &routing::combine(&model.constraints, caller))
        .and_then(|()| routing::capable(d, &needs));
    if let Err(why) = allowed {
        tracing::debug!(model = %model.name, candidate = %d.name, %why, "not mirrored");
        return None;
    }
    let bound = d.effective_price.cost(&needs.expected_usage());
    let Some(hold) = state.dispatcher.shadow_budgets.reserve(
        &model.name,
        bound,
        shadow.budget_nano_usd_per_day,
        now_ms(),
    ) else {
        tracing::debug!(model = %model.name, "not mirrored: the day's shadow budget is spent");
        return None;
    };
    // The mirror's own row is begun only when it starts: a tracker dropped unfinished
    // would record a failed request.
    let (key_id, key_name, team) = tracker.caller();
    let row = Row {
        of: tracker.request_id().to_owned(),
        key: key_id
            .zip(key_name)
            .map(|(i, n)| (i.to_owned(), n.to_owned())),
        team: team.map(str::to_owned),
        model: model.name.clone(),
        prompt: tracker.logged_prompt().map(str::to_owned),
    };
    let json_output = req
        .response_format
        .as_ref()
        .is_some_and(|f| f.kind == "json_object" || f.kind == "json_schema");
    // The mirror is a plain call, whatever the client asked for.
    let mut plain = req.clone();
    plain.stream = None;
    plain.stream_options = None;
    let run = Run {
        state: state.clone(),
        shadow,
        req: plain,
        caller: caller.clone(),
        needs,
        primary: None,
        json_output,
        row: None,
    };
    Some(Mirror { run, row, hold })
}

/// What the mirror's ledger rows take from the client's.
#[derive(Clone)]
struct Row {
    of: String,
    /// The key's id and name.
    key: Option<(String, String)>,
    team: Option<String>,
    model: String,
    /// The prompt, when the caller's policy keeps content.
    prompt: Option<String>,
}

impl Row {
    /// A shadow row of `endpoint` for the client's request.
    fn tracker(&self, state: &Generation, endpoint: Endpoint) -> RequestTracker {
        let mut tracker =
            RequestTracker::new(state.ledger.clone(), new_request_id(), endpoint.label());
        if let Some((id, name)) = &self.key {
            tracker.set_key(id, name);
        }
        tracker.set_team(self.team.as_deref());
        tracker.set_model(&self.model, false);
        tracker.set_shadow_of(&self.of);
        tracker
    }
}

/// One mirrored call.
struct Run {
    state: Arc<Generation>,
    shadow: Arc<Shadow>,
    req: ChatRequest,
    caller: Constraints,
    needs: Needs,
    /// The client's whole answer, when there is one to compare with.
    primary: Option<Bytes>,
    json_output: bool,
    /// What the shadow rows take from the client's (set when the mirror starts).
    row: Option<Row>,
}

impl Run {
    /// Calls the candidate, compares, finishes the shadow row; returns what the call
    /// cost.
    async fn call(mut self, mut tracker: RequestTracker) -> i64 {
        let model = self.shadow.model.clone();
        let job = Job {
            model: &model,
            endpoint: Endpoint::ChatCompletions,
            stream: false,
            needs: self.needs,
            caller: &self.caller,
            affinity: None,
            ttft_slo: None,
        };
        let req = &mut self.req;
        let served = self
            .state
            .dispatcher
            .dispatch(job, &mut tracker, |d| {
                adapter(&d.provider.kind)
                    .chat_body(req, d, false)
                    .map(Rendered::from)
            })
            .await;
        let outcome = match served {
            Err(e) => Err(ApiError::from(e)),
            Ok(served) => match served.opened {
                Opened::Full { body, usage } => {
                    let (body, usage) = settle_whole(
                        &mut tracker,
                        served.attempt,
                        &served.deployment,
                        served.attempt_started,
                        served.capacity,
                        (body, usage),
                        self.needs.prompt_tokens,
                    );
                    let cost = served.deployment.effective_price.cost(&usage);
                    tracker.answered();
                    let mut similarity_cost = 0;
                    if let Some(primary) = self.primary.take() {
                        let score = match compare(&primary, &body, self.json_output) {
                            Some(Compared::Texts(a, b)) => {
                                let (score, spent) = self.text_similarity(&a, &b).await;
                                similarity_cost = spent;
                                Some(score)
                            }
                            Some(Compared::Score(score)) => Some(score),
                            None => None,
                        };
                        tracker.set_agreement(score);
                    }
                    tracker.log_response(&body);
                    Ok(cost.saturating_add(similarity_cost))
                }
                Opened::Stream { .. } => {
                    let usage = estimate(self.needs.prompt_tokens, 0);
                    if let Some(capacity) = served.capacity {
                        capacity.settle(&usage);
                    }
                    Err(ApiError::internal("a plain call produced a stream"))
                }
            },
        };
        match outcome {
            Ok(cost) => {
                tracker.finish(200, None).await;
                cost
            }
            Err(e) => {
                tracker.finish(e.status.as_u16(), Some(e.code)).await;
                0
            }
        }
    }
}

impl Run {
    /// How alike two text answers are, 0 to 1, and what finding out cost: the cosine
    /// similarity of their embeddings when the shadow names an embeddings deployment
    /// and the day's shadow budget has room for that call, else the overlap of their
    /// words (also when the embeddings call fails: said in the log).
    async fn text_similarity(&self, a: &str, b: &str) -> (f64, i64) {
        let overlap = || (word_overlap(a, b), 0);
        let (Some(embeddings), Some(row)) = (&self.shadow.embeddings, &self.row) else {
            return overlap();
        };
        let (d, model) = (&embeddings.deployment, &embeddings.model);
        let input = Value::from(vec![a, b]);
        let needs = Needs::of_embeddings(&input);
        let Some(hold) = self.state.dispatcher.shadow_budgets.reserve(
            &row.model,
            d.effective_price.cost(&needs.expected_usage()),
            self.shadow.budget_nano_usd_per_day,
            now_ms(),
        ) else {
            tracing::debug!(model = %row.model, "text compared by words: the day's shadow budget is spent");
            return overlap();
        };
        let mut tracker = row.tracker(&self.state, Endpoint::Embeddings);
        let job = Job {
            model,
            endpoint: Endpoint::Embeddings,
            stream: false,
            needs,
            caller: &self.caller,
            affinity: None,
            ttft_slo: None,
        };
        let mut req = EmbeddingsRequest {
            model: model.name.clone(),
            input,
            extra: serde_json::Map::new(),
        };
        let served = self
            .state
            .dispatcher
            .dispatch(job, &mut tracker, |d| {
                adapter(&d.provider.kind)
                    .embeddings_body(&mut req, d)
                    .map(Rendered::from)
            })
            .await;
        let found = match served {
            Err(e) => Err(ApiError::from(e)),
            Ok(served) => match served.opened {
                Opened::Full { body, usage } => {
                    let usage = usage.unwrap_or_else(|| estimate(needs.prompt_tokens, 0));
                    settle_usage(
                        &mut tracker,
                        served.attempt,
                        &served.deployment,
                        served.attempt_started,
                        served.capacity,
                        usage,
                    );
                    let cost = served.deployment.effective_price.cost(&usage);
                    match cosine_of_pair(&body) {
                        Some(score) => Ok((score, cost)),
                        None => {
                            tracker.finish(502, Some("bad_embeddings")).await;
                            hold.settle(cost);
                            tracing::warn!(deployment = %d.name, "text compared by words: the embeddings answer holds no two vectors of one length");
                            return (word_overlap(a, b), cost);
                        }
                    }
                }
                Opened::Stream { .. } => {
                    Err(ApiError::internal("an embeddings call produced a stream"))
                }
            },
        };
        match found {
            Ok((score, cost)) => {
                tracker.finish(200, None).await;
                hold.settle(cost);
                (score, cost)
            }
            Err(e) => {
                tracker.finish(e.status.as_u16(), Some(e.code)).await;
                hold.settle(0);
                tracing::warn!(deployment = %d.name, error = %e.message,
                    "text compared by words: the embeddings call failed");
                overlap()
            }
        }
    }
}

/// The cosine similarity of the first two vectors of an OpenAI embeddings answer
/// (`data[0]`, `data[1]` by `index`), clamped to 0..=1 (opposite meanings do not
/// agree less than unrelated ones). `None` unless both are non-empty float vectors of
/// one length.
pub fn cosine_of_pair(body: &[u8]) -> Option<f64> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let data = doc.get("data")?.as_array()?;
    let vector = |i: u64| -> Option<Vec<f64>> {
        let item = data
            .iter()
            .find(|e| e.get("index").and_then(Value::as_u64) == Some(i))?;
        item.get("embedding")?
            .as_array()?
            .iter()
            .map(Value::as_f64)
            .collect()
    };
    let (x, y) = (vector(0)?, vector(1)?);
    if x.is_empty() || x.len() != y.len() {
        return None;
    }
    let dot: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let (nx, ny) = (norm(&x), norm(&y));
    if nx == 0.0 || ny == 0.0 || !dot.is_finite() || !nx.is_finite() || !ny.is_finite() {
        // A zero vector says nothing; equal zero vectors are equal answers.
        return Some(if x == y { 1.0 } else { 0.0 });
    }
    Some((dot / (nx * ny)).clamp(0.0, 1.0))
}

/// What comparing two answers found.
#[derive(Debug, Clone, PartialEq)]
pub enum Compared {
    /// Tool calls or JSON documents: equal (1) or not (0).
    Score(f64),
    /// Two texts, whose similarity is still to be scored.
    Texts(String, String),
}

/// How far two OpenAI `chat.completion` bodies agree, 0 to 1, on their first
/// choice: tool calls agree (1) when they call the same functions in the same order
/// with equal arguments (as JSON); JSON outputs when the documents are equal; text by
/// the overlap of its word sets (|A ∩ B| / |A ∪ B|, case-insensitive). `None` when
/// either is not a completion.
pub fn agreement(a: &[u8], b: &[u8], json_output: bool) -> Option<f64> {
    Some(match compare(a, b, json_output)? {
        Compared::Score(score) => score,
        Compared::Texts(a, b) => word_overlap(&a, &b),
    })
}

/// Compares two OpenAI `chat.completion` bodies' first choices as [`agreement`]
/// does, leaving two texts unscored.
pub fn compare(a: &[u8], b: &[u8], json_output: bool) -> Option<Compared> {
    let a = first_message(a)?;
    let b = first_message(b)?;
    let calls = |m: &Value| -> Vec<(String, Value)> {
        m.get("tool_calls")
            .and_then(Value::as_array)
            .map(|calls| {
                calls
                    .iter()
                    .map(|c| {
                        let f = &c["function"];
                        let name = f["name"].as_str().unwrap_or_default().to_owned();
                        let raw = f["arguments"].as_str().unwrap_or_default();
                        let args = serde_json::from_str(raw)
                            .unwrap_or_else(|_| Value::String(raw.to_owned()));
                        (name, args)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (ca, cb) = (calls(&a), calls(&b));
    if !ca.is_empty() || !cb.is_empty() {
        return Some(Compared::Score(if ca == cb { 1.0 } else { 0.0 }));
    }
    let text = |m: &Value| m["content"].as_str().unwrap_or_default().to_owned();
    let (ta, tb) = (text(&a), text(&b));
    if json_output {
        if let (Ok(ja), Ok(jb)) = (
            serde_json::from_str::<Value>(&ta),
            serde_json::from_str::<Value>(&tb),
        ) {
            return Some(Compared::Score(if ja == jb { 1.0 } else { 0.0 }));
        }
    }
    Some(Compared::Texts(ta, tb))
}

fn first_message(body: &[u8]) -> Option<Value> {
    let mut doc: Value = serde_json::from_slice(body).ok()?;
    let message = doc
        .get_mut("choices")?
        .get_mut(0)?
        .get_mut("message")?
        .take();
    message.is_object().then_some(message)
}

/// |A ∩ B| / |A ∪ B| of the two texts' lowercase words (runs of letters and digits,
/// in any script); 1 for two texts without words.
pub fn word_overlap(a: &str, b: &str) -> f64 {
    let words = |t: &str| -> HashSet<String> {
        t.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let (wa, wb) = (words(a), words(b));
    let union = wa.union(&wb).count();
    if union == 0 {
        return 1.0;
    }
    wa.intersection(&wb).count() as f64 / union as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(message: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "c", "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]
        }))
        .expect("json")
    }

    fn text(t: &str) -> Vec<u8> {
        completion(serde_json::json!({"role": "assistant", "content": t}))
    }

    fn call(name: &str, args: &str) -> Vec<u8> {
        completion(
            serde_json::json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}
            ]}),
        )
    }

    #[test]
    fn text_agrees_by_word_overlap() {
        assert_eq!(
            agreement(
                &text("The train leaves at 9."),
                &text("the TRAIN leaves at 9"),
                false
            ),
            Some(1.0)
        );
        // {the, train, leaves, at, 9} vs {the, train, departs, at, 9}: 4 of 6.
        let s = agreement(
            &text("The train leaves at 9."),
            &text("The train departs at 9."),
            false,
        )
        .expect("compared");
        assert!((s - 4.0 / 6.0).abs() < 1e-12, "{s}");
        assert_eq!(agreement(&text(""), &text(""), false), Some(1.0));
        assert_eq!(agreement(&text("abc"), &text(""), false), Some(0.0));
        // Words in any script, not just ASCII.
        assert_eq!(
            word_overlap("Zürich Hauptbahnhof", "zürich hauptbahnhof!"),
            1.0
        );
        assert_eq!(word_overlap("東京 駅", "東京 駅"), 1.0);
    }

    #[test]
    fn tool_calls_agree_on_names_and_equal_arguments() {
        let a = call("get_weather", r#"{"city": "Paris", "unit": "c"}"#);
        let b = call("get_weather", r#"{"unit":"c","city":"Paris"}"#);
        assert_eq!(
            agreement(&a, &b, false),
            Some(1.0),
            "key order does not matter"
        );
        let c = call("get_weather", r#"{"city": "Lyon", "unit": "c"}"#);
        assert_eq!(agreement(&a, &c, false), Some(0.0));
        assert_eq!(
            agreement(&a, &text("It is sunny in Paris."), false),
            Some(0.0)
        );
        // Arguments that are not JSON compare as text.
        assert_eq!(
            agreement(&call("f", "{oops"), &call("f", "{oops"), false),
            Some(1.0)
        );
    }

    #[test]
    fn json_outputs_agree_when_the_documents_are_equal() {
        let a = text(r#"{"ok": true, "n": 1}"#);
        let b = text(r#"{"n":1,"ok":true}"#);
        assert_eq!(agreement(&a, &b, true), Some(1.0));
        assert_eq!(
            agreement(&a, &text(r#"{"n": 2, "ok": true}"#), true),
            Some(0.0)
        );
        // Not JSON after all: compared as text.
        assert_eq!(agreement(&text("yes"), &text("yes"), true), Some(1.0));
    }

    #[test]
    fn what_is_not_a_completion_is_not_compared() {
        assert_eq!(agreement(b"not json", &text("x"), false), None);
        assert_eq!(
            agreement(br#"{"content":[{"type":"text"}]}"#, &text("x"), false),
            None
        );
        assert_eq!(agreement(br#"{"choices":[]}"#, &text("x"), false), None);
    }

    fn pair(a: Value, b: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"object": "list", "data": [
            {"object": "embedding", "index": 1, "embedding": b},
            {"object": "embedding", "index": 0, "embedding": a},
        ]}))
        .expect("json")
    }

    #[test]
    fn the_cosine_of_a_pair_is_computed_by_index_and_clamped() {
        use serde_json::json;
        let close = |got: Option<f64>, want: f64| {
            let got = got.expect("scored");
            assert!((got - want).abs() < 1e-12, "{got} != {want}");
        };
        // cos = (1·1 + 0·1) / (1 · √2)
        close(
            cosine_of_pair(&pair(json!([1.0, 0.0]), json!([1.0, 1.0]))),
            1.0 / 2f64.sqrt(),
        );
        close(cosine_of_pair(&pair(json!([3, 4]), json!([6, 8]))), 1.0);
        // Opposite vectors do not agree less than unrelated ones.
        close(cosine_of_pair(&pair(json!([1, 0]), json!([-1, 0]))), 0.0);
        close(cosine_of_pair(&pair(json!([0, 0]), json!([0, 0]))), 1.0);
        close(cosine_of_pair(&pair(json!([0, 0]), json!([1, 0]))), 0.0);
        // Huge components overflow the dot product: no NaN, no panic.
        assert!(cosine_of_pair(&pair(json!([1e300, 1e300]), json!([1e300, 1e300]))).is_some());
        for bad in [
            pair(json!([1.0]), json!([1.0, 2.0])),
            pair(json!([]), json!([])),
            pair(json!(["1"]), json!([1.0])),
            pair(json!("AAAA"), json!([1.0])),
            br#"{"data":[{"index":0,"embedding":[1.0]}]}"#.to_vec(),
            b"not json".to_vec(),
        ] {
            assert_eq!(
                cosine_of_pair(&bad),
                None,
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
    }
}
