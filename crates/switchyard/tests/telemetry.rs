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
    let res = h
        .client
        .get(format!("{}/metrics", h.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("scrape");
    assert_eq!(res.status(), 200);
    assert!(res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/openmetrics-text")));
    res.text().await.expect("text")
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
            r#"switchyard_pii_detections_total{type="email",mode="redact"}"#
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

/// Spans received by the loopback OTLP receiver.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

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
                    for ss in rs.scope_spans {
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
