//! `switchyard config check` against a key store: a config key may not take the name
//! of a virtual key. Runs the real binary.

use std::process::{Command, Output};

fn switchyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("TWIN_KEY", "sy-twin-key-0123456789")
        .output()
        .expect("run switchyard")
}

#[test]
fn config_check_refuses_a_key_name_taken_in_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("switchyard.db");
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[ledger]\npath = \"{}\"\n\n[[keys]]\nname = \"twin\"\nkey = \"${{TWIN_KEY}}\"\n",
            db.display()
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8");
    let db = db.to_str().expect("utf-8");

    let ok = switchyard(&["config", "check", config]);
    assert!(ok.status.success(), "{ok:?}");

    // Created without the config file at hand, so nothing stopped the name.
    let missing = dir.path().join("none.toml");
    let created = switchyard(&[
        "--config",
        missing.to_str().expect("utf-8"),
        "keys",
        "create",
        "twin",
        "--store",
        db,
    ]);
    assert!(created.status.success(), "{created:?}");

    let refused = switchyard(&["config", "check", config]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("keys[0].name") && stderr.contains("`twin`"),
        "{stderr}"
    );

    // And the other way round: with the config file, the name is refused.
    let again = switchyard(&["--config", config, "keys", "create", "twin"]);
    assert!(!again.status.success(), "{again:?}");
}

/// A fresh PostgreSQL database on the test server: (admin URL, its name, its URL).
async fn fresh_postgres() -> (String, String, String) {
    use sqlx::Connection;
    let admin = std::env::var("SWITCHYARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is needed at {admin} (SWITCHYARD_TEST_POSTGRES_URL): {e}")
        });
    let name = format!("sw_check_{:016x}", rand::random::<u64>());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let _ = conn.close().await;
    let (base, _) = admin.rsplit_once('/').expect("the URL names a database");
    let url = format!("{base}/{name}");
    (admin, name, url)
}

#[tokio::test]
async fn config_check_on_postgres_leaves_the_schema_alone() {
    use sqlx::Connection;
    let (admin, name, url) = fresh_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nkind = \"postgres\"\nurl = \"{url}\"\n\n[[keys]]\nname = \"twin\"\nkey = \"${{TWIN_KEY}}\"\n"
        ),
    )
    .expect("write config");
    let checked = switchyard(&["config", "check", config.to_str().expect("utf-8")]);

    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to the checked database");
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count tables");
    let _ = conn.close().await;
    if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut c)
            .await;
    }
    assert!(checked.status.success(), "{checked:?}");
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(
        !stderr.contains("warning: key names not checked"),
        "{stderr}"
    );
    assert_eq!(
        tables, 0,
        "config check created tables: it must not migrate"
    );
}

#[test]
fn a_key_created_from_the_cli_may_name_only_configured_channels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("switchyard.db");
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[ledger]\npath = \"{}\"\n\n[channels.voice]\nttft_slo_ms = 800\n\n[channels.chat]\n",
            db.display()
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8");
    let refused = switchyard(&[
        "--config",
        config,
        "keys",
        "create",
        "agent",
        "--channel",
        "fax",
    ]);
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("policy channel") && stderr.contains("`fax`"),
        "{stderr}"
    );
    let created = switchyard(&[
        "--config",
        config,
        "keys",
        "create",
        "agent",
        "--channel",
        "voice",
        "--channels",
        "chat",
    ]);
    assert!(created.status.success(), "{created:?}");
    let listed = switchyard(&["--config", config, "keys", "list"]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        stdout.contains(r#""channel":"voice""#) && stdout.contains(r#""channels":["chat"]"#),
        "{stdout}"
    );
}
