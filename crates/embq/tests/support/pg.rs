//! PostgreSQL for the tests: the suite's shared server, throwaway databases, private clusters.

use sqlx::Connection;

use super::free_port;

/// The PostgreSQL server the suite runs against; `scripts/test.sh` starts one.
pub fn pg_admin_url() -> String {
    std::env::var("EMBQ_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("EMBQ_TEST_DATABASE_URL is not set: run the suite with scripts/test.sh, which starts PostgreSQL")
    })
}

/// The PgBouncer (transaction mode) in front of it.
pub fn pgbouncer_admin_url() -> String {
    std::env::var("EMBQ_TEST_PGBOUNCER_URL").unwrap_or_else(|_| {
        panic!("EMBQ_TEST_PGBOUNCER_URL is not set: run the suite with scripts/test.sh, which starts PgBouncer")
    })
}

/// Replaces the database name of a URL.
pub fn with_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("test URL parses");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// A fresh, empty database; returns its direct URL.
pub async fn fresh_pg_db() -> String {
    let admin = pg_admin_url();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
    let _ = conn.close().await;
    with_db(&admin, &name)
}

/// A private PostgreSQL cluster this test may stop and start; removed on drop.
pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    /// Port it listens on (127.0.0.1).
    pub port: u16,
}

fn as_postgres(program: &std::path::Path) -> std::process::Command {
    // initdb and postgres refuse to run as root: use the postgres account there.
    let is_root = std::process::Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    if is_root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    }
}

impl PrivatePg {
    /// initdb + start on a free port.
    pub fn start() -> Self {
        let bin = std::path::PathBuf::from(
            std::env::var("EMBQ_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        let dir = tempfile::Builder::new().prefix("embq-private-pg").tempdir().expect("tempdir");
        // The postgres account must be able to write here.
        let _ = std::process::Command::new("chmod").arg("777").arg(dir.path()).status();
        let data = dir.path().join("data");
        let out = as_postgres(&bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n",
            dir.path().display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
            .expect("write postgresql.conf");
        let pg = Self { dir, bin, port };
        pg.pg_ctl("start");
        pg
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("postgres.log");
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(&data).arg("-l").arg(&log).args(["-w", "-t", "60", "-m", "fast", action]);
        let out = c.output().expect("run pg_ctl");
        assert!(out.status.success(), "pg_ctl {action} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        self.pg_ctl("start");
    }

    /// URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&self.bin.join("pg_ctl")).arg("-D").arg(&data).args(["-m", "immediate", "stop"]).output();
    }
}

/// The non-superuser role that owns Supabase-like test databases and runs their migrations.
pub const OWNER_ROLE: &str = "embq_owner";

/// Creates a role unless it exists; tests racing to create it are fine.
async fn ensure_role(conn: &mut sqlx::PgConnection, ddl: &str) {
    if let Err(e) = sqlx::raw_sql(ddl).execute(&mut *conn).await {
        let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.to_string());
        // 42710: duplicate object; 23505: two sessions inserted the same role name at once.
        assert!(matches!(code.as_deref(), Some("42710" | "23505")), "{ddl}: {e}");
    }
}

/// A fresh database laid out as Supabase lays it out: pgvector in schema `extensions`, the roles
/// `anon` and `authenticated`, and the database owned by a non-superuser ([`OWNER_ROLE`]), whose
/// URL is returned (it runs `embq migrate` and the workers, as `postgres` does on Supabase).
pub async fn fresh_supabase_db() -> String {
    let admin = pg_admin_url();
    let url = fresh_pg_db().await;
    let db = url::Url::parse(&url).expect("test URL parses").path().trim_start_matches('/').to_string();
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test PostgreSQL");
    ensure_role(&mut conn, &format!("CREATE ROLE {OWNER_ROLE} LOGIN NOSUPERUSER NOCREATEROLE")).await;
    ensure_role(&mut conn, "CREATE ROLE authenticated NOLOGIN NOINHERIT").await;
    ensure_role(&mut conn, "CREATE ROLE anon NOLOGIN NOINHERIT").await;
    sqlx::raw_sql(&format!("ALTER DATABASE {db} OWNER TO {OWNER_ROLE}"))
        .execute(&mut conn)
        .await
        .expect("hand the database to its owner");
    let _ = conn.close().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect to the new database");
    sqlx::raw_sql(
        "CREATE SCHEMA extensions;
         CREATE EXTENSION vector WITH SCHEMA extensions;
         GRANT USAGE ON SCHEMA extensions TO PUBLIC;",
    )
    .execute(&mut conn)
    .await
    .expect("install pgvector in schema extensions (is pgvector built? scripts/test.sh builds it)");
    let _ = conn.close().await;
    let mut u = url::Url::parse(&url).expect("test URL parses");
    u.set_username(OWNER_ROLE).expect("URL takes a user name");
    u.to_string()
}
