//! A whole federation under test: `meridian dev` as a child of the test,
//! started by the shared launcher (`support::dev`: the addresses it
//! printed, its supervised children found by name, its stderr lines), with
//! a `kill -9` of a child by name, who leads what (from the lines the replicas' lease
//! electors log, [`leaders`]), and submitting and tracking many jobs
//! through the Federation API with the CLI's leader-following client.
//!
//! Every wait here is for an event (a line `meridian dev` or a child
//! writes, a message of a WatchJobs stream) under a guard that only stops
//! a hang; nothing asks a replica again and again until it answers.

#![allow(dead_code)]

pub mod leaders;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meridian_cli::client::{Client, ConnectArgs};
use meridian_proto::v1;

/// Failure guard of start-up steps; nothing waits this long when things work.
pub const GUARD: Duration = crate::support::dev::GUARD;

/// Sizes of the federation.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub regions: u16,
    pub shards: u32,
    pub simulated_nodes: u32,
    pub base_port: u16,
}

/// A running `meridian dev` (the shared launcher, [`crate::support::dev`],
/// whose addresses, children by name, stderr lines and CLI it derefs to)
/// with who leads what, stopped with SIGINT when dropped.
pub struct Dev {
    dev: crate::support::Dev,
    /// Who leads what, from the children's elector lines.
    pub leaders: leaders::Leaders,
    sizes: Sizes,
}

impl std::ops::Deref for Dev {
    type Target = crate::support::Dev;

    fn deref(&self) -> &crate::support::Dev {
        &self.dev
    }
}

impl Dev {
    /// Starts `meridian dev` on `data` and waits for its ready line.
    pub fn start(data: &Path, sizes: Sizes) -> Dev {
        Dev::start_with(data, sizes, &[])
    }

    /// [`Dev::start`] with further flags of `meridian dev` (e.g.
    /// `--real-agents 3`).
    pub fn start_with(data: &Path, sizes: Sizes, flags: &[&str]) -> Dev {
        // Watching before the first child starts, so no term is missed.
        let leaders = leaders::Leaders::follow(&data.join("logs"));
        let dev = crate::support::Dev::on(data)
            .base_port(sizes.base_port)
            .regions(sizes.regions)
            .simulated_nodes(sizes.simulated_nodes)
            .shards(sizes.shards)
            .grace_secs(5)
            .flags(flags)
            // Fault tests: they probe the replicas' HTTP status pages in
            // plain HTTP/1.1; mutual TLS under `meridian dev` is tested by
            // e2e_federation and dev_supervisor.
            .insecure()
            .env("RUST_LOG", leaders::LOG_FILTER)
            .start();
        Dev {
            dev,
            leaders,
            sizes,
        }
    }

    /// `kill -9` of child `name`; returns the pid killed.
    pub fn kill9(&self, name: &str) -> i32 {
        let pid = self
            .pid_of(name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9");
        self.leaders.killed(name);
        pid
    }

    /// Waits until `meridian dev` says it restarted `name` (its supervisor
    /// prints that once the new process printed its ready line) and it runs
    /// under a pid other than `old_pid`; returns the time since `killed_at`.
    ///
    /// A line left from an earlier restart of `name` (one nobody waited
    /// for) is passed over: only a line after which `name` runs under a new
    /// pid ends the wait.
    pub fn await_restart(&self, name: &str, old_pid: i32, killed_at: Instant) -> Duration {
        let said = format!("meridian dev: {name} restarted");
        let deadline = Instant::now() + GUARD;
        loop {
            self.await_stderr(&format!("{name} restarted"), |line| line == said);
            if self.pid_of(name).is_some_and(|p| p != old_pid) {
                return killed_at.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{name} restarted: not within {GUARD:?}"
            );
        }
    }

    /// The next line of `meridian dev`'s standard error that `wanted`
    /// accepts (one no earlier wait took: two children may restart at
    /// once); panics after [`GUARD`].
    pub fn await_stderr(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        self.stderr_through(what, wanted)
            .pop()
            .expect("the line waited for")
    }

    /// A leader-following client of the global tier.
    pub fn client(&self) -> Client {
        Client::new(&ConnectArgs::new(
            self.endpoint.clone(),
            Duration::from_secs(60),
        ))
        .expect("client")
    }

    /// Waits until a global replica has logged that it leads (and has not
    /// stepped down or been killed since); returns its name.
    pub fn await_global_leader(&self) -> String {
        self.leaders.until("a global leader", GUARD, |terms| {
            terms.global_leader().map(|t| t.holder.clone())
        })
    }

    /// The global replica leading as far as the lines read so far say.
    pub fn global_leader_now(&self) -> Option<String> {
        self.leaders
            .now(|terms| terms.global_leader().map(|t| t.holder.clone()))
    }

    /// Waits until every shard of `region` has a leader; returns shard ->
    /// (leader replica, epoch).
    pub fn await_shards_led(&self, region: &str) -> BTreeMap<u64, (String, u64)> {
        let shards = self.sizes.shards as usize;
        self.leaders
            .until(&format!("every shard of {region} led"), GUARD, |terms| {
                let led = terms.shards(region);
                (led.len() == shards).then_some(led)
            })
    }

    /// Waits until every shard of `region` has a leader; returns the
    /// replica leading the most of them, and shard -> (leader, epoch).
    pub fn busiest_replica(&self, region: &str) -> (String, BTreeMap<u64, (String, u64)>) {
        let shards = self.await_shards_led(region);
        let mut led: BTreeMap<&str, usize> = BTreeMap::new();
        for (leader, _) in shards.values() {
            *led.entry(leader).or_default() += 1;
        }
        let busiest = led
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(name, _)| name.to_string())
            .expect("every shard led");
        (busiest, shards)
    }
}

/// GET of a JSON document over plain HTTP/1.1 (`http://host:port/path`);
/// `None` when unreachable or not a 200 with JSON.
pub fn http_get_json(url: &str) -> Option<serde_json::Value> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{p}")),
        None => (rest, "/".to_string()),
    };
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    serde_json::from_str(&body).ok()
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A file in `dir` that tasks append to. `meridian dev` runs its agents as
/// root, so their tasks run as `nobody`: the directory must let them
/// through and the file must take their writes.
pub fn file_for_tasks(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::Permissions::from_mode;
    std::fs::set_permissions(dir, mode(0o711)).expect("open the directory to tasks");
    let file = dir.join(name);
    std::fs::write(&file, b"").expect("create the file");
    std::fs::set_permissions(&file, mode(0o666)).expect("open the file to tasks");
    file
}

/// A one-task job running `sh -c script` on a real node.
pub fn sh_job(name: &str, script: &str, exclusive: bool) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        tenant: "e2e".into(),
        task_count: 1,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Command(v1::Command {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                env: Default::default(),
                working_dir: String::new(),
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis: 100,
            memory_bytes: 64 << 20,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        exclusive,
        retry: Some(v1::RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        }),
        stop_grace_period_ms: 1_000,
        ..Default::default()
    }
}

/// A one-task simulated job lasting `ms`.
pub fn simulated_job(name: &str, ms: u64) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        tenant: "e2e".into(),
        task_count: 1,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Simulated(v1::Simulated {
                duration_ms: ms,
                exit_code: 0,
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis: 100,
            memory_bytes: 64 << 20,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        retry: Some(v1::RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Submits `specs` with request ids `{prefix}-{i}` in batches of `batch`
/// through SubmitJobs (following the leader; a retried batch keeps its ids,
/// so it creates nothing twice). Returns request id -> job id of every
/// acknowledged item.
pub async fn submit_all(
    client: &mut Client,
    prefix: &str,
    specs: Vec<v1::JobSpec>,
    batch: usize,
) -> BTreeMap<String, String> {
    let mut acked = BTreeMap::new();
    let items: Vec<v1::SubmitJobRequest> = specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| v1::SubmitJobRequest {
            request_id: format!("{prefix}-{i}"),
            spec: Some(spec),
        })
        .collect();
    for chunk in items.chunks(batch) {
        let request = v1::SubmitJobsRequest {
            items: chunk.to_vec(),
        };
        let response = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.submit_jobs(r).await }
            })
            .await
            .expect("a batch of submits is acknowledged");
        assert_eq!(response.results.len(), chunk.len());
        for (item, result) in chunk.iter().zip(response.results) {
            match result.outcome {
                Some(v1::submit_job_result::Outcome::Accepted(j)) => {
                    acked.insert(item.request_id.clone(), j.job_id);
                }
                other => panic!("submit {} refused: {other:?}", item.request_id),
            }
        }
    }
    acked
}

/// Every job of the federation (all pages of ListJobs), by job id.
pub async fn list_all(client: &mut Client) -> BTreeMap<String, v1::Job> {
    let mut jobs = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let request = v1::ListJobsRequest {
            page_size: 1000,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let page = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.list_jobs(r).await }
            })
            .await
            .expect("list jobs");
        for j in page.jobs {
            jobs.insert(j.job_id.clone(), j);
        }
        page_token = page.next_page_token;
        if page_token.is_empty() {
            return jobs;
        }
    }
}

/// Whether a job state is final.
pub fn is_final(state: i32) -> bool {
    meridian_cli::job::is_terminal(state)
}

/// Counts of jobs per state name.
pub fn states(jobs: &BTreeMap<String, v1::Job>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for j in jobs.values() {
        let name = v1::JobState::try_from(j.state)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| j.state.to_string());
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// Jobs as seen through WatchJobs: opened before the first submit,
/// resumed from its cursor (through the leader-following client) whenever
/// the stream breaks, so no event is missed while global replicas die.
/// Keeps the latest event of each job, by job id.
pub struct Tracker {
    jobs: tokio::sync::watch::Receiver<BTreeMap<String, v1::Job>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tracker {
    /// Starts watching every job event from now on.
    pub async fn start(mut client: Client) -> Tracker {
        let (tx, jobs) = tokio::sync::watch::channel(BTreeMap::new());
        let request = v1::WatchJobsRequest::default();
        let first = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.watch_jobs(r).await }
            })
            .await
            .expect("open the watch");
        let task = tokio::spawn(async move {
            let mut stream = Some(first);
            let mut cursor = Vec::new();
            loop {
                let mut s = match stream.take() {
                    Some(s) => s,
                    None => {
                        let request = v1::WatchJobsRequest {
                            cursor: cursor.clone(),
                            ..Default::default()
                        };
                        // The client sends the call again as the retry
                        // rule says, for up to its deadline; past that no
                        // replica serves, and the tracker ends (the waits
                        // on it then fail, naming the jobs not seen).
                        match client
                            .call(|mut c| {
                                let r = request.clone();
                                async move { c.watch_jobs(r).await }
                            })
                            .await
                        {
                            Ok(s) => s,
                            Err(e) => {
                                eprintln!("tracker: no replica serves WatchJobs: {e}");
                                return;
                            }
                        }
                    }
                };
                loop {
                    match tokio::time::timeout(Duration::from_secs(15), s.message()).await {
                        Ok(Ok(Some(event))) => {
                            cursor = event.cursor.clone();
                            if let Some(j) = event.job {
                                // A final state stays: an event of an
                                // earlier state sent again after a resume
                                // does not undo it.
                                tx.send_modify(|m: &mut BTreeMap<String, v1::Job>| {
                                    let ended = m.get(&j.job_id).is_some_and(|o| is_final(o.state));
                                    if !ended || is_final(j.state) {
                                        m.insert(j.job_id.clone(), j);
                                    }
                                });
                            }
                        }
                        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                            client.move_on();
                            break;
                        }
                    }
                }
            }
        });
        Tracker { jobs, task }
    }

    /// Waits until `check` gives a value from the jobs seen so far, looking
    /// again at each event; panics after `guard`, naming `what`.
    pub async fn until<T>(
        &mut self,
        what: &str,
        guard: Duration,
        mut check: impl FnMut(&BTreeMap<String, v1::Job>) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + guard;
        loop {
            if let Some(v) = check(&self.jobs.borrow_and_update()) {
                return v;
            }
            match tokio::time::timeout_at(deadline, self.jobs.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("{what}: the watch of jobs ended"),
                Err(_) => panic!("{what}: not within {guard:?}"),
            }
        }
    }

    /// Waits until every job of `ids` is final or `guard` passes; then
    /// returns the listing of all jobs and how long the wait took.
    pub async fn await_all_final(
        &mut self,
        client: &mut Client,
        ids: &std::collections::BTreeSet<String>,
        guard: Duration,
    ) -> (BTreeMap<String, v1::Job>, Duration) {
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let open = {
                let jobs = self.jobs.borrow_and_update();
                ids.iter()
                    .filter(|id| jobs.get(*id).is_none_or(|j| !is_final(j.state)))
                    .count()
            };
            if open == 0 {
                break;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                println!(
                    "  {:>5.1} s: {open} of {} jobs not final yet",
                    started.elapsed().as_secs_f64(),
                    ids.len()
                );
                last_report = Instant::now();
            }
            let left = guard.saturating_sub(started.elapsed());
            if left.is_zero()
                || tokio::time::timeout(left.min(Duration::from_secs(5)), self.jobs.changed())
                    .await
                    .is_ok_and(|r| r.is_err())
            {
                break;
            }
        }
        let elapsed = started.elapsed();
        let jobs = list_all(client).await;
        let open: Vec<&String> = ids
            .iter()
            .filter(|id| jobs.get(*id).is_none_or(|j| !is_final(j.state)))
            .collect();
        assert!(
            open.is_empty(),
            "{} of {} jobs not final after {:?}: {:?}",
            open.len(),
            ids.len(),
            elapsed,
            states(&jobs)
        );
        (jobs, elapsed)
    }
}
