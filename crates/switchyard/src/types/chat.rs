//! The canonical chat and embeddings requests every layer works on.
//!
//! They follow OpenAI's Chat Completions schema, the gateway's lingua franca: the
//! OpenAI ingress parses into them directly, the Anthropic ingress translates into
//! them, and each provider translates from them. Keeping them in OpenAI's shape means
//! a request for an OpenAI-style upstream is forwarded without a second copy; every
//! level keeps the fields it does not know in `extra`, so nothing is lost.
//!
//! They derive serde because they are also the body forwarded to OpenAI-style
//! upstreams. Validation that names an ingress `param` lives with the ingress
//! (`api::wire`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Messages,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Everything else (temperature, seed, logprobs, metadata…), forwarded as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// Reasoning state the client sent back inside tool-call ids, taken off them
    /// before any upstream sees the request (see `types::reasoning`).
    #[serde(skip)]
    pub carried: Option<std::sync::Arc<super::reasoning::Carried>>,
}

/// A request's messages, and while nothing has changed them, the client's own JSON of
/// them: an OpenAI-style upstream is then sent those bytes as they came instead of a
/// re-encoding (which, for a long conversation, costs more than everything else the
/// gateway does with the request). Any mutable access drops the client's bytes, so
/// a redaction, a channel's system prompt or a taken reasoning state is always sent.
#[derive(Debug, Clone, Default)]
pub struct Messages {
    list: Vec<ChatMessage>,
    raw: Option<Box<serde_json::value::RawValue>>,
}

/// Bodies smaller than this are re-encoded: finding the messages' bytes costs more
/// than it saves on a short request.
pub const KEEP_RAW_MESSAGES_FROM: usize = 2048;

impl Messages {
    /// Keeps the `messages` JSON of `body` (the request these messages were parsed
    /// from) when the body is large enough for it to pay.
    pub fn keep_raw_from(&mut self, body: &[u8]) {
        #[derive(Deserialize)]
        struct Span<'a> {
            #[serde(borrow)]
            messages: &'a serde_json::value::RawValue,
        }
        if body.len() < KEEP_RAW_MESSAGES_FROM {
            return;
        }
        self.raw = serde_json::from_slice::<Span<'_>>(body)
            .ok()
            .map(|s| s.messages.to_owned());
    }

    /// Whether the client's bytes will be sent (nothing changed the messages).
    pub fn is_raw(&self) -> bool {
        self.raw.is_some()
    }

    /// The length of the client's bytes that will be sent (0 when re-encoded): most of
    /// a long request's encoded length, known before it is written.
    pub fn raw_len(&self) -> usize {
        self.raw.as_ref().map_or(0, |r| r.get().len())
    }
}

impl From<Vec<ChatMessage>> for Messages {
    fn from(list: Vec<ChatMessage>) -> Messages {
        Messages { list, raw: None }
    }
}

impl std::ops::Deref for Messages {
    type Target = Vec<ChatMessage>;
    fn deref(&self) -> &Vec<ChatMessage> {
        &self.list
    }
}

impl std::ops::DerefMut for Messages {
    fn deref_mut(&mut self) -> &mut Vec<ChatMessage> {
        self.raw = None;
        &mut self.list
    }
}

impl<'a> IntoIterator for &'a Messages {
    type Item = &'a ChatMessage;
    type IntoIter = std::slice::Iter<'a, ChatMessage>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

impl<'a> IntoIterator for &'a mut Messages {
    type Item = &'a mut ChatMessage;
    type IntoIter = std::slice::IterMut<'a, ChatMessage>;
    fn into_iter(self) -> Self::IntoIter {
        self.raw = None;
        self.list.iter_mut()
    }
}

impl Serialize for Messages {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.raw {
            Some(raw) => raw.serialize(s),
            None => self.list.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Messages, D::Error> {
        Vec::<ChatMessage>::deserialize(d).map(Messages::from)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// A message of `role` with `content` and nothing else.
    pub fn new(role: Role, content: MessageContent) -> Self {
        ChatMessage {
            role,
            content: Some(content),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: Map::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// By hand rather than `#[serde(untagged)]`: an untagged enum first copies the whole
/// value into serde's intermediate tree (every part of a multi-part message, a text
/// with escapes) and then tries each variant on the copy; its error names neither
/// what was expected nor, inside the parts, where.
impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MessageContent, D::Error> {
        d.deserialize_any(TextOrList {
            expected: "a string or an array of content parts",
            text: MessageContent::Text,
            list: MessageContent::Parts,
        })
    }
}

/// Visits a string as `text` and an array as `list` of `T`s; anything else is an
/// error saying `expected`.
struct TextOrList<T, V> {
    expected: &'static str,
    text: fn(String) -> V,
    list: fn(Vec<T>) -> V,
}

impl<'de, T: Deserialize<'de>, V> serde::de::Visitor<'de> for TextOrList<T, V> {
    type Value = V;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.expected)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<V, E> {
        Ok((self.text)(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<V, E> {
        Ok((self.text)(v))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<V, A::Error> {
        Vec::<T>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(self.list)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<ImageUrl>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON document encoded as a string, as OpenAI sends it.
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDef>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<JsonSchemaFormat>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Stop, D::Error> {
        d.deserialize_any(TextOrList {
            expected: "a string or an array of strings",
            text: Stop::One,
            list: Stop::Many,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request whose messages, spelt with odd spacing and a `null` field, are
    /// `pad` bytes long or more.
    fn body(pad: usize) -> (Vec<u8>, String) {
        let messages = format!(
            r#"[ {{"role":"system","content":"be brief","name":null}},
  {{"role" : "user", "content": "{}"}} ]"#,
            "a".repeat(pad)
        );
        let body = format!(r#"{{"model":"m","messages":{messages},"temperature":0}}"#);
        (body.into_bytes(), messages)
    }

    #[test]
    fn a_long_requests_messages_are_sent_as_the_client_wrote_them() {
        let (bytes, messages) = body(KEEP_RAW_MESSAGES_FROM);
        let mut req: ChatRequest = serde_json::from_slice(&bytes).expect("request");
        req.messages.keep_raw_from(&bytes);
        assert!(req.messages.is_raw());
        assert_eq!(req.messages.raw_len(), messages.len());
        req.model = "upstream-model".into();
        let out = String::from_utf8(serde_json::to_vec(&req).expect("json")).expect("utf-8");
        assert!(out.contains(&messages), "{out}");
        assert!(out.starts_with(r#"{"model":"upstream-model","messages":[ {"role""#));
        // Reading does not drop the bytes; any mutable access does, and the typed
        // messages are sent (here without the `null`).
        assert_eq!(req.messages.len(), 2);
        assert_eq!(req.messages.iter().count(), 2);
        assert!(req.messages.is_raw());
        if let Some(m) = req.messages.first_mut() {
            m.content = Some(MessageContent::Text("changed".into()));
        }
        assert!(!req.messages.is_raw());
        let out = String::from_utf8(serde_json::to_vec(&req).expect("json")).expect("utf-8");
        assert!(out.contains(r#""content":"changed""#), "{out}");
        assert!(!out.contains("null"), "{out}");
        // `for m in &mut messages` drops them too, changed or not.
        req.messages.keep_raw_from(&bytes);
        for _ in &mut req.messages {}
        assert!(!req.messages.is_raw());
        // A clone keeps them; a cache key's value of both forms reads the same text.
        req.messages.keep_raw_from(&bytes);
        let copy = req.clone();
        assert!(copy.messages.is_raw());
        let v = serde_json::to_value(&copy).expect("value");
        assert_eq!(
            v["messages"][1]["content"].as_str().map(str::len),
            Some(KEEP_RAW_MESSAGES_FROM)
        );
    }

    #[test]
    fn a_short_request_or_a_body_without_messages_is_re_encoded() {
        let (bytes, _) = body(10);
        let mut req: ChatRequest = serde_json::from_slice(&bytes).expect("request");
        req.messages.keep_raw_from(&bytes);
        assert!(!req.messages.is_raw());
        assert_eq!(req.messages.raw_len(), 0);
        let mut other = Messages::default();
        other.keep_raw_from(&[b' '; KEEP_RAW_MESSAGES_FROM]);
        assert!(!other.is_raw());
    }
}
