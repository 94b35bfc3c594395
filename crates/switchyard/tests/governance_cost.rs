//! The one cost function (`Price::cost`) per provider usage shape, against values
//! computed by hand. Prices are nano-USD per million tokens; a call's cost is rounded
//! once, half up.

use switchyard::types::Price;
use switchyard::types::Usage;

/// USD per million tokens → nano-USD per million tokens.
const fn usd(micro_usd_per_mtok: u64) -> u64 {
    micro_usd_per_mtok * 1_000
}

#[test]
fn openai_plain_cached_and_reasoning() {
    // gpt-4o-mini: $0.15 in, $0.075 cached in, $0.60 out.
    let mini = Price {
        input_per_mtok: usd(150_000),
        cached_input_per_mtok: usd(75_000),
        output_per_mtok: usd(600_000),
        ..Price::default()
    };
    // 1,000 prompt (400 cached) + 500 completion:
    // 600 × 150 + 400 × 75 + 500 × 600 = 90,000 + 30,000 + 300,000 nano-USD.
    let u = Usage {
        prompt_tokens: 1_000,
        completion_tokens: 500,
        cached_tokens: 400,
        ..Usage::default()
    };
    assert_eq!(mini.cost(&u), 420_000);

    // o-series: reasoning tokens are part of completion_tokens and, by default, billed
    // at the output price: 100 × 1.10 + 2,000 × 4.40 (of which 1,500 reasoning).
    let o_mini = Price {
        input_per_mtok: usd(1_100_000),
        cached_input_per_mtok: usd(550_000),
        output_per_mtok: usd(4_400_000),
        ..Price::default()
    };
    let reasoning = Usage {
        prompt_tokens: 100,
        completion_tokens: 2_000,
        reasoning_tokens: 1_500,
        ..Usage::default()
    };
    assert_eq!(o_mini.cost(&reasoning), 110_000 + 8_800_000);
    // A catalog that prices reasoning apart (e.g. $3.50 per M thoughts):
    // 100 × 1.10 + 500 × 4.40 + 1,500 × 3.50 = 110,000 + 2,200,000 + 5,250,000.
    let split = Price {
        reasoning_per_mtok: Some(usd(3_500_000)),
        ..o_mini
    };
    assert_eq!(split.cost(&reasoning), 7_560_000);
}

#[test]
fn anthropic_cache_write_and_read() {
    // Claude Sonnet: $3 in, $0.30 cache read, $3.75 cache write, $15 out.
    let sonnet = Price {
        input_per_mtok: usd(3_000_000),
        cached_input_per_mtok: usd(300_000),
        cache_write_per_mtok: Some(usd(3_750_000)),
        output_per_mtok: usd(15_000_000),
        ..Price::default()
    };
    // Anthropic reports input 200, cache_creation 1,000, cache_read 3,000, output 400;
    // the translator sums them into prompt_tokens = 4,200.
    // 200 × 3 + 1,000 × 3.75 + 3,000 × 0.30 + 400 × 15
    // = 600,000 + 3,750,000 + 900,000 + 6,000,000 nano-USD.
    let u = Usage {
        prompt_tokens: 4_200,
        cached_tokens: 3_000,
        cache_write_tokens: 1_000,
        completion_tokens: 400,
        ..Usage::default()
    };
    assert_eq!(sonnet.cost(&u), 11_250_000);
    // Without a cache-write price, writes cost the input price.
    let plain = Price {
        cache_write_per_mtok: None,
        ..sonnet
    };
    assert_eq!(plain.cost(&u), 11_250_000 - 750_000);
}

#[test]
fn embeddings_and_rounding() {
    // text-embedding-3-small: $0.02 per M input, no output.
    let embed = Price {
        input_per_mtok: usd(20_000),
        cached_input_per_mtok: usd(20_000),
        ..Price::default()
    };
    let u = Usage {
        prompt_tokens: 8_191,
        ..Usage::default()
    };
    // 8,191 × 20 = 163,820 nano-USD.
    assert_eq!(embed.cost(&u), 163_820);
    // 1 token at $0.0375 per M is 37.5 nano-USD: rounded half up once, to 38.
    let odd = Price {
        input_per_mtok: 37_500_000,
        ..Price::default()
    };
    let one = Usage {
        prompt_tokens: 1,
        ..Usage::default()
    };
    assert_eq!(odd.cost(&one), 38);
    // Inconsistent counts never underflow: cached and written are capped by the prompt.
    let odd_usage = Usage {
        prompt_tokens: 10,
        cached_tokens: 8,
        cache_write_tokens: 8,
        completion_tokens: 1,
        reasoning_tokens: 5,
        ..Usage::default()
    };
    let p = Price {
        input_per_mtok: usd(1_000_000),
        cached_input_per_mtok: usd(100_000),
        output_per_mtok: usd(2_000_000),
        ..Price::default()
    };
    // 8 cached × 0.1 + 2 written × 1 + 0 uncached + 1 reasoning × 2 = 800 + 2,000 + 2,000.
    assert_eq!(p.cost(&odd_usage), 4_800);
}

/// The OpenAPI file documents every admin route the router serves.
#[test]
fn openapi_file_covers_the_admin_routes() {
    let spec = include_str!("../../../docs/admin-openapi.yaml");
    let admin = concat!(
        include_str!("../src/admin/mod.rs"),
        include_str!("../src/admin/stats.rs")
    );
    let routes: Vec<&str> = admin
        .lines()
        .filter_map(|l| l.trim().strip_prefix(".route(\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert!(routes.len() >= 11, "{routes:?}");
    for r in routes {
        assert!(
            spec.contains(&format!("\n  {r}:")),
            "{r} is not in docs/admin-openapi.yaml"
        );
    }
}
