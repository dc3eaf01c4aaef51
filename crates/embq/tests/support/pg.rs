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
