use super::*;
use crate::types::Usage;

fn env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-test-openai".into()),
        "AZURE_KEY" => Some("azure-secret".into()),
        "APP_KEY" => Some("sy-app-key-123456".into()),
        _ => None,
    }
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9090"
max_body_bytes = 1000

[[keys]]
name = "app"
key = "${APP_KEY}"

[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1/"
api_key = "${OPENAI_API_KEY}"

[providers.azure-eu]
kind = "azure"
endpoint = "https://res.openai.azure.com"
api_version = "2024-10-21"
api_key = "${AZURE_KEY}"

[providers.azure-v1]
kind = "azure"
endpoint = "https://res2.openai.azure.com"
api_key = "${AZURE_KEY}"

[deployments.oa-mini]
provider = "openai"
model = "gpt-4o-mini"
price = { input = 0.15, output = 0.60, cached_input = 0.075 }

[deployments.az-mini]
provider = "azure-eu"
model = "mini-prod"
region = "eu-west"
price = { input = 0.165, output = 0.66 }
timeouts = { first_byte_ms = 1500 }

[models.support-chat]
deployments = ["az-mini", "oa-mini"]
"#;

#[test]
fn parses_a_full_config() {
    let c = Config::parse(GOOD, env).expect("valid");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.server.max_body_bytes, 1000);
    assert_eq!(c.keys[0].key.expose(), "sy-app-key-123456");
    let m = c.model("support-chat").expect("model");
    let names: Vec<&str> = m
        .targets
        .iter()
        .map(|t| t.deployment.name.as_str())
        .collect();
    assert_eq!(names, ["az-mini", "oa-mini"]);
    let az = &m.targets[0].deployment;
    assert_eq!(
        az.provider.kind,
        ProviderKind::Azure {
            endpoint: "https://res.openai.azure.com".into(),
            api: AzureApi::Deployments {
                api_version: "2024-10-21".into()
            }
        }
    );
    assert_eq!(az.timeouts.first_byte, Duration::from_millis(1500));
    assert_eq!(az.timeouts.total, Duration::from_millis(DEFAULT_TOTAL_MS));
    // Cached input defaults to the input price.
    assert_eq!(az.price.cached_input_per_mtok, 165_000_000);
    let oa = &m.targets[1].deployment;
    assert_eq!(
        oa.provider.kind,
        ProviderKind::OpenAi {
            base_url: "https://api.openai.com/v1".into()
        }
    );
    assert_eq!(oa.price.input_per_mtok, 150_000_000);
    assert_eq!(oa.price.cached_input_per_mtok, 75_000_000);
    let v1 = c
        .providers
        .iter()
        .find(|p| p.name == "azure-v1")
        .expect("provider");
    assert!(matches!(
        v1.kind,
        ProviderKind::Azure {
            api: AzureApi::V1,
            ..
        }
    ));
}

#[test]
fn the_default_shutdown_fits_a_30_second_orchestrator_grace_period() {
    let c = Config::parse(GOOD, env).expect("valid");
    assert_eq!(c.server.drain_grace, Duration::from_millis(5_000));
    assert_eq!(c.server.drain_timeout, Duration::from_millis(20_000));
    // What is left of the 30 s is the ledger's flush.
    assert!(c.server.drain_grace + c.server.drain_timeout <= Duration::from_secs(25));
    let c = Config::parse(
        &GOOD.replace("max_body_bytes = 1000", "drain_grace_ms = 0"),
        env,
    )
    .expect("valid");
    assert!(c.server.drain_grace.is_zero(), "0 closes at once");
}

#[test]
fn plain_http_off_this_machine_needs_allow_insecure_http_and_warns() {
    let with = |url: &str, extra: &str| {
        GOOD.replace(
            r#"base_url = "https://api.openai.com/v1/""#,
            &format!("base_url = \"{url}\"\n{extra}"),
        )
    };
    // Loopback is this machine: no permission needed, nothing to warn about.
    for url in [
        "http://127.0.0.1:8000/v1",
        "http://127.1.2.3/v1",
        "http://localhost:11434/v1",
        "http://[::1]:8000/v1",
        "https://vllm.internal/v1",
    ] {
        let c = Config::parse(&with(url, ""), env).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(c.warnings(), [], "{url}");
    }
    for url in ["http://vllm.internal:8000/v1", "http://10.0.0.7/v1"] {
        let e = Config::parse(&with(url, ""), env).expect_err(url);
        assert_eq!(e.path, "providers.openai.base_url", "{url}");
        assert!(e.line.is_some(), "{url}");
        assert!(
            e.message
                .contains("providers.openai.allow_insecure_http = true"),
            "{url}: {e}"
        );
        let c = Config::parse(&with(url, "allow_insecure_http = true"), env).expect(url);
        let warnings = c.warnings();
        assert_eq!(warnings.len(), 1, "{url}: {warnings:?}");
        assert_eq!(warnings[0].path, "providers.openai.base_url");
        assert!(warnings[0].message.contains("clear text"), "{warnings:?}");
    }
    // Azure's URL is its `endpoint`.
    let e = Config::parse(
        &GOOD.replace(
            r#"endpoint = "https://res.openai.azure.com""#,
            r#"endpoint = "http://res.openai.azure.com""#,
        ),
        env,
    )
    .expect_err("azure over http");
    assert_eq!(e.path, "providers.azure-eu.endpoint");
}

#[test]
fn whether_a_provider_is_openai_itself_is_known_at_load() {
    let c = Config::parse(GOOD, env).expect("valid");
    let provider = |d: &str| deployment(&c, d).provider.clone();
    assert!(provider("oa-mini").openai_itself);
    assert!(
        !provider("az-mini").openai_itself,
        "Azure is not OpenAI's own API"
    );
    for url in [
        "http://127.0.0.1:8000/v1",
        "https://API.OPENAI.COM.example/v1",
    ] {
        let src = GOOD.replace(
            r#"base_url = "https://api.openai.com/v1/""#,
            &format!("base_url = \"{url}\""),
        );
        let c = Config::parse(&src, env).unwrap_or_else(|e| panic!("{url}: {e}"));
        let p = deployment(&c, "oa-mini").provider.clone();
        assert!(!p.openai_itself, "{url}");
    }
    let upper = GOOD.replace("https://api.openai.com/v1/", "https://API.OpenAI.com/v1/");
    let c = Config::parse(&upper, env).expect("valid");
    assert!(deployment(&c, "oa-mini").provider.openai_itself);
}

fn deployment<'c>(c: &'c Config, name: &str) -> &'c Arc<Deployment> {
    c.deployments
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no deployment {name}"))
}

#[test]
fn secrets_never_print() {
    let c = Config::parse(GOOD, env).expect("valid");
    let dump = format!("{c:?}");
    assert!(!dump.contains("sk-test-openai"));
    assert!(!dump.contains("azure-secret"));
    assert!(dump.contains("Secret(***)"));
}

fn error_of(src: &str) -> ConfigError {
    Config::parse(src, env).expect_err("must be rejected")
}

#[test]
fn unknown_deployment_names_path_and_line() {
    let src = GOOD.replace(r#"["az-mini", "oa-mini"]"#, r#"["az-mini", "nope"]"#);
    let e = error_of(&src);
    assert_eq!(e.path, "models.support-chat.deployments[1]");
    let expected_line = src
        .lines()
        .position(|l| l.contains("\"nope\""))
        .expect("line")
        + 1;
    assert_eq!(e.line, Some(expected_line));
    assert!(e.message.contains("unknown deployment `nope`"), "{e}");
    assert!(e.to_string().contains(&format!("line {expected_line}")));
}

#[test]
fn missing_env_var_names_the_field() {
    let src = GOOD.replace("${OPENAI_API_KEY}", "${NOT_SET_ANYWHERE}");
    let e = error_of(&src);
    assert_eq!(e.path, "providers.openai.api_key");
    assert!(e.message.contains("NOT_SET_ANYWHERE is not set"), "{e}");
    let expected_line = src
        .lines()
        .position(|l| l.contains("NOT_SET_ANYWHERE"))
        .expect("line")
        + 1;
    assert_eq!(e.line, Some(expected_line));
}

#[test]
fn unknown_field_is_rejected_with_line() {
    let src = GOOD.replace(
        "max_body_bytes = 1000",
        "max_body_bytes = 1000\nlisten_port = 3",
    );
    let e = error_of(&src);
    assert!(e.message.contains("listen_port"), "{e}");
    let expected_line = src
        .lines()
        .position(|l| l.contains("listen_port"))
        .expect("line")
        + 1;
    assert_eq!(e.line, Some(expected_line));
}

#[test]
fn wrong_type_is_rejected_with_line() {
    let src = GOOD.replace("max_body_bytes = 1000", "max_body_bytes = \"big\"");
    let e = error_of(&src);
    assert!(e.message.contains("invalid type"), "{e}");
    assert!(e.line.is_some());
}

#[test]
fn field_level_checks() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"listen = "127.0.0.1:9090""#,
            r#"listen = "nowhere""#,
            "server.listen",
        ),
        (
            r#"kind = "openai""#,
            r#"kind = "bedrock-x""#,
            "providers.openai.kind",
        ),
        (
            r#"base_url = "https://api.openai.com/v1/""#,
            r#"base_url = "ftp://x""#,
            "providers.openai.base_url",
        ),
        (
            r#"provider = "openai""#,
            r#"provider = "missing""#,
            "deployments.oa-mini.provider",
        ),
        (
            "input = 0.15,",
            "input = -1.0,",
            "deployments.oa-mini.price.input",
        ),
        (
            "first_byte_ms = 1500",
            "first_byte_ms = 0",
            "deployments.az-mini.timeouts.first_byte_ms",
        ),
        (
            r#"api_version = "2024-10-21""#,
            r#"api = "classic""#,
            "providers.azure-eu.api",
        ),
    ];
    for (from, to, path) in cases {
        assert!(GOOD.contains(from), "fixture lacks {from}");
        let e = error_of(&GOOD.replacen(from, to, 1));
        assert_eq!(e.path, *path, "{from} -> {to}: {e}");
        assert!(e.line.is_some(), "{path} has no line");
    }
}

#[test]
fn duplicate_key_names_and_short_keys_are_rejected() {
    let dup = GOOD.replace(
        "[providers.openai]",
        "[[keys]]\nname = \"app\"\nkey = \"another-long-key\"\n\n[providers.openai]",
    );
    assert_eq!(error_of(&dup).path, "keys[1].name");
    let short = GOOD.replace("${APP_KEY}", "abc");
    assert_eq!(error_of(&short).path, "keys[0].key");
}

#[test]
fn cost_is_exact_integer_arithmetic() {
    let price = Price {
        input_per_mtok: 150_000_000,
        output_per_mtok: 600_000_000,
        cached_input_per_mtok: 75_000_000,
        ..Price::default()
    };
    // 1000 prompt (400 cached) + 500 completion:
    // 600*150 + 400*75 + 500*600 = 90_000 + 30_000 + 300_000 nano-USD.
    let usage = Usage {
        prompt_tokens: 1000,
        completion_tokens: 500,
        cached_tokens: 400,
        estimated: false,
        ..Usage::default()
    };
    assert_eq!(price.cost(&usage), 420_000);
    // Rounds half up once: 1 token at 0.0375 USD/M = 37.5 nano -> 38.
    let odd = Price {
        input_per_mtok: 37_500_000,
        ..Price::default()
    };
    let one = Usage {
        prompt_tokens: 1,
        ..Usage::default()
    };
    assert_eq!(odd.cost(&one), 38);
}

#[test]
fn defaults_apply_to_an_empty_file() {
    let c = Config::parse("", env).expect("empty config is valid");
    assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.ledger.path.as_deref(), Some(Path::new("switchyard.db")));
    assert!(c.models.is_empty());
}

#[test]
fn ledger_overload_settings_are_validated() {
    let c = Config::parse("", env).expect("defaults");
    assert_eq!(c.ledger.on_overload, OnOverload::Block);
    assert_eq!(
        c.ledger.max_wait,
        Duration::from_millis(DEFAULT_LEDGER_MAX_WAIT_MS)
    );
    let c =
        Config::parse("[ledger]\non_overload = \"drop\"\nmax_wait_ms = 250\n", env).expect("valid");
    assert_eq!(c.ledger.on_overload, OnOverload::Drop);
    assert_eq!(c.ledger.max_wait, Duration::from_millis(250));
    for (text, path) in [
        ("on_overload = \"wait\"", "ledger.on_overload"),
        ("max_wait_ms = 0", "ledger.max_wait_ms"),
        ("max_wait_ms = 60001", "ledger.max_wait_ms"),
    ] {
        let e = error_of(&format!("[ledger]\n{text}\n"));
        assert_eq!(e.path, path, "{text}: {e}");
    }
}

#[test]
fn responses_ttl_days_defaults_to_30_and_is_bounded() {
    let c = Config::parse("", env).expect("defaults");
    assert_eq!(c.ledger.responses_ttl_days, DEFAULT_RESPONSES_TTL_DAYS);
    assert_eq!(DEFAULT_RESPONSES_TTL_DAYS, 30);
    for days in [1, 7, 3650] {
        let c =
            Config::parse(&format!("[ledger]\nresponses_ttl_days = {days}\n"), env).expect("valid");
        assert_eq!(c.ledger.responses_ttl_days, days);
    }
    for bad in ["0", "3651", "4294967295"] {
        let src = format!("[ledger]\nresponses_ttl_days = {bad}\n");
        let e = error_of(&src);
        assert_eq!(e.path, "ledger.responses_ttl_days", "{src}: {e}");
        assert!(e.to_string().contains("between 1 and 3650"), "{e}");
        assert!(e.line.is_some(), "{src}: no line in {e}");
    }
    // A negative number is no `u32`: the file's parser refuses it, at its line.
    let e = error_of("[ledger]\nresponses_ttl_days = -1\n");
    assert_eq!(e.line, Some(2), "{e}");
}

#[test]
fn routing_fields_are_validated() {
    let src = GOOD.replace(
        "[models.support-chat]\ndeployments = [\"az-mini\", \"oa-mini\"]",
        r#"[models.support-chat]
strategy = "weighted"
deployments = [{ name = "az-mini", weight = 3 }, "oa-mini"]
allowed_regions = ["eu-west"]
retry = { max_attempts = 4 }
hedge_after_ms = 250
stream_recovery = "continue""#,
    );
    let c = Config::parse(&src, env).expect("valid");
    let m = c.model("support-chat").expect("model");
    assert_eq!(m.strategy, Strategy::Weighted);
    assert_eq!(m.targets[0].weight, 3);
    assert_eq!(m.targets[1].weight, 1);
    assert_eq!(m.retry.max_attempts, 4);
    assert_eq!(m.hedge_after, Some(Duration::from_millis(250)));
    assert_eq!(m.stream_recovery, super::StreamRecovery::Continue);
    for other in c.models.values().filter(|m| m.name != "support-chat") {
        assert_eq!(
            other.stream_recovery,
            super::StreamRecovery::Off,
            "the default"
        );
    }
    assert_eq!(
        m.constraints.allowed_regions,
        Some(vec!["eu-west".to_owned()])
    );
    // Deployment indexes follow Config::deployments.
    for (i, d) in c.deployments.iter().enumerate() {
        assert_eq!(d.index, i);
    }

    let cases: &[(&str, &str, &str)] = &[
        (
            "strategy = \"weighted\"",
            "strategy = \"fastest\"",
            "models.support-chat.strategy",
        ),
        (
            "weight = 3",
            "weight = 0",
            "models.support-chat.deployments[0].weight",
        ),
        (
            "max_attempts = 4",
            "max_attempts = 0",
            "models.support-chat.retry.max_attempts",
        ),
        (
            "allowed_regions = [\"eu-west\"]",
            "allowed_regions = [\"mars\"]",
            "models.support-chat.allowed_regions",
        ),
        (
            "stream_recovery = \"continue\"",
            "stream_recovery = \"resume\"",
            "models.support-chat.stream_recovery",
        ),
    ];
    for (from, to, path) in cases {
        assert!(src.contains(from), "fixture lacks {from}");
        let e = error_of(&src.replacen(from, to, 1));
        assert_eq!(e.path, *path, "{from} -> {to}: {e}");
        assert!(e.line.is_some(), "{path} has no line");
    }
    let quota = GOOD.replace(
        "model = \"gpt-4o-mini\"",
        "model = \"gpt-4o-mini\"\nquota = { rpm = 0 }",
    );
    assert_eq!(error_of(&quota).path, "deployments.oa-mini.quota.rpm");
}

#[test]
fn a_models_cache_is_validated() {
    let src = GOOD.replace(
        "[models.support-chat]\ndeployments = [\"az-mini\", \"oa-mini\"]",
        "[models.support-chat]\ndeployments = [\"az-mini\", \"oa-mini\"]\ncache = { ttl_s = 3600, max_bytes = 1024 }",
    );
    let c = Config::parse(&src, env).expect("valid");
    let m = c.model("support-chat").expect("model");
    assert_eq!(
        m.cache,
        Some(super::CacheSettings {
            ttl: Duration::from_secs(3600),
            max_bytes: 1024,
            any_temperature: false,
        })
    );
    assert!(c
        .models
        .values()
        .filter(|m| m.name != "support-chat")
        .all(|m| m.cache.is_none()));
    let defaults = src.replace(
        "ttl_s = 3600, max_bytes = 1024",
        "ttl_s = 1, any_temperature = true",
    );
    let m = Config::parse(&defaults, env).expect("valid");
    let cache = m
        .model("support-chat")
        .and_then(|m| m.cache)
        .expect("cache");
    assert_eq!(cache.max_bytes, super::DEFAULT_CACHE_MAX_BYTES);
    assert!(cache.any_temperature);
    for (to, path) in [
        (
            "ttl_s = 0, max_bytes = 1024",
            "models.support-chat.cache.ttl_s",
        ),
        (
            "ttl_s = 2592001, max_bytes = 1024",
            "models.support-chat.cache.ttl_s",
        ),
        ("max_bytes = 1024", "models.support-chat.cache.ttl_s"),
        (
            "ttl_s = 3600, max_bytes = 0",
            "models.support-chat.cache.max_bytes",
        ),
    ] {
        let e = error_of(&src.replacen("ttl_s = 3600, max_bytes = 1024", to, 1));
        assert_eq!(e.path, path, "{to}: {e}");
        assert!(e.line.is_some(), "{path} has no line");
    }
    let unknown = error_of(&src.replacen("max_bytes = 1024", "size = 1", 1));
    assert!(
        unknown.to_string().contains("unknown field `size`"),
        "{unknown}"
    );
}

#[test]
fn the_routing_example_in_the_repository_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/eu-primary-partner.toml");
    let src = std::fs::read_to_string(&path).expect("example file");
    let c =
        Config::parse(&src, |_| Some("sy-example-secret".into())).expect("the example is valid");
    let m = c.model("support-chat").expect("model");
    assert_eq!(m.targets.len(), 4);
    assert_eq!(m.hedge_after, Some(Duration::from_millis(3000)));
}

#[test]
fn dotted_names_are_quoted_in_paths_and_still_find_their_line() {
    let src = GOOD
        .replace("[models.support-chat]", "[models.\"gpt-4.1\"]")
        .replace(r#"["az-mini", "oa-mini"]"#, r#"["az-mini", "nope"]"#);
    let e = error_of(&src);
    assert_eq!(e.path, r#"models."gpt-4.1".deployments[1]"#);
    let expected_line = src
        .lines()
        .position(|l| l.contains("\"nope\""))
        .expect("line")
        + 1;
    assert_eq!(e.line, Some(expected_line));
}

#[test]
fn images_defaults_and_allowlist() {
    let c = Config::parse(GOOD, env).expect("valid");
    assert_eq!(c.images.max_bytes, 20 * 1024 * 1024);
    assert!(c.images.allow_hosts.is_empty());
    let src = format!("{GOOD}\n[images]\nmax_bytes = 1000\ntimeout_ms = 500\nallow_hosts = [\"127.0.0.1\", \"[::1]\", \"images.internal\"]\n");
    let c = Config::parse(&src, env).expect("valid");
    assert_eq!(c.images.max_bytes, 1000);
    assert_eq!(c.images.timeout, Duration::from_millis(500));
    assert_eq!(
        c.images.allow_hosts,
        ["127.0.0.1", "::1", "images.internal"]
    );
}

#[test]
fn images_errors_name_the_field() {
    let src = format!("{GOOD}\n[images]\nallow_hosts = [\"127.0.0.1\", \"http://x/\"]\n");
    let e = error_of(&src);
    assert_eq!(e.path, "images.allow_hosts[1]");
    let src = format!("{GOOD}\n[images]\nmax_bytes = 0\n");
    assert_eq!(error_of(&src).path, "images.max_bytes");
    let src = format!("{GOOD}\n[images]\nallow = []\n");
    assert!(error_of(&src).to_string().contains("allow"));
}

#[test]
fn state_is_optional_with_defaults() {
    let c = Config::parse(GOOD, env).expect("valid");
    assert!(c.state.is_none(), "no [state]: in-process state");
    let src = format!("{GOOD}\n[state]\nredis_url = \"redis://127.0.0.1:6379/\"\n");
    let s = Config::parse(&src, env)
        .expect("valid")
        .state
        .expect("state");
    assert_eq!(s.prefix, "switchyard:");
    assert_eq!(s.on_unavailable, OnUnavailable::Local);
    assert_eq!(s.timeout, Duration::from_millis(250));
    assert_eq!(s.redis_url.expose(), "redis://127.0.0.1:6379/");
    let src = format!(
        "{GOOD}\n[state]\nredis_url = \"redis://127.0.0.1:1/\"\nprefix = \"gw1:\"\non_unavailable = \"closed\"\ntimeout_ms = 50\n"
    );
    let s = Config::parse(&src, env)
        .expect("valid")
        .state
        .expect("state");
    assert_eq!(
        (s.prefix.as_str(), s.on_unavailable, s.timeout),
        ("gw1:", OnUnavailable::Closed, Duration::from_millis(50))
    );
}

#[test]
fn state_errors_name_the_field_and_hide_the_url() {
    let src = format!("{GOOD}\n[state]\nprefix = \"x:\"\n");
    assert_eq!(error_of(&src).path, "state.redis_url");
    let src = format!("{GOOD}\n[state]\nredis_url = \"http://:hunter2@h/\"\n");
    let e = error_of(&src);
    assert_eq!(e.path, "state.redis_url");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    let src = format!("{GOOD}\n[state]\nredis_url = \"redis://h/\"\non_unavailable = \"open\"\n");
    assert_eq!(error_of(&src).path, "state.on_unavailable");
    let src = format!("{GOOD}\n[state]\nredis_url = \"redis://h/\"\ntimeout_ms = 0\n");
    assert_eq!(error_of(&src).path, "state.timeout_ms");
    let src = format!("{GOOD}\n[state]\nredis_url = \"redis://h/\"\nprefix = \"a b\"\n");
    assert_eq!(error_of(&src).path, "state.prefix");
}

#[test]
fn storage_defaults_to_sqlite_and_postgres_takes_a_secret_url() {
    let c = Config::parse("", env).expect("empty");
    assert_eq!(c.storage, StorageConfig::Sqlite);
    assert!(c.ledger.enabled && c.ledger.retention_days.is_none());

    let pg_env = |name: &str| match name {
        "DATABASE_URL" => Some("postgres://sw:hunter2@db.internal:5432/sw".to_owned()),
        _ => None,
    };
    let c = Config::parse(
        "[storage]\nkind = \"postgres\"\nurl = \"${DATABASE_URL}\"\nmax_connections = 4\n\
         [ledger]\nretention_days = 30\n",
        pg_env,
    )
    .expect("postgres");
    let StorageConfig::Postgres(pg) = &c.storage else {
        panic!("not postgres: {:?}", c.storage);
    };
    assert_eq!(pg.url.expose(), "postgres://sw:hunter2@db.internal:5432/sw");
    assert_eq!(pg.max_connections, 4);
    assert!(
        !format!("{c:?}").contains("hunter2"),
        "the URL's password printed"
    );
    // The database holds both stores: no files.
    assert_eq!(c.ledger.path, None);
    assert_eq!(c.governance.store, None);
    assert!(c.ledger.enabled);
    assert_eq!(c.ledger.retention_days, Some(30));
}

#[test]
fn storage_errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        ("[storage]\nkind = \"postgres\"\n", "storage.url"),
        ("[storage]\nkind = \"mysql\"\n", "storage.kind"),
        ("[storage]\nurl = \"postgres://h/db\"\n", "storage.url"),
        ("[storage]\nkind = \"postgres\"\nurl = \"${NOPE}\"\n", "storage.url"),
        ("[storage]\nkind = \"postgres\"\nurl = \"mysql://u:secret@h/db\"\n", "storage.url"),
        (
            "[storage]\nkind = \"postgres\"\nurl = \"postgres://h/db\"\nmax_connections = 0\n",
            "storage.max_connections",
        ),
        (
            "[storage]\nkind = \"postgres\"\nurl = \"postgres://h/db\"\n[ledger]\npath = \"x.db\"\n",
            "ledger.path",
        ),
        (
            "[storage]\nkind = \"postgres\"\nurl = \"postgres://h/db\"\n[governance]\nstore = \"k.db\"\n",
            "governance.store",
        ),
        ("[ledger]\nretention_days = 0\n", "ledger.retention_days"),
    ];
    for (src, field) in cases {
        let e = error_of(src);
        assert_eq!(e.path, *field, "{src}: {e}");
        assert!(e.line.is_some(), "{src}: no line in {e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}

#[test]
fn channels_are_validated_field_by_field() {
    let with = |channel: &str| format!("{GOOD}\n[channels.voice]\n{channel}\n");
    let c = Config::parse(
        &with("ttft_slo_ms = 300\ntotal_slo_ms = 4000\nsystem_prompt = \"Be brief.\"\nmax_output_tokens = 200\nstop = [\"Bye.\"]\npii_output = \"redact\""),
        env,
    )
    .expect("valid");
    let voice = c.channel("voice").expect("channel");
    assert_eq!(voice.ttft_slo, Some(Duration::from_millis(300)));
    assert_eq!(voice.total_slo, Some(Duration::from_millis(4000)));
    assert_eq!(voice.pii_output, Some(PiiOutput::Redact));
    assert!(voice.rewrites_request());
    for (field, line, says) in [
        (
            "pii_output",
            "pii_output = \"mask\"",
            "unknown value `mask`",
        ),
        ("ttft_slo_ms", "ttft_slo_ms = 0", "greater than 0"),
        ("ttft_slo_ms", "ttft_slo_ms = 3600001", "at most"),
        (
            "total_slo_ms",
            "ttft_slo_ms = 500\ntotal_slo_ms = 400",
            "less than ttft_slo_ms",
        ),
        (
            "system_prompt",
            "system_prompt = \"  \"",
            "must not be empty",
        ),
        (
            "max_output_tokens",
            "max_output_tokens = 0",
            "greater than 0",
        ),
        (
            "stop",
            "stop = [\"a\", \"b\", \"c\", \"d\", \"e\"]",
            "at most 4",
        ),
        ("stop[1]", "stop = [\"a\", \"\\n\\n\"]", "whitespace"),
    ] {
        let e = error_of(&with(line));
        assert_eq!(e.path, format!("channels.voice.{field}"), "{line}");
        assert!(e.message.contains(says), "{line}: {e}");
    }
    // A name that could not travel in the header.
    let e = error_of(&format!("{GOOD}\n[channels.\"voice chat\"]\n"));
    assert!(e.message.contains("x-switchyard-channel"), "{e}");
}

#[test]
fn a_key_policy_may_name_only_configured_channels() {
    let src = GOOD.replace(
        "key = \"${APP_KEY}\"",
        "key = \"${APP_KEY}\"\npolicy = { channel = \"voice\", channels = [\"chat\"] }",
    );
    let e = error_of(&format!("{src}\n[channels.voice]\n"));
    assert_eq!(e.path, "keys[0].policy.channels[0]");
    assert!(e.message.contains("unknown channel `chat`"), "{e}");
    let e = error_of(&format!("{src}\n[channels.chat]\n"));
    assert_eq!(e.path, "keys[0].policy.channel");
    let c =
        Config::parse(&format!("{src}\n[channels.voice]\n[channels.chat]\n"), env).expect("valid");
    assert_eq!(c.channels.len(), 2);
}

#[test]
fn contracts_are_validated_and_reach_their_deployments() {
    let with = |contract: &str| format!("{GOOD}\n{contract}\n");
    let c = Config::parse(
        &with(
            "[contracts.eu]\nprovider = \"azure-eu\"\ncommitment_usd = \"500\"\ncap_usd = 800\n\
             [contracts.eu.prices.az-mini]\ninput = 0.1\noutput = 0.4\n",
        ),
        env,
    )
    .expect("valid");
    let eu = c.contracts.get("eu").expect("contract");
    assert_eq!(eu.deployments, vec!["az-mini".to_owned()]);
    assert_eq!(
        eu.commitment,
        Some(super::Commitment::Spend {
            nano_usd: 500_000_000_000
        })
    );
    assert_eq!(eu.cap_nano_usd, Some(800_000_000_000));
    let az = c
        .deployments
        .iter()
        .find(|d| d.name == "az-mini")
        .expect("az");
    assert_eq!(az.contract.as_ref().map(|k| k.name.as_str()), Some("eu"));
    assert_eq!(az.effective_price.input_per_mtok, 100_000_000);
    assert_ne!(az.effective_price, az.price);
    let oa = c
        .deployments
        .iter()
        .find(|d| d.name == "oa-mini")
        .expect("oa");
    assert!(oa.contract.is_none());
    assert_eq!(oa.effective_price, oa.price);

    for (contract, path, says) in [
        (
            "[contracts.x]\ndeployments = [\"nope\"]\ncap_usd = 1",
            "contracts.x.deployments[0]",
            "unknown deployment `nope`",
        ),
        ("[contracts.x]\ncap_usd = 1", "contracts.x", "covers nothing"),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]",
            "contracts.x",
            "sets no terms",
        ),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]\ncommitment_usd = 5\ncap_usd = 4",
            "contracts.x.cap_usd",
            "below commitment_usd",
        ),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]\ncommitment_usd = 5\ncommitment_tokens = 9",
            "contracts.x",
            "one commitment per contract",
        ),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]\ncap_usd = -1",
            "contracts.x.cap_usd",
            "non-negative amount",
        ),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]\ncap_usd = 1e300",
            "contracts.x.cap_usd",
            "non-negative amount",
        ),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]\ncap_usd = \"١٠\"",
            "contracts.x.cap_usd",
            "non-negative amount",
        ),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]\ncap_usd = 1\nperiod = \"week\"",
            "contracts.x.period",
            "unknown period",
        ),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]\ncap_usd = 1\nstart = \"2027-02-01\"\nend = \"2027-01-01\"",
            "contracts.x.end",
            "after start",
        ),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]\ncap_usd = 1\nstart = \"2027-02-30\"\nend = \"2027-03-01\"",
            "contracts.x.start",
            "not a UTC date",
        ),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]\nprovisioned_usd_per_hour = 2\n[contracts.x.prices.oa-mini]\ninput = 1",
            "contracts.x.prices.oa-mini",
            "no per-token price",
        ),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]\ncap_usd = 1\n[contracts.x.prices.az-mini]\ninput = 1",
            "contracts.x.prices.az-mini",
            "not a deployment this contract covers",
        ),
        (
            "[contracts.x]\ndeployments = [\"oa-mini\"]\ncap_usd = 1\n[contracts.y]\ndeployments = [\"oa-mini\"]\ncap_usd = 2",
            "contracts.y",
            "covered by contract `x` already",
        ),
    ] {
        let e = error_of(&with(contract));
        assert_eq!(e.path, path, "{contract}: {e}");
        assert!(e.message.contains(says), "{contract}: {e}");
    }
    // A wrong type is a parse error: its line, and what was expected.
    let src = with("[contracts.x]\ndeployments = [\"oa-mini\"]\ncap_usd = true");
    let e = error_of(&src);
    let line = src
        .lines()
        .position(|l| l == "cap_usd = true")
        .expect("line")
        + 1;
    assert_eq!(e.line, Some(line), "{e}");
    assert!(e.message.contains("expected an amount of USD"), "{e}");
}

#[test]
fn a_models_shadow_is_validated() {
    let base = "[models.support-chat]\ndeployments = [\"az-mini\", \"oa-mini\"]";
    let with = |shadow: &str| {
        GOOD.replace(
            base,
            &format!("{base}\n[models.support-chat.shadow]\n{shadow}"),
        )
    };
    let c = Config::parse(
        &with("deployment = \"oa-mini\"\nsample_rate = 0.25\nbudget_usd = \"2.50\""),
        env,
    )
    .expect("valid");
    let s = c
        .model("support-chat")
        .and_then(|m| m.shadow.clone())
        .expect("shadow");
    assert_eq!(s.candidate.name, "oa-mini");
    assert_eq!(s.sample_rate, 0.25);
    assert_eq!(s.budget_nano_usd_per_day, 2_500_000_000);
    assert_eq!(s.agree_at, 0.8);
    assert_eq!(s.model.targets.len(), 1);
    assert_eq!(s.model.retry.max_attempts, 1);
    assert!(
        s.embeddings.is_none(),
        "text is compared by words unless told"
    );
    let c = Config::parse(
        &with(
            "deployment = \"oa-mini\"\nsample_rate = 1\nbudget_usd = 1\nembeddings = \"az-mini\"",
        ),
        env,
    )
    .expect("valid");
    let e = c
        .model("support-chat")
        .and_then(|m| m.shadow.clone())
        .and_then(|s| s.embeddings.clone())
        .expect("an embeddings model");
    assert_eq!(e.deployment.name, "az-mini");
    assert_eq!(e.model.targets.len(), 1);
    assert_eq!(e.model.retry.max_attempts, 1);
    for (shadow, path, says) in [
        (
            "sample_rate = 1\nbudget_usd = 1",
            "shadow.deployment",
            "is required",
        ),
        (
            "deployment = \"nope\"\nsample_rate = 1\nbudget_usd = 1",
            "shadow.deployment",
            "unknown deployment `nope`",
        ),
        (
            "deployment = \"oa-mini\"\nbudget_usd = 1",
            "shadow.sample_rate",
            "is required",
        ),
        (
            "deployment = \"oa-mini\"\nsample_rate = 1.5\nbudget_usd = 1",
            "shadow.sample_rate",
            "from 0 to 1",
        ),
        (
            "deployment = \"oa-mini\"\nsample_rate = 1",
            "shadow.budget_usd",
            "is required",
        ),
        (
            "deployment = \"oa-mini\"\nsample_rate = 1\nbudget_usd = \"-1\"",
            "shadow.budget_usd",
            "non-negative",
        ),
        (
            "deployment = \"oa-mini\"\nsample_rate = 1\nbudget_usd = 1\nagree_at = 2",
            "shadow.agree_at",
            "from 0 to 1",
        ),
        (
            "deployment = \"oa-mini\"\nsample_rate = 1\nbudget_usd = 1\nembeddings = \"nope\"",
            "shadow.embeddings",
            "unknown deployment `nope`",
        ),
    ] {
        let e = error_of(&with(shadow));
        assert_eq!(
            e.path,
            format!("models.support-chat.{path}"),
            "{shadow}: {e}"
        );
        assert!(e.message.contains(says), "{shadow}: {e}");
    }
}
