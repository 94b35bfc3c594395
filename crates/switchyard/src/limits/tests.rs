use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use super::*;
use crate::api::wire::parse_body;
use crate::config::DEFAULT_MAX_OUTPUT_TOKENS;

const MIN: Duration = Duration::from_secs(60);

fn setup() -> (Arc<ManualClock>, InProcessLimiter) {
    let clock = Arc::new(ManualClock::new(Duration::from_secs(1_700_000_000)));
    let limiter = InProcessLimiter::with_clock(clock.clone());
    (clock, limiter)
}

fn claim(key: &str, limit: u64, amount: u64) -> Claim {
    Claim {
        key: Arc::from(key),
        limit,
        period: MIN,
        amount,
    }
}

/// The in-process limiter never waits: every future is ready at once.
fn now<T>(f: BoxFuture<'_, T>) -> T {
    f.now_or_never()
        .expect("in-process limiter futures are ready")
}

#[test]
fn admits_up_to_the_limit_then_refuses_until_the_oldest_leaves() {
    let (clock, l) = setup();
    for _ in 0..3 {
        now(l.try_reserve(&[claim("k", 3, 1)])).expect("fits");
        clock.advance(Duration::from_secs(10));
    }
    // t = 30 s: three in the window.
    let refused = now(l.try_reserve(&[claim("k", 3, 1)])).expect_err("full");
    assert_eq!(refused.key.as_ref(), "k");
    assert_eq!(refused.limit, 3);
    assert_eq!(refused.remaining, 0);
    // The first entry (t = 0) leaves at t = 60.
    assert_eq!(refused.retry_after, Duration::from_secs(30));
    assert_eq!(now(l.remaining("k", 3, MIN)), (0, Duration::from_secs(50)));

    clock.advance(Duration::from_secs(30));
    now(l.try_reserve(&[claim("k", 3, 1)])).expect("the oldest left");
    assert!(now(l.try_reserve(&[claim("k", 3, 1)])).is_err());
}

#[test]
fn a_reservation_says_what_each_window_has_left() {
    let (clock, l) = setup();
    now(l.try_reserve(&[claim("rpm", 10, 1), claim("tpm", 1000, 300)])).expect("fits");
    clock.advance(Duration::from_secs(5));
    let r = now(l.try_reserve(&[claim("rpm", 10, 1), claim("tpm", 1000, 200)])).expect("fits");
    // What `remaining` would answer now, without asking again; the reset is a period
    // after the entry just appended.
    assert_eq!(r.headroom(0), Some((8, MIN)));
    assert_eq!(r.headroom(1), Some((500, MIN)));
    assert_eq!(now(l.remaining("rpm", 10, MIN)), (8, MIN));
    assert_eq!(r.headroom(2), None);
    // Two claims on one window both see the whole of what the reservation took.
    let r = now(l.try_reserve(&[claim("w", 10, 2), claim("w", 10, 3)])).expect("fits");
    assert_eq!(r.headroom(0), Some((5, MIN)));
    assert_eq!(r.headroom(1), Some((5, MIN)));
}

#[test]
fn a_claim_is_all_or_nothing_across_windows() {
    let (_clock, l) = setup();
    let claims = [claim("a", 10, 4), claim("b", 10, 4), claim("c", 3, 4)];
    let refused = now(l.try_reserve(&claims)).expect_err("c does not fit");
    assert_eq!(refused.key.as_ref(), "c");
    assert_eq!(refused.remaining, 3);
    // Nothing stayed reserved in a or b.
    assert_eq!(now(l.remaining("a", 10, MIN)).0, 10);
    assert_eq!(now(l.remaining("b", 10, MIN)).0, 10);
    // The same key twice in one call counts both.
    let twice = [claim("d", 5, 3), claim("d", 5, 3)];
    assert!(now(l.try_reserve(&twice)).is_err());
    assert_eq!(now(l.remaining("d", 5, MIN)).0, 5);
}

#[test]
fn an_amount_above_the_limit_never_fits() {
    let (_clock, l) = setup();
    let refused = now(l.try_reserve(&[claim("t", 100, 101)])).expect_err("too big");
    assert_eq!(refused.remaining, 100);
    assert_eq!(refused.retry_after, MIN);
    let zero = now(l.try_reserve(&[claim("z", 0, 1)])).expect_err("limit 0");
    assert_eq!(zero.remaining, 0);
}

#[test]
fn settle_corrects_the_estimate_both_ways() {
    let (clock, l) = setup();
    let r = now(l.try_reserve(&[claim("tpm", 1000, 600), claim("rpm", 10, 1)])).expect("fits");
    assert_eq!(r.amounts(), vec![600, 1]);
    assert_eq!(now(l.remaining("tpm", 1000, MIN)).0, 400);
    // Actual use was 150 tokens: 450 come back.
    now(l.settle(r, &[150, 1]));
    assert_eq!(now(l.remaining("tpm", 1000, MIN)).0, 850);
    assert_eq!(now(l.remaining("rpm", 10, MIN)).0, 9);

    let r = now(l.try_reserve(&[claim("tpm", 1000, 100)])).expect("fits");
    // Actual use was larger than estimated: the window goes over, and stays over.
    now(l.settle(r, &[900]));
    assert_eq!(now(l.remaining("tpm", 1000, MIN)).0, 0);
    assert!(now(l.try_reserve(&[claim("tpm", 1000, 1)])).is_err());
    clock.advance(MIN);
    assert_eq!(now(l.remaining("tpm", 1000, MIN)), (1000, Duration::ZERO));
}

#[test]
fn settling_after_the_entry_left_charges_only_the_excess_now() {
    let (clock, l) = setup();
    let r = now(l.try_reserve(&[claim("tpm", 1000, 100)])).expect("fits");
    clock.advance(Duration::from_secs(90)); // a long stream
    assert_eq!(now(l.remaining("tpm", 1000, MIN)).0, 1000);
    now(l.settle(r, &[300]));
    assert_eq!(now(l.remaining("tpm", 1000, MIN)).0, 800);

    let r = now(l.try_reserve(&[claim("tpm2", 1000, 100)])).expect("fits");
    clock.advance(Duration::from_secs(90));
    now(l.settle(r, &[40])); // less than reserved, and already gone: nothing to do
    assert_eq!(now(l.remaining("tpm2", 1000, MIN)).0, 1000);
}

#[test]
fn missing_actuals_keep_their_reservation() {
    let (_clock, l) = setup();
    let r = now(l.try_reserve(&[claim("a", 10, 5), claim("b", 10, 5)])).expect("fits");
    now(l.settle(r, &[1]));
    assert_eq!(now(l.remaining("a", 10, MIN)).0, 9);
    assert_eq!(now(l.remaining("b", 10, MIN)).0, 5);
    now(l.settle(Reservation::none(), &[]));
}

#[test]
fn exact_under_concurrency() {
    let l = Arc::new(InProcessLimiter::new());
    let admitted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let l = l.clone();
            let admitted = admitted.clone();
            std::thread::spawn(move || {
                // Every thread also claims its own window, which always fits: the
                // shared one decides, and a refusal must not leave the own one charged.
                let claims = [
                    claim(&format!("own-{i}"), 1, 1),
                    claim("shared-rpm", 37, 1),
                    claim("shared-tpm", 10_000, 100),
                ];
                if now(l.try_reserve(&claims)).is_ok() {
                    admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                } else {
                    assert_eq!(now(l.remaining(&format!("own-{i}"), 1, MIN)).0, 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 37);
    assert_eq!(now(l.remaining("shared-rpm", 37, MIN)).0, 0);
    assert_eq!(
        now(l.remaining("shared-tpm", 10_000, MIN)).0,
        10_000 - 3_700
    );
}

#[test]
fn idle_windows_are_swept() {
    let (clock, l) = setup();
    for i in 0..100 {
        now(l.try_reserve(&[claim(&format!("k{i}"), 5, 1)])).expect("fits");
    }
    assert_eq!(l.window_count(), 100);
    clock.advance(MIN * 2);
    for _ in 0..SWEEP_EVERY {
        now(l.try_reserve(&[claim("busy", u64::MAX, 1)])).expect("fits");
    }
    assert_eq!(l.window_count(), 1);
}

#[test]
fn chat_estimate_counts_prompt_and_max_output() {
    let req: ChatRequest = parse_body(
        br#"{"model":"m","messages":[
            {"role":"system","content":"You are terse."},
            {"role":"user","content":[{"type":"text","text":"12345678"},
                                      {"type":"image_url","image_url":{"url":"https://x/y.png"}}]}
        ],"max_tokens":50,"n":2}"#,
    )
    .expect("valid");
    // 3 + (ceil(14/4) + 4) + (ceil(8/4) + 4 + image)
    let prompt = 3 + (4 + 4) + (2 + 4 + IMAGE_TOKENS);
    assert_eq!(
        estimate_chat(&req, 999),
        TokenEstimate {
            prompt,
            output: 100
        }
    );
    assert_eq!(
        estimate_chat(&req, DEFAULT_MAX_OUTPUT_TOKENS).total(),
        prompt + 100
    );

    let no_max: ChatRequest =
        parse_body(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).expect("valid");
    assert_eq!(estimate_chat(&no_max, 77).output, 77);
    assert_eq!(
        estimate_chat(&no_max, DEFAULT_MAX_OUTPUT_TOKENS).total(),
        3 + 1 + 4 + DEFAULT_MAX_OUTPUT_TOKENS
    );
    // max_completion_tokens wins over the deprecated max_tokens.
    let both: ChatRequest = parse_body(
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":9,"max_completion_tokens":5}"#,
    )
    .expect("valid");
    assert_eq!(estimate_chat(&both, 77).output, 5);
}

#[test]
fn embedding_estimate() {
    use serde_json::json;
    assert_eq!(estimate_embedding_tokens(&json!("abcdefgh")), 2);
    assert_eq!(estimate_embedding_tokens(&json!(["abcd", "abcde"])), 3);
    assert_eq!(estimate_embedding_tokens(&json!([[1, 2, 3], [4]])), 4);
}

#[test]
fn a_busy_window_keeps_slices_not_one_entry_per_request() {
    let (clock, l) = setup();
    // 5,000 requests a second for a whole minute, each settled with another amount.
    let step = Duration::from_micros(200);
    for i in 0..300_000u64 {
        let r = now(l.try_reserve(&[claim("tpm", u64::MAX, 10)])).expect("fits");
        now(l.settle(r, &[i % 7]));
        clock.advance(step);
    }
    let state = lock(&l.state);
    let w = state.windows.get("tpm").expect("window");
    assert!(
        w.entries.len() <= SLICES_PER_PERIOD as usize + 1,
        "{}",
        w.entries.len()
    );
    // The settled amounts, exactly: what is still in the window is every request of
    // the last minute (all 300,000 of them, the first made exactly a minute ago).
    let expected: u64 = (0..300_000u64).map(|i| i % 7).sum();
    assert_eq!(w.total, expected);
    assert_eq!(w.total, w.entries.iter().map(|e| e.amount).sum::<u64>());
}

#[test]
fn a_reservation_in_a_shared_slice_leaves_no_earlier_than_its_own_time() {
    let (clock, l) = setup();
    now(l.try_reserve(&[claim("k", 2, 1)])).expect("fits");
    // 10 ms later: the same slice of the minute (a slice is 60 s / 4096 = 14.6 ms).
    clock.advance(Duration::from_millis(10));
    now(l.try_reserve(&[claim("k", 2, 1)])).expect("fits");
    // A minute after the first: a log would let it go, the slice keeps it until a
    // minute after the second.
    clock.advance(MIN - Duration::from_millis(5));
    let refused = now(l.try_reserve(&[claim("k", 2, 1)])).expect_err("still full");
    assert_eq!(refused.retry_after, Duration::from_millis(5));
    clock.advance(Duration::from_millis(5));
    now(l.try_reserve(&[claim("k", 2, 2)])).expect("both left");
}

#[test]
fn a_refused_call_takes_back_what_it_added_to_a_shared_slice() {
    let (_clock, l) = setup();
    now(l.try_reserve(&[claim("a", 10, 3)])).expect("fits");
    // Fits "a" (joining its slice), not "b": nothing of it may stay in "a".
    now(l.try_reserve(&[claim("b", 1, 1)])).expect("fits");
    now(l.try_reserve(&[claim("a", 10, 4), claim("b", 1, 1)])).expect_err("b is full");
    assert_eq!(now(l.remaining("a", 10, MIN)).0, 7);
    now(l.try_reserve(&[claim("a", 10, 7)])).expect("all of the rest fits");
}
