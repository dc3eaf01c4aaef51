//! The deploy guide's read-only roles on a Supabase-like database: the database after
//! `embq migrate` and the app's recipe, the roles created as the guide says, a seeded backlog.

use sqlx::{Connection, PgConnection};

/// The app's table and trigger on Supabase (README.md's recipe): what the roles must not read.
const RECIPE: &str = include_str!("../../../../examples/supabase/documents.sql");
/// The KEDA scaler's role (deploy/README.md, "KEDA").
pub const KEDA_ROLE_SQL: &str = include_str!("../../../../deploy/kubernetes/components/keda/readonly-role.sql");
/// The queue exporter's role (deploy/README.md, "Backlog without workers").
pub const EXPORTER_ROLE_SQL: &str =
    include_str!("../../../../deploy/kubernetes/components/queue-exporter/readonly-role.sql");
/// How long ago the oldest due job was queued in the seeded backlog.
pub const OLDEST_AGE_SECS: f64 = 120.0;
/// Due ready jobs in the seeded backlog.
pub const DUE_READY_JOBS: f64 = 3.0;

/// The role a role-creation script creates (`CREATE ROLE <name> ...`).
pub fn role_name(sql: &str) -> &str {
    let rest = sql.split("CREATE ROLE ").nth(1).expect("the script creates a role");
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
    &rest[..end]
}

/// A Supabase-like database after `embq migrate` and the app's recipe; returns the owner's URL.
pub async fn migrated_db() -> String {
    let url = super::pg::fresh_supabase_db().await;
    let cfg = super::config_at(&url, &[("EMBEDDING_DIMENSIONS", "1536")]);
    let q = embq::queue::connect(&cfg.store()).await.expect("open store");
    q.migrate().await.expect("migrate as the database owner");
    let mut owner = PgConnection::connect(&url).await.expect("connect as the owner");
    sqlx::raw_sql(RECIPE).execute(&mut owner).await.expect("the recipe runs as the owner");
    url
}

pub fn as_user(url: &str, user: &str) -> String {
    let mut u = url::Url::parse(url).expect("test URL parses");
    u.set_username(user).expect("URL takes a user name");
    u.to_string()
}

/// Runs a role-creation script as Supabase's `postgres` runs it from the SQL editor: a
/// non-superuser with CREATEROLE that owns embq's objects (here: a member of the owner). The
/// role gets a name of its own per test (roles are cluster-wide); returns it.
pub async fn create_role(owner_url: &str, script: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let documented = role_name(script);
    let role = format!("{documented}_{}", &suffix[..12]);
    let admin = format!("dba_{}", &suffix[..12]);
    let mut su = PgConnection::connect(&super::pg::pg_admin_url()).await.expect("connect as superuser");
    sqlx::raw_sql(&format!(
        "CREATE ROLE {admin} LOGIN CREATEROLE NOSUPERUSER; GRANT {} TO {admin};",
        super::pg::OWNER_ROLE
    ))
    .execute(&mut su)
    .await
    .expect("create the SQL editor's role");
    let mut dba = PgConnection::connect(&as_user(owner_url, &admin)).await.expect("connect as the admin");
    sqlx::raw_sql(&script.replace(documented, &role))
        .execute(&mut dba)
        .await
        .unwrap_or_else(|e| panic!("the documented role SQL fails: {e}"));
    role
}

/// A backlog with every state: 3 due ready jobs (the oldest queued [`OLDEST_AGE_SECS`] ago),
/// one ready but scheduled later, and one each running, done, dead and superseded.
pub async fn seed(owner: &mut PgConnection) {
    for id in ["r1", "r2", "r3", "later", "run", "done", "dead", "old"] {
        sqlx::query("SELECT embq.enqueue('doc', $1, 'text of ' || $1)").bind(id).execute(&mut *owner).await.unwrap();
    }
    sqlx::raw_sql(&format!(
        "UPDATE embq.jobs SET run_at = now() - interval '{OLDEST_AGE_SECS} seconds' WHERE source_id = 'r1';
         UPDATE embq.jobs SET run_at = now() + interval '1 hour' WHERE source_id = 'later';
         UPDATE embq.jobs SET state = 'running', lease_owner = 'w', lease_expires_at = now() + interval '1 minute'
          WHERE source_id = 'run';
         UPDATE embq.jobs SET state = 'done', finished_at = now() WHERE source_id = 'done';
         UPDATE embq.jobs SET state = 'dead', finished_at = now(), run_at = now() - interval '1 day'
          WHERE source_id = 'dead';
         UPDATE embq.jobs SET state = 'superseded', finished_at = now(), run_at = now() - interval '1 day'
          WHERE source_id = 'old';"
    ))
    .execute(&mut *owner)
    .await
    .expect("seed the backlog");
}
