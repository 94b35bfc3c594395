//! `GET /v1/responses/{id}/input_items`: the input items of a stored response, as
//! OpenAI's `ResponseItemList` (`{"object": "list", "data", "first_id", "last_id",
//! "has_more"}`), paged with `limit`, `order`, `after` and `before`.
//!
//! Which items: the whole context the response was generated from, that is the stored
//! `items` (for a response that continued `previous_response_id`, the earlier turns'
//! input and output items, then this request's input). OpenAI lists it that way too:
//! its API reference says a conversation's items "are prepended to `input_items` for
//! this response request", and a chained response's list holds the earlier turns; it
//! is also what was sent to the model, so what a client auditing a response wants.
//!
//! Every listed item has an `id`, which the cursors name. Items the client sent
//! without one (a plain `{"role": "user", "content": "…"}`, a `function_call_output`)
//! get one derived from the response's id and the item's position, so the same item of
//! the same response has the same id on every call; nothing is written back, since the
//! stored items also go upstream as they came.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::api::error::ApiError;

/// Default and bounds of `limit`, as OpenAI has them.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

/// The query of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: usize,
    /// Newest first (`desc`, the default) or oldest first.
    pub descending: bool,
    pub after: Option<String>,
    pub before: Option<String>,
}

impl ListQuery {
    /// Reads a raw query string; a bad value is a 400 naming its parameter. Unknown
    /// parameters are ignored, and so is `include` (what it would add, such as image
    /// URLs or reasoning content, is already in the stored items).
    pub fn parse(raw: Option<&str>) -> Result<ListQuery, ApiError> {
        let mut q = ListQuery {
            limit: DEFAULT_LIMIT,
            descending: true,
            after: None,
            before: None,
        };
        for (name, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            match &*name {
                "limit" => q.limit = parse_limit(&value)?,
                "order" => {
                    q.descending = match &*value {
                        "desc" => true,
                        "asc" => false,
                        other => {
                            return Err(ApiError::invalid_request(
                                Some("order".into()),
                                format!(
                                "Invalid value: '{other}'. Supported values are: 'asc' and 'desc'."
                            ),
                            ))
                        }
                    }
                }
                // An empty cursor is taken as none, as a client building the query
                // from an unset variable means.
                "after" => q.after = Some(value.into_owned()).filter(|v| !v.is_empty()),
                "before" => q.before = Some(value.into_owned()).filter(|v| !v.is_empty()),
                _ => {}
            }
        }
        Ok(q)
    }
}

fn parse_limit(value: &str) -> Result<usize, ApiError> {
    let bad = |message: String| ApiError::invalid_request(Some("limit".into()), message);
    let n: i64 = value.trim().parse().map_err(|_| {
        bad(format!(
            "Invalid 'limit': expected an integer between 1 and {MAX_LIMIT}, but got '{value}' instead."
        ))
    })?;
    if n < 1 {
        return Err(bad(format!(
            "Invalid 'limit': integer below minimum value. Expected a value >= 1, but got {n} instead."
        )));
    }
    match usize::try_from(n) {
        Ok(n) if n <= MAX_LIMIT => Ok(n),
        _ => Err(bad(format!(
            "Invalid 'limit': integer above maximum value. Expected a value <= {MAX_LIMIT}, but got {n} instead."
        ))),
    }
}

/// The stored items of response `response_id` as they are listed, oldest first: each
/// an object with a `type` and an `id`.
pub fn listed(response_id: &str, items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .enumerate()
        .filter_map(|(at, item)| {
            // Stored items were validated as objects; anything else is skipped rather
            // than shown in a shape no client expects.
            let mut item = item.as_object()?.clone();
            if item.get("type").is_none() && item.get("role").is_some() {
                item.insert("type".into(), json!("message"));
            }
            if item.get("type").and_then(Value::as_str) == Some("message") {
                normalize_content(&mut item);
            }
            let has_id = item
                .get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| !id.is_empty());
            if !has_id {
                let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
                item.insert("id".into(), json!(derived_id(response_id, at, kind)));
            }
            Some(Value::Object(item))
        })
        .collect()
}

/// A message's string content as the list of parts OpenAI lists it as.
fn normalize_content(item: &mut Map<String, Value>) {
    let Some(Value::String(text)) = item.get("content") else {
        return;
    };
    let part = if item.get("role").and_then(Value::as_str) == Some("assistant") {
        json!({"type": "output_text", "text": text, "annotations": []})
    } else {
        json!({"type": "input_text", "text": text})
    };
    item.insert("content".into(), json!([part]));
}

/// The id of the item at position `at` of response `response_id`'s items, when it has
/// none: a digest of both, so it is the same on every call and unique in practice,
/// with the prefix OpenAI gives that type of item.
fn derived_id(response_id: &str, at: usize, kind: &str) -> String {
    let prefix = match kind {
        "message" => "msg",
        "function_call" => "fc",
        "function_call_output" => "fco",
        "reasoning" => "rs",
        _ => "item",
    };
    let digest = Sha256::digest(format!("{response_id}\n{at}").as_bytes());
    let short = digest.get(..16).unwrap_or_default();
    format!("{prefix}_{}", hex::encode(short))
}

/// One page of `items` (oldest first, each with an `id`) as a `ResponseItemList`.
///
/// The items are put in the asked order; `after` keeps those that follow its item in
/// that order, `before` those that precede it. With `before` alone the page is the
/// `limit` items nearest before it (paging back), otherwise the first `limit` after
/// `after`; `has_more` says whether the kept range holds more than the page. A cursor
/// that names no item of the list is a 400 naming it.
pub fn page(mut items: Vec<Value>, q: &ListQuery) -> Result<Value, ApiError> {
    if q.descending {
        items.reverse();
    }
    let position = |cursor: &str, param: &str| {
        items
            .iter()
            .position(|item| item.get("id").and_then(Value::as_str) == Some(cursor))
            .ok_or_else(|| {
                ApiError::invalid_request(
                    Some(param.to_owned()),
                    format!(
                        "Invalid '{param}': no input item of this response has the id '{cursor}'."
                    ),
                )
            })
    };
    let start = match &q.after {
        Some(c) => position(c, "after")?.saturating_add(1),
        None => 0,
    };
    let end = match &q.before {
        Some(c) => position(c, "before")?,
        None => items.len(),
    }
    .max(start);
    let (from, to) = if q.before.is_some() && q.after.is_none() {
        (end.saturating_sub(q.limit).max(start), end)
    } else {
        (start, start.saturating_add(q.limit).min(end))
    };
    let has_more = from > start || to < end;
    let data: Vec<Value> = items.get(from..to).unwrap_or_default().to_vec();
    let id_of = |item: Option<&Value>| item.and_then(|i| i.get("id")).cloned();
    Ok(json!({
        "object": "list",
        "first_id": id_of(data.first()),
        "last_id": id_of(data.last()),
        "has_more": has_more,
        "data": data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                json!({"id": format!("i{i}"), "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": format!("t{i}")}]})
            })
            .collect()
    }

    fn ids(page: &Value) -> Vec<String> {
        page["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_owned())
            .collect()
    }

    fn q(raw: &str) -> ListQuery {
        ListQuery::parse(Some(raw)).expect("valid")
    }

    #[test]
    fn the_query_has_openai_s_defaults_and_bounds() {
        let d = ListQuery::parse(None).expect("empty");
        assert_eq!((d.limit, d.descending), (20, true));
        assert_eq!(q("limit=100&order=asc&include[]=x&foo=1").limit, 100);
        assert!(!q("order=asc").descending);
        assert_eq!(q("after=a%20b").after.as_deref(), Some("a b"));
        assert_eq!(q("before=").before, None);
        for (raw, param) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=-3", "limit"),
            ("limit=ten", "limit"),
            ("limit=99999999999999999999", "limit"),
            ("order=newest", "order"),
        ] {
            let e = ListQuery::parse(Some(raw)).expect_err(raw);
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST, "{raw}");
            assert_eq!(e.param.as_deref(), Some(param), "{raw}");
        }
    }

    #[test]
    fn pages_walk_both_ways_in_both_orders() {
        let all = items(5);
        let p = page(all.clone(), &q("limit=2")).expect("page");
        assert_eq!(ids(&p), ["i4", "i3"]);
        assert_eq!(
            (p["first_id"].clone(), p["has_more"].clone()),
            (json!("i4"), json!(true))
        );
        let p = page(all.clone(), &q("limit=2&after=i3")).expect("page");
        assert_eq!(ids(&p), ["i2", "i1"]);
        let p = page(all.clone(), &q("limit=2&after=i1")).expect("page");
        assert_eq!(
            (ids(&p), p["has_more"].clone()),
            (vec!["i0".to_owned()], json!(false))
        );
        let p = page(all.clone(), &q("limit=2&order=asc&after=i0")).expect("page");
        assert_eq!(
            (ids(&p), p["has_more"].clone()),
            (vec!["i1".to_owned(), "i2".to_owned()], json!(true))
        );
        // Paging back: the items nearest before the cursor, in the asked order.
        let p = page(all.clone(), &q("limit=2&order=asc&before=i4")).expect("page");
        assert_eq!(
            (ids(&p), p["has_more"].clone()),
            (vec!["i2".to_owned(), "i3".to_owned()], json!(true))
        );
        let p = page(all.clone(), &q("limit=2&before=i1")).expect("page");
        assert_eq!(
            (ids(&p), p["has_more"].clone()),
            (vec!["i3".to_owned(), "i2".to_owned()], json!(true))
        );
        let p = page(all.clone(), &q("order=asc&after=i0&before=i3")).expect("page");
        assert_eq!(
            (ids(&p), p["has_more"].clone()),
            (vec!["i1".to_owned(), "i2".to_owned()], json!(false))
        );
        // Crossed cursors keep nothing.
        let p = page(all.clone(), &q("order=asc&after=i3&before=i1")).expect("page");
        assert_eq!(p["data"], json!([]));
        assert_eq!(p["first_id"], Value::Null);
        let e = page(all, &q("after=nope")).expect_err("unknown cursor");
        assert_eq!(e.param.as_deref(), Some("after"));
    }

    #[test]
    fn items_without_ids_get_stable_ones_and_message_parts() {
        let stored = vec![
            json!({"role": "user", "content": "hi"}),
            json!({"type": "function_call_output", "call_id": "c", "output": "18C"}),
            json!({"type": "message", "id": "msg_kept", "role": "assistant",
                "content": [{"type": "output_text", "text": "yo", "annotations": []}]}),
            json!("not an item"),
        ];
        let a = listed("resp_1", &stored);
        assert_eq!(a, listed("resp_1", &stored));
        assert_eq!(a.len(), 3);
        assert_eq!(a[0]["type"], "message");
        assert_eq!(
            a[0]["content"],
            json!([{"type": "input_text", "text": "hi"}])
        );
        let id0 = a[0]["id"].as_str().expect("id");
        assert!(id0.starts_with("msg_") && id0.len() == 36, "{id0}");
        assert!(a[1]["id"].as_str().expect("id").starts_with("fco_"));
        assert_eq!(a[2]["id"], "msg_kept");
        let b = listed("resp_2", &stored);
        assert_ne!(a[0]["id"], b[0]["id"]);
    }
}
