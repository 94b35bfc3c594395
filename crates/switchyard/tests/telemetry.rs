//! Metrics and traces: `/metrics` scraped after real requests through the simulator,
//! and spans exported over OTLP/HTTP to a receiver this test runs on loopback.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use common::{user, Harness, KEY};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};
use switchyard_sim::Fault;
use tokio::net::TcpListener;

const ADMIN: &str = "admin-token-0123456789abcdef";

fn admin_section(telemetry: &str) -> String {
    format!(
        "{}\n[admin]\ntoken = \"{ADMIN}\"\n\n[telemetry]\n{telemetry}\n",
        common::PATIENT_BREAKER
    )
}

async fn scrape(h: &Harness) -> String {
    h.scrape(ADMIN).await
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.parse().ok()
    })
}

async fn usage_of(res: reqwest::Response) -> (u64, u64) {
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("json");
    (
        v["usage"]["prompt_tokens"].as_u64().expect("prompt"),
        v["usage"]["completion_tokens"]
            .as_u64()
            .expect("completion"),
    )
}

#[tokio::test]
async fn metrics_count_requests_attempts_failovers_tokens_and_cost() {
    let mut h = Harness::start_with(&admin_section("")).await;
    let (p1, c1) = usage_of(
        h.chat(json!({"model": "gpt-4o-mini", "messages": user("hi")}))
            .await,
    )
    .await;
    let (p2, c2) = usage_of(
        h.chat(json!({"model": "gpt-4o-mini", "messages": user("hello there")}))
            .await,
    )
    .await;
    h.sim.sim.set_fault("primary", "*", Fault::error(500));
    let (p3, c3) = usage_of(
        h.chat(json!({"model": "failover", "messages": user("hi")}))
            .await,
    )
    .await;
    let res = h
        .chat(json!({"model": "primary-only", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 502);
    let text = scrape(&h).await;

    let ok = r#"{model="gpt-4o-mini",deployment="oa-mini",outcome="success",key="cfg:app"}"#;
    assert_eq!(
        sample(&text, &format!("switchyard_requests_total{ok}")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_requests_total{model="failover",deployment="backup-mini",outcome="success",key="cfg:app"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_requests_total{model="primary-only",deployment="primary-mini",outcome="error",error_type="upstream_error",key="cfg:app"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_attempts_total{model="failover",deployment="primary-mini",provider="oa-primary",outcome="error",error_type="upstream_5xx"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_attempts_total{model="failover",deployment="backup-mini",provider="oa-backup",outcome="success"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_failovers_total{model="failover",deployment="primary-mini",error_type="upstream_5xx"}"#
        ),
        Some(1.0)
    );
    // The request that failed on its only deployment failed over to nothing.
    assert!(!text.contains(r#"switchyard_failovers_total{model="primary-only""#));

    let gen_ai = r#"gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini""#;
    assert_eq!(
        sample(
            &text,
            &format!("gen_ai_client_operation_duration_seconds_count{{{gen_ai}}}")
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("gen_ai_client_token_usage_sum{{{gen_ai},gen_ai_token_type=\"input\"}}")
        ),
        Some((p1 + p2) as f64)
    );
    assert_eq!(
        sample(
            &text,
            &format!("gen_ai_client_token_usage_sum{{{gen_ai},gen_ai_token_type=\"output\"}}")
        ),
        Some((c1 + c2) as f64)
    );
    assert_eq!(
        sample(
            &text,
            r#"gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="primary-only",gen_ai_response_model="gpt-4o-mini",error_type="upstream_error"}"#
        ),
        Some(1.0)
    );

    // Cost at list price: oa-mini $0.15/$0.60, backup-mini $0.30/$1.20 per million.
    let cost = sample(
        &text,
        r#"switchyard_cost_usd_total{model="gpt-4o-mini",deployment="oa-mini",key="cfg:app"}"#,
    )
    .expect("cost");
    let expected = ((p1 + p2) as f64 * 0.15 + (c1 + c2) as f64 * 0.60) / 1e6;
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    let backup = sample(
        &text,
        r#"switchyard_cost_usd_total{model="failover",deployment="backup-mini",key="cfg:app"}"#,
    )
    .expect("backup cost");
    assert!((backup - (p3 as f64 * 0.30 + c3 as f64 * 1.20) / 1e6).abs() < 1e-12);

    assert_eq!(sample(&text, "switchyard_requests_in_flight"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            r#"switchyard_breaker_state{deployment="oa-mini",state="closed"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_breaker_state{deployment="oa-mini",state="open"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_deployment_exhausted{deployment="oa-mini",provider="oa"}"#
        ),
        Some(0.0)
    );
    assert!(text.ends_with("# EOF\n"));

    // The writer lingers a few ms before it commits: poll, bounded.
    let mut written = None;
    for _ in 0..200 {
        let text = scrape(&h).await;
        written = sample(&text, "switchyard_ledger_rows_written_total");
        if written == Some(4.0) {
            assert_eq!(
                sample(
                    &text,
                    r#"switchyard_ledger_rows_dropped_total{reason="queue_full"}"#
                ),
                Some(0.0)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(written, Some(4.0));
    h.finish().await;
}

#[tokio::test]
async fn refusals_and_pii_are_counted_by_class_and_type() {
    let extra = format!(
        "{}\n[[keys]]\nname = \"pii\"\nkey = \"sy-test-key-pii-000000001\"\npolicy = {{ pii = \"redact\" }}\n",
        admin_section("")
    );
    let h = Harness::start_with(&extra).await;
    let res = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth("sy-test-key-pii-000000001")
        .json(&json!({"model": "gpt-4o-mini", "messages": user("mail me at ann@example.com or bob@example.org")}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let res = h
        .chat(json!({"model": "no-such-model", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 404);
    let text = scrape(&h).await;
    assert_eq!(
        sample(
            &text,
            r#"switchyard_pii_detections_total{type="email",mode="redact",direction="input"}"#
        ),
        Some(2.0),
        "{text}"
    );
    let refused = text
        .lines()
        .find(|l| l.starts_with("switchyard_requests_total{") && l.contains("outcome=\"error\""))
        .expect("a refused request");
    assert!(
        refused.contains("model=\"unknown\",deployment=\"none\""),
        "{refused}"
    );
    assert!(refused.ends_with(" 1"), "{refused}");
    // A request refused before its body was read has no model at all.
    let res = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth("sy-not-a-key-000000000000")
        .json(&json!({"model": "gpt-4o-mini", "messages": user("hi")}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    let text = scrape(&h).await;
    let no_key = samples_with(
        &text,
        "switchyard_requests_total",
        &[r#"model="none",deployment="none",outcome="error""#],
    );
    assert_eq!(no_key.len(), 1, "{text}");
    assert!(no_key[0].ends_with(" 1"), "{no_key:?}");
    // Never the client's words, never the address found.
    assert!(!text.contains("example.com"));
}

#[tokio::test]
async fn key_and_team_labels_can_be_turned_off() {
    let h = Harness::start_with(&admin_section("key_labels = false\nteam_labels = false")).await;
    let res = h
        .chat(json!({"model": "gpt-4o-mini", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 200);
    let text = scrape(&h).await;
    assert_eq!(
        sample(
            &text,
            r#"switchyard_requests_total{model="gpt-4o-mini",deployment="oa-mini",outcome="success"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("key=\""), "{text}");
    assert!(!text.contains("team=\""), "{text}");
}

#[tokio::test]
async fn metrics_need_the_admin_token_by_default() {
    let h = Harness::start_with(&admin_section("")).await;
    let url = format!("{}/metrics", h.base);
    let res = h.client.get(&url).send().await.expect("send");
    assert_eq!(res.status(), 401);
    let res = h
        .client
        .get(&url)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(
        res.status(),
        401,
        "an application key is not the admin token"
    );
    let res = h
        .client
        .get(&url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn metrics_can_have_their_own_listener() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let h = Harness::start_with(&format!(
        "[telemetry]\nmetrics_listen = \"127.0.0.1:{port}\"\n"
    ))
    .await;
    let res = h
        .chat(json!({"model": "gpt-4o-mini", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 200);
    let main = h
        .client
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .expect("send");
    assert_eq!(main.status(), 404);
    let addr = h
        .gateway
        .as_ref()
        .and_then(|g| g.metrics_addr())
        .expect("metrics addr");
    let res = h
        .client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(
        res.status(),
        200,
        "no auth on the separate listener by default"
    );
    let text = res.text().await.expect("text");
    assert!(text.contains(
        r#"switchyard_requests_total{model="gpt-4o-mini",deployment="oa-mini",outcome="success",key="cfg:app"} 1"#
    ), "{text}");
}

#[test]
fn telemetry_config_errors_name_the_field() {
    let base = "[providers.p]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\n";
    for (section, field) in [
        ("metrics_auth = \"basic\"", "telemetry.metrics_auth"),
        ("metrics_auth = \"admin\"", "telemetry.metrics_auth"),
        ("metrics_listen = \"nowhere\"", "telemetry.metrics_listen"),
        ("otlp_endpoint = \"grpc://x\"", "telemetry.otlp_endpoint"),
        ("sampling_ratio = 1.5", "telemetry.sampling_ratio"),
        ("export_interval_ms = 0", "telemetry.export_interval_ms"),
        ("service_name = \" \"", "telemetry.service_name"),
        ("colour = \"blue\"", "unknown field `colour`"),
    ] {
        let text = format!("{base}\n[telemetry]\n{section}\n");
        let e = switchyard::Config::parse(&text, |_| None).expect_err(section);
        assert!(e.to_string().contains(field), "{section}: {e}");
    }
}

/// Spans received by the loopback OTLP receiver, and the `service.name` and scope
/// name each export request named.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>, Arc<Mutex<Vec<(String, String)>>>);

async fn otlp_receiver() -> (String, Received) {
    let received = Received::default();
    let spans = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let spans = spans.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut all = spans.0.lock().expect("lock");
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.clone());
                    let service = match service {
                        Some(AnyValue::StringValue(s)) => s,
                        other => format!("{other:?}"),
                    };
                    for ss in rs.scope_spans {
                        let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                        spans.1.lock().expect("lock").push((service.clone(), scope));
                        all.extend(ss.spans);
                    }
                }
                ""
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind otlp");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/traces"), received)
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(AnyValue::StringValue(s)) => Some(s),
        _ => None,
    }
}

#[tokio::test]
async fn a_failover_is_one_request_span_with_two_attempt_spans_on_the_callers_trace() {
    let (endpoint, received) = otlp_receiver().await;
    let h = Harness::start_with(&format!(
        "{}\n[telemetry]\notlp_endpoint = \"{endpoint}\"\nexport_interval_ms = 50\nservice_name = \"gw-test\"\n",
        common::PATIENT_BREAKER
    ))
    .await;
    h.sim.sim.set_fault("primary", "*", Fault::error(500));
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let res = h
        .post("/v1/chat/completions")
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(&json!({"model": "failover", "messages": user("hi")}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);

    let mut spans = Vec::new();
    for _ in 0..400 {
        spans = received.0.lock().expect("lock").clone();
        if spans.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(spans.len(), 3, "{spans:?}");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for s in &spans {
        assert_eq!(
            hex(&s.trace_id),
            trace,
            "every span is on the caller's trace"
        );
    }
    let request = spans
        .iter()
        .find(|s| hex(&s.parent_span_id) == parent)
        .expect("the request span continues the caller's span");
    assert_eq!(request.name, "chat failover");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(request.status, None, "the request succeeded");
    assert!(request.end_time_unix_nano >= request.start_time_unix_nano);
    assert!(
        request.start_time_unix_nano > 1_600_000_000_000_000_000,
        "Unix nanoseconds: {}",
        request.start_time_unix_nano
    );
    let exports = received.1.lock().expect("lock").clone();
    assert!(!exports.is_empty());
    for (service, scope) in &exports {
        assert_eq!(service, "gw-test");
        assert_eq!(scope, "switchyard");
    }
    assert_eq!(
        string_attr(request, "gen_ai.request.model"),
        Some("failover")
    );
    assert_eq!(
        string_attr(request, "switchyard.deployment"),
        Some("backup-mini")
    );
    assert_eq!(string_attr(request, "gen_ai.provider.name"), Some("openai"));
    match attr(request, "gen_ai.response.finish_reasons") {
        Some(AnyValue::ArrayValue(a)) => assert!(matches!(
            a.values.first().and_then(|v| v.value.as_ref()),
            Some(AnyValue::StringValue(s)) if s == "stop"
        )),
        other => panic!("finish reasons: {other:?}"),
    }
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == request.span_id)
        .collect();
    assert_eq!(attempts.len(), 2);
    // The primary is tried first.
    attempts.sort_by_key(|s| string_attr(s, "switchyard.deployment") != Some("primary-mini"));
    assert_eq!(
        string_attr(attempts[0], "switchyard.deployment"),
        Some("primary-mini")
    );
    assert_eq!(string_attr(attempts[0], "error.type"), Some("upstream_5xx"));
    for a in &attempts {
        assert_eq!(a.kind, SpanKind::Client as i32);
        assert_eq!(a.flags & 1, 1, "sampled");
    }
    assert_eq!(
        attempts[0].status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(attempts[1].status, None);
    assert!(matches!(
        attr(attempts[0], "http.response.status_code"),
        Some(AnyValue::IntValue(500))
    ));
    assert_eq!(
        string_attr(attempts[1], "switchyard.deployment"),
        Some("backup-mini")
    );
    assert_eq!(string_attr(attempts[1], "error.type"), None);
    assert_eq!(
        string_attr(attempts[1], "gen_ai.response.model"),
        Some("gpt-4o-mini")
    );
    assert!(matches!(
        attr(attempts[1], "gen_ai.usage.output_tokens"),
        Some(AnyValue::IntValue(n)) if *n > 0
    ));

    // Each upstream call carried the trace, naming its own attempt's span.
    for (instance, span) in [("primary", attempts[0]), ("backup", attempts[1])] {
        let recorded = h.sim.sim.requests(instance);
        let sent = recorded
            .iter()
            .filter_map(|r| r.header("traceparent"))
            .next_back()
            .unwrap_or_else(|| panic!("{instance} got no traceparent"));
        assert_eq!(sent, format!("00-{trace}-{}-01", hex(&span.span_id)));
    }
}

#[tokio::test]
async fn an_unsampled_caller_is_not_traced_and_sends_no_traceparent() {
    let (endpoint, received) = otlp_receiver().await;
    let mut h = Harness::start_with(&format!(
        "[telemetry]\notlp_endpoint = \"{endpoint}\"\nexport_interval_ms = 50\n"
    ))
    .await;
    let res = h
        .post("/v1/chat/completions")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .json(&json!({"model": "gpt-4o-mini", "messages": user("hi")}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let res = h
        .chat(json!({"model": "gpt-4o-mini", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 200);
    // Shutdown flushes the exporter: what was queued has been sent.
    h.finish().await;
    let spans = received.0.lock().expect("lock").clone();
    assert_eq!(
        spans.len(),
        2,
        "only the second request (a new trace) is traced"
    );
    assert!(spans.iter().all(|s| s.trace_id
        != [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36
        ]));
    let recorded = h.sim.sim.requests("");
    assert_eq!(recorded.len(), 2);
    assert!(recorded[0].header("traceparent").is_none());
    assert!(recorded[1].header("traceparent").is_some());
}

#[tokio::test]
async fn budgets_and_rate_limit_headroom_are_read_at_scrape_time() {
    let extra = format!(
        "{}\n[[keys]]\nname = \"capped\"\nkey = \"sy-test-key-capped-0000001\"\npolicy = {{ rpm = 100 }}\nbudgets = [{{ period = \"month\", limit_usd = 10 }}]\n",
        admin_section("")
    );
    let h = Harness::start_with(&extra).await;
    let res = h
        .client
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth("sy-test-key-capped-0000001")
        .json(&json!({"model": "gpt-4o-mini", "messages": user("hi")}))
        .send()
        .await
        .expect("send");
    let (p, c) = usage_of(res).await;
    let text = scrape(&h).await;
    assert_eq!(
        sample(
            &text,
            r#"switchyard_limit_remaining{key="cfg:capped",limit="rpm"}"#
        ),
        Some(99.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_limit_capacity{key="cfg:capped",limit="rpm"}"#
        ),
        Some(100.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_budget_limit_usd{key="cfg:capped",period="month"}"#
        ),
        Some(10.0)
    );
    let spent = sample(
        &text,
        r#"switchyard_budget_spend_usd{key="cfg:capped",period="month"}"#,
    )
    .expect("spend");
    let expected = (p as f64 * 0.15 + c as f64 * 0.60) / 1e6;
    assert!((spent - expected).abs() < 1e-12, "{spent} vs {expected}");
}

/// Every sample of the family `name` whose labels include every one of `labels`.
fn samples_with<'a>(text: &'a str, name: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && labels.iter().all(|want| l.contains(want))
        })
        .collect()
}

/// Polls `/metrics` until `series` has the value `want` (bounded: 20 s); returns the
/// last text scraped.
async fn scrape_until(h: &Harness, series: &str, want: f64) -> String {
    let mut text = String::new();
    for _ in 0..800 {
        text = scrape(h).await;
        if sample(&text, series) == Some(want) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{series} never became {want}: {text}");
}

/// Time to first token is observed once per streamed request, never for a plain one,
/// and is at least the simulator's time to first token.
#[tokio::test]
async fn time_to_first_token_counts_streams_only() {
    let h = Harness::start_with(&admin_section("")).await;
    h.sim.sim.set_latency(
        "",
        "*",
        switchyard_sim::Latency {
            ttft_ms: 50,
            chunk_delay_ms: 0,
            chunks: None,
        },
    );
    let series = r#"gen_ai_server_time_to_first_token_seconds_count{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini"}"#;
    let before = scrape(&h).await;
    assert_eq!(sample(&before, series), None, "nothing streamed yet");

    for _ in 0..3 {
        let res = h
            .chat(json!({"model": "gpt-4o-mini", "messages": user("hi"), "stream": true}))
            .await;
        assert_eq!(res.status(), 200);
        let body = res.text().await.expect("stream");
        assert!(body.contains("[DONE]"), "{body}");
    }
    for _ in 0..2 {
        usage_of(
            h.chat(json!({"model": "gpt-4o-mini", "messages": user("hi")}))
                .await,
        )
        .await;
    }
    let text = scrape(&h).await;
    assert_eq!(sample(&text, series), Some(3.0), "{text}");
    // Every first token came after the simulator's 50 ms.
    let sum = sample(&text, &series.replace("_count{", "_sum{")).expect("sum");
    assert!(sum >= 3.0 * 0.05, "{sum}");
    assert_eq!(
        sample(
            &text,
            r#"gen_ai_server_time_to_first_token_seconds_bucket{le="0.04",gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o-mini",gen_ai_response_model="gpt-4o-mini"}"#
        ),
        Some(0.0),
        "{text}"
    );
    // All five requests have a duration; only the three streams a first token.
    assert_eq!(
        sample(
            &text,
            &series.replace(
                "gen_ai_server_time_to_first_token",
                "gen_ai_client_operation_duration"
            )
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        samples_with(
            &text,
            "gen_ai_server_time_to_first_token_seconds_count",
            &[]
        )
        .len(),
        1,
        "{text}"
    );
}

/// Creates a team with a monthly budget of $5 and a key of that team through the admin
/// API, sends two requests with it, and returns (the scrape, the key's id, the cost).
async fn team_traffic(h: &Harness) -> (String, String, f64) {
    let admin = |path: &str, body: Value| {
        h.client
            .post(format!("{}{path}", h.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    let res = admin(
        "/admin/teams",
        json!({"name": "support", "budgets": [{"period": "month", "limit_usd": 5}]}),
    )
    .await
    .expect("create team");
    assert_eq!(res.status(), 201);
    let res = admin(
        "/admin/keys",
        json!({"name": "support-bot", "team": "support"}),
    )
    .await
    .expect("create key");
    assert_eq!(res.status(), 201);
    let key: Value = res.json().await.expect("key");
    let secret = key["key"].as_str().expect("secret").to_owned();
    let id = key["id"].as_str().expect("id").to_owned();
    let mut cost = 0.0;
    for text in ["hi", "hello there"] {
        let res = h
            .client
            .post(format!("{}/v1/chat/completions", h.base))
            .bearer_auth(&secret)
            .json(&json!({"model": "gpt-4o-mini", "messages": user(text)}))
            .send()
            .await
            .expect("send");
        let (p, c) = usage_of(res).await;
        cost += (p as f64 * 0.15 + c as f64 * 0.60) / 1e6;
    }
    (scrape(h).await, id, cost)
}

#[tokio::test]
async fn a_team_keys_traffic_is_labelled_with_its_team_and_its_budget_shown() {
    let h = Harness::start_with(&admin_section("")).await;
    let (text, id, cost) = team_traffic(&h).await;
    let series = format!(
        r#"switchyard_cost_usd_total{{model="gpt-4o-mini",deployment="oa-mini",key="{id}",team="support"}}"#
    );
    let got = sample(&text, &series).unwrap_or_else(|| panic!("{series} in {text}"));
    assert!((got - cost).abs() < 1e-12, "{got} vs {cost}");
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"switchyard_requests_total{{model="gpt-4o-mini",deployment="oa-mini",outcome="success",key="{id}",team="support"}}"#
            )
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_budget_limit_usd{team="support",period="month"}"#
        ),
        Some(5.0),
        "{text}"
    );
    let spent = sample(
        &text,
        r#"switchyard_budget_spend_usd{team="support",period="month"}"#,
    )
    .expect("team spend");
    assert!((spent - cost).abs() < 1e-12, "{spent} vs {cost}");
}

#[tokio::test]
async fn team_labels_off_removes_the_team_label_and_the_team_budget_series() {
    let h = Harness::start_with(&admin_section("team_labels = false")).await;
    let (text, id, cost) = team_traffic(&h).await;
    // The same traffic, counted without its team.
    let got = sample(
        &text,
        &format!(
            r#"switchyard_cost_usd_total{{model="gpt-4o-mini",deployment="oa-mini",key="{id}"}}"#
        ),
    )
    .unwrap_or_else(|| panic!("cost without team in {text}"));
    assert!((got - cost).abs() < 1e-12, "{got} vs {cost}");
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"switchyard_requests_total{{model="gpt-4o-mini",deployment="oa-mini",outcome="success",key="{id}"}}"#
            )
        ),
        Some(2.0),
        "{text}"
    );
    assert!(!text.contains("team=\""), "{text}");
    assert!(!text.contains("support"), "{text}");
}

/// A breaker opened by failures, and a provider's 429 with `retry-after`, show in the
/// gauges of the scrape that follows.
#[tokio::test]
async fn an_open_breaker_and_an_exhausted_deployment_show_in_the_gauges() {
    let h = Harness::start_with(&format!(
        "[breaker]\nconsecutive_failures = 2\nwindow = 1000\nopen_ms = 600000\n\n[admin]\ntoken = \"{ADMIN}\"\n"
    ))
    .await;
    let open = r#"switchyard_breaker_state{deployment="primary-mini",state="open"}"#;
    let closed = r#"switchyard_breaker_state{deployment="primary-mini",state="closed"}"#;
    let text = scrape(&h).await;
    assert_eq!(sample(&text, open), Some(0.0));
    assert_eq!(sample(&text, closed), Some(1.0));

    h.sim.sim.set_fault("primary", "*", Fault::error(500));
    // The first fails upstream (502); once the breaker is open, calls fail fast (503).
    for _ in 0..2 {
        let res = h
            .chat(json!({"model": "primary-only", "messages": user("hi")}))
            .await;
        assert!(
            [502, 503].contains(&res.status().as_u16()),
            "{}",
            res.status()
        );
    }
    let text = scrape(&h).await;
    assert_eq!(sample(&text, open), Some(1.0), "{text}");
    assert_eq!(sample(&text, closed), Some(0.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"switchyard_breaker_state{deployment="primary-mini",state="half_open"}"#
        ),
        Some(0.0)
    );
    // The other deployments' breakers stay closed.
    assert_eq!(
        sample(
            &text,
            r#"switchyard_breaker_state{deployment="oa-mini",state="closed"}"#
        ),
        Some(1.0)
    );

    let exhausted = r#"switchyard_deployment_exhausted{deployment="oa-mini",provider="oa"}"#;
    let remaining =
        r#"switchyard_deployment_exhausted_remaining_seconds{deployment="oa-mini",provider="oa"}"#;
    assert_eq!(sample(&text, exhausted), Some(0.0));
    assert_eq!(sample(&text, remaining), Some(0.0));
    h.sim.sim.set_fault(
        "",
        "gpt-4o-mini",
        Fault::error(429).retry_after(90).times(1),
    );
    let res = h
        .chat(json!({"model": "gpt-4o-mini", "messages": user("hi")}))
        .await;
    assert_eq!(res.status(), 429);
    let text = scrape(&h).await;
    assert_eq!(sample(&text, exhausted), Some(1.0), "{text}");
    let left = sample(&text, remaining).expect("remaining");
    assert!(left > 0.0 && left <= 90.0, "{left}");
    // Only that deployment.
    assert_eq!(
        sample(
            &text,
            r#"switchyard_deployment_exhausted{deployment="backup-mini",provider="oa-backup"}"#
        ),
        Some(0.0)
    );
}

/// A deployment's quota headroom goes down by one request per request served.
#[tokio::test]
async fn a_deployment_quota_headroom_is_read_at_scrape_time() {
    let h = Harness::start_with(&format!(
        "{}\n[deployments.quota-mini]\nprovider = \"oa\"\nmodel = \"gpt-4o-mini\"\nprice = {{ input = 0.15, output = 0.60 }}\nquota = {{ rpm = 10, tpm = 100000 }}\n\n[models.quota]\ndeployments = [\"quota-mini\"]\n",
        admin_section("")
    ))
    .await;
    let rpm = r#"switchyard_limit_remaining{deployment="quota-mini",limit="rpm"}"#;
    let tpm = r#"switchyard_limit_remaining{deployment="quota-mini",limit="tpm"}"#;
    let text = scrape(&h).await;
    assert_eq!(sample(&text, rpm), Some(10.0), "{text}");
    assert_eq!(sample(&text, tpm), Some(100_000.0), "{text}");
    let mut tokens = 0;
    for _ in 0..3 {
        let (p, c) = usage_of(
            h.chat(json!({"model": "quota", "messages": user("hi")}))
                .await,
        )
        .await;
        tokens += p + c;
    }
    let text = scrape(&h).await;
    assert_eq!(sample(&text, rpm), Some(7.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"switchyard_limit_capacity{deployment="quota-mini",limit="rpm"}"#
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(&text, tpm),
        Some((100_000 - tokens) as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"switchyard_limit_capacity{deployment="quota-mini",limit="tpm"}"#
        ),
        Some(100_000.0)
    );
    // A deployment without a quota has no headroom series.
    assert!(!text.contains(r#"deployment="oa-mini",limit="#), "{text}");
}

/// A request held upstream is in flight (for the gateway and for its deployment)
/// until it ends.
#[tokio::test]
async fn a_request_held_upstream_is_in_flight_until_it_ends() {
    let h = Harness::start_with(&format!(
        "{}\n[deployments.slow-mini]\nprovider = \"oa\"\nmodel = \"gpt-4o-slow\"\nprice = {{ input = 0.15, output = 0.60 }}\ntimeouts = {{ first_byte_ms = 30000, total_ms = 30000 }}\n\n[models.slow]\ndeployments = [\"slow-mini\"]\n",
        admin_section("")
    ))
    .await;
    h.sim.sim.set_latency(
        "",
        "gpt-4o-slow",
        switchyard_sim::Latency {
            ttft_ms: 3000,
            chunk_delay_ms: 0,
            chunks: None,
        },
    );
    let in_flight = "switchyard_requests_in_flight";
    let calls = r#"switchyard_deployment_calls_in_flight{deployment="slow-mini",provider="oa"}"#;
    assert_eq!(sample(&scrape(&h).await, in_flight), Some(0.0));
    let req = h
        .post("/v1/chat/completions")
        .json(&json!({"model": "slow", "messages": user("hi")}))
        .send();
    let held = tokio::spawn(req);
    let text = scrape_until(&h, in_flight, 1.0).await;
    assert_eq!(sample(&text, calls), Some(1.0), "{text}");
    let res = held.await.expect("join").expect("send");
    usage_of(res).await;
    let text = scrape(&h).await;
    assert_eq!(sample(&text, in_flight), Some(0.0), "{text}");
    assert_eq!(sample(&text, calls), Some(0.0), "{text}");
}

/// The ledger's queue depth: rows wait in it while the writer cannot write (the test
/// holds the database's write lock), and it empties once the writer gets through.
#[tokio::test]
async fn ledger_queue_depth_shows_rows_waiting_for_a_blocked_writer() {
    use sqlx::Connection;
    let mut h = Harness::start_with(&admin_section("")).await;
    let depth = "switchyard_ledger_queue_depth";
    let text = scrape(&h).await;
    assert_eq!(sample(&text, depth), Some(0.0), "{text}");

    let url = format!("sqlite://{}", h.ledger.display());
    let mut lock = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open ledger");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .expect("write lock");
    // The writer takes the first rows and then waits for the lock: later rows queue.
    let mut sent = 0;
    let mut queued = None;
    for _ in 0..100 {
        usage_of(
            h.chat(json!({"model": "gpt-4o-mini", "messages": user("hi")}))
                .await,
        )
        .await;
        sent += 1;
        let text = scrape(&h).await;
        queued = sample(&text, depth).filter(|d| *d > 0.0);
        if queued.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queued = queued.expect("rows queue behind the blocked writer");
    assert!(
        queued < sent as f64,
        "the writer holds at least the first row"
    );
    sqlx::query("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("release");
    drop(lock);
    let text = scrape_until(&h, "switchyard_ledger_rows_written_total", sent as f64).await;
    assert_eq!(sample(&text, depth), Some(0.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"switchyard_ledger_rows_dropped_total{reason="write_failed"}"#
        ),
        Some(0.0)
    );
    h.finish().await;
}
