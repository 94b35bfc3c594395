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
