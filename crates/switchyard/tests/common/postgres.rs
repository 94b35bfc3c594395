//! A fresh PostgreSQL database per test, dropped afterwards.
//!
//! Shared by the library's unit tests (included with `#[path]`) and the integration
//! tests, so it uses nothing but sqlx. The server comes from
//! `SWITCHYARD_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`);
//! when it cannot be reached the test fails, saying so: these tests run in CI, they
//! are never skipped.

#![allow(dead_code)]

use sqlx::Connection;

/// The server's URL for tests.
pub fn server_url() -> String {
    std::env::var("SWITCHYARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// `url` with its database replaced by `db` (any query string kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let root = match base.get(authority_start..).and_then(|rest| rest.find('/')) {
        Some(slash) => base.get(..authority_start + slash).unwrap_or(base),
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// A database of its own for one test; dropped (with its connections) when this is.
pub struct TestDb {
    /// The URL of the new database.
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates `sw_<random>` on the test server.
    pub async fn create() -> TestDb {
        let admin_url = server_url();
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is needed for this test and is not reachable at {admin_url} \
                 (set SWITCHYARD_TEST_POSTGRES_URL): {e}"
                )
            });
        let name = format!("sw_{:016x}", rand::random::<u64>());
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
        let _ = conn.close().await;
        TestDb {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs outside async (and possibly while a test panics), so the database
        // is dropped from a runtime of its own on a thread of its own.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                let r = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
                r.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("warning: the test database {} was not dropped", self.name);
        }
    }
}

#[test]
fn database_names_replace_the_path() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "sw_1"),
        "postgres://postgres@127.0.0.1:5432/sw_1"
    );
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=disable", "sw_1"),
        "postgres://u:p@h/sw_1?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}
