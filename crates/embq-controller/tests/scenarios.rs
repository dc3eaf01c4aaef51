//! The controller against a mocked API server, scenario by scenario: each asserts the
//! exact sequence of API requests (and of calls to the stand-in workers). The last test
//! replays them all and compares the requests with the RBAC Role in deploy/.
//!
//! Split by topic under `scenarios/` (a crate root finds its modules next to it, hence the paths).

mod support;

#[path = "scenarios/capacity.rs"]
mod capacity;
#[path = "scenarios/fleet_guards.rs"]
mod fleet_guards;
#[path = "scenarios/leadership.rs"]
mod leadership;
#[path = "scenarios/rbac.rs"]
mod rbac;
#[path = "scenarios/restarts.rs"]
mod restarts;

type Requests = Vec<(String, String)>;
