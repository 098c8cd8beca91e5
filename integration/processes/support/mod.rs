//! Processes the root package's multi-process tests start, shared so each
//! test file does not spell out the same start-up and shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A `meridian global` process serving gRPC on a free loopback port; killed
/// (and reaped) when dropped.
pub struct GlobalProcess {
    pub child: Child,
    pub endpoint: String,
}

impl GlobalProcess {
    /// Starts a replica on the store at `store` and waits for its serving line.
    pub fn start(store: &str, name: &str) -> GlobalProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args([
                "global",
                "--store",
                store,
                "--listen",
                "127.0.0.1:0",
                "--name",
                name,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start meridian global");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let endpoint = loop {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).expect("read stdout") > 0,
                "meridian global exited before serving"
            );
            if let Some(rest) = line.trim().strip_prefix("meridian global: serving grpc=") {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        GlobalProcess { child, endpoint }
    }
}

impl Drop for GlobalProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-task job of a 10 ms simulated task, as small as a job gets.
// Not every test binary that shares this module submits jobs.
#[allow(dead_code)]
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
