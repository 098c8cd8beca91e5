//! What the root package's multi-process tests share, so each test file
//! does not spell out the same start-up and shutdown: [`launch`] starts a
//! program and ends it with the test, [`roles`] starts the federation's
//! roles one by one from their `meridian_cli::dev::line` command lines and
//! reads the addresses they print, [`dev`] starts a whole `meridian dev`
//! federation (the flags tests differ in, what it prints, its children by
//! name, its stderr lines, the CLI with its client config and token),
//! [`fake_agent`] registers nodes the test drives itself, [`retry`] sends a
//! call again as the product's clients do until a replica serves it,
//! [`wait`] awaits process exits (pidfd), lines tasks write into FIFOs and
//! conditions on files tasks write (inotify).

// Each test binary that includes this module uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod dev;
pub mod fake_agent;
pub mod launch;
pub mod retry;
pub mod roles;
pub mod wait;

pub use dev::{Dev, DevLaunch};
pub use fake_agent::register_node;
pub use launch::{Launch, Log, Proc, Stderr};
pub use roles::{Agent, Global, Regional};

/// A loopback address whose port is free right now, for a process that must
/// be reachable at an address known before it starts, or come back on the
/// same one after a restart (port 0 would pick a new port each time).
pub fn free_loopback_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a probe socket")
        .local_addr()
        .expect("probe address")
}

/// A one-task job of a 10 ms simulated task, as small as a job gets.
pub fn tiny_job(name: &str, tenant: &str) -> meridian_proto::v1::JobSpec {
    use meridian_proto::v1::{JobSpec, Resources, Simulated, TaskTemplate, task_template};
    JobSpec {
        name: name.into(),
        tenant: tenant.into(),
        task_count: 1,
        task: Some(TaskTemplate {
            kind: Some(task_template::Kind::Simulated(Simulated {
                duration_ms: 10,
                exit_code: 0,
            })),
        }),
        resources: Some(Resources {
            cpu_millis: 100,
            memory_bytes: 1 << 20,
            ..Resources::default()
        }),
        ..JobSpec::default()
    }
}
