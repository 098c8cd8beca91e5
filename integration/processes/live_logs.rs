//! Live task output through every tier, all as processes: `meridian global`
//! replicas, a `meridian regional` and a `meridian agent` (real node, real
//! processes), followed with the real `meridian job logs -f`.
//!
//! - each line a task writes every 100 ms reaches `job logs -f` while the
//!   task is still running (line k is printed before the task has written
//!   line k+5), and the follow ends once the task has ended, after its
//!   last line;
//! - a follow whose global replica is killed mid-stream goes on through
//!   the other replica from the offsets it has: every line exactly once;
//! - a follower that starts late gets the tail first, then the live lines;
//! - a task writing 100 MB as fast as it can, followed by a reader that
//!   does not read until the task has ended: the agent, region and global
//!   processes grow by a few MiB at most, and every byte is either printed
//!   or counted as skipped;
//! - following the latest attempt goes on with the retry of a failed one
//!   (announced on stderr) and ends with the task; a given attempt ends
//!   with that attempt;
//! - the federation console's job page (Debian's headless Chromium) shows
//!   the lines as they come while the task runs, then that it ended.
//!
//! The task writes each line to its standard output and then to a witness
//! file the test reads: what the task has written so far is read from that
//! file, not guessed from time. Nothing sleeps: the test waits on the
//! lines the CLI prints, on process exits and on the API's streams, each
//! under a guard that only stops a hang.

use crate::console_support;
use crate::support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meridian_cli::dev::line::{AgentLine, GlobalLine, LOOPBACK_ANY_PORT, RegionalLine};
use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use support::{Agent, Global, Launch, Proc, Regional, Stderr};
use tonic::transport::Channel;

/// Failure guard only: no step waits this long when things work.
const GUARD: Duration = Duration::from_secs(90);
/// Log filter of the agent: warnings, and the line it logs once its node is
/// registered.
const AGENT_LOG: &str = "warn,meridian_agent::node=info";
const GIB: u64 = 1 << 30;
/// Lines the task writes, one every 100 ms.
const LINES: u32 = 30;

/// One region `r1` with one real node, and `replicas` global replicas on
/// one store.
struct Federation {
    globals: Vec<Global>,
    region: Proc,
    agent: Proc,
    /// A directory the task (possibly another user) may write in.
    shared: PathBuf,
    _dir: tempfile::TempDir,
}

impl Federation {
    async fn start(replicas: usize) -> Federation {
        Federation::start_with(replicas, false).await
    }

    /// With `http`, every global replica serves HTTP (API and console).
    async fn start_with(replicas: usize, http: bool) -> Federation {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = format!("sqlite:{}", dir.path().join("global.db").display());
        let globals: Vec<Global> = (0..replicas)
            .map(|i| {
                let mut line =
                    GlobalLine::new(store.clone(), LOOPBACK_ANY_PORT).name(format!("g{i}"));
                if http {
                    line = line.http(LOOPBACK_ANY_PORT);
                }
                Global::start_with(&line, Launch::interrupt_on_drop)
            })
            .collect();
        let region_store = format!("sqlite:{}", dir.path().join("r1.db").display());
        let mut line = RegionalLine::new("r1", region_store, support::free_loopback_addr(), 1)
            .shard_lease_ms(500);
        line.global = Some(
            globals
                .iter()
                .map(|g| g.grpc.clone())
                .collect::<Vec<_>>()
                .join(","),
        );
        let region = Regional::start_with(&line, Launch::interrupt_on_drop);
        let agent_line = AgentLine::new(
            vec![region.url()],
            "node-1",
            dir.path().join("agent"),
            2.0,
            4 * GIB,
        );
        let agent = Agent::start_with(&agent_line, |l| {
            l.interrupt_on_drop()
                .env("RUST_LOG", AGENT_LOG)
                .stderr(Stderr::Capture)
        })
        .proc;
        agent
            .log()
            .until(&["registered", "node=node-1"], GUARD)
            .await
            .expect("the node registered");
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("shared dir");
        open_to_tasks(&shared, 0o777);
        Federation {
            globals,
            region: region.proc,
            agent,
            shared,
            _dir: dir,
        }
    }

    fn endpoints(&self) -> String {
        self.globals
            .iter()
            .map(|g| g.grpc.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn client(&self) -> FederationClient<Channel> {
        FederationClient::connect(self.globals[0].grpc.clone())
            .await
            .expect("connect to the global tier")
    }

    /// Submits the task that prints `ready`, waits for the file `go`, then
    /// writes `line 1` .. `line 30`, each to stdout and then to the witness
    /// file, and after each line `k` waits for the file `go.k` ([`release`])
    /// before the next: a test that sees line `k` before it releases it
    /// knows the task was still running and had written nothing more, with
    /// no assumption about how fast anything is. Returns the job id, the
    /// witness file and the `go` file.
    async fn submit_paced_lines(&self, name: &str) -> (String, PathBuf, PathBuf) {
        let witness = self.shared.join(format!("{name}.witness"));
        let go = self.shared.join(format!("{name}.go"));
        let script = format!(
            "echo ready; while [ ! -e {go} ]; do sleep 0.02; done; \
             for i in $(seq 1 {LINES}); do echo \"line $i\"; echo \"line $i\" >> {witness}; \
             while [ ! -e {go}.$i ]; do sleep 0.02; done; done",
            go = go.display(),
            witness = witness.display()
        );
        let job_id = self.submit_script(name, script, 1).await;
        (job_id, witness, go)
    }

    /// Submits the task that prints `ready`, waits for the file `go` (the
    /// task polls for it, the test does not), then writes `line 1` ..
    /// `line 30`, one every 100 ms, each to stdout and then to the witness
    /// file. Returns the job id, the witness file and the `go` file.
    async fn submit_lines(&self, name: &str) -> (String, PathBuf, PathBuf) {
        let witness = self.shared.join(format!("{name}.witness"));
        let go = self.shared.join(format!("{name}.go"));
        let script = format!(
            "echo ready; while [ ! -e {go} ]; do sleep 0.02; done; \
             for i in $(seq 1 {LINES}); do echo \"line $i\"; echo \"line $i\" >> {witness}; sleep 0.1; done",
            go = go.display(),
            witness = witness.display()
        );
        let job_id = self.submit_script(name, script, 1).await;
        (job_id, witness, go)
    }

    /// Submits `sh -c script` with up to `max_attempts` attempts, retried
    /// 100 ms after a failure; returns the job id.
    async fn submit_script(&self, name: &str, script: String, max_attempts: u32) -> String {
        let spec = v1::JobSpec {
            name: name.into(),
            tenant: "team-a".into(),
            task_count: 1,
            task: Some(v1::TaskTemplate {
                kind: Some(v1::task_template::Kind::Command(v1::Command {
                    program: "/bin/sh".into(),
                    args: vec!["-c".into(), script],
                    ..v1::Command::default()
                })),
            }),
            resources: Some(v1::Resources {
                cpu_millis: 500,
                memory_bytes: GIB / 4,
                ..v1::Resources::default()
            }),
            retry: Some(v1::RetryPolicy {
                max_attempts,
                backoff_base_ms: 100,
                backoff_cap_ms: 100,
            }),
            // The failover test kills a global replica; the task is not
            // to be stopped for it.
            on_region_loss: v1::RegionLossPolicy::KeepRunning as i32,
            ..Default::default()
        };
        self.client()
            .await
            .submit_job(v1::SubmitJobRequest {
                request_id: format!("req-{name}"),
                spec: Some(spec),
            })
            .await
            .expect("submit")
            .into_inner()
            .job_id
    }
}

/// Gives `path` the mode `mode`, so that a task running as the agent's
/// unprivileged run-as user can write what the test shares with it.
fn open_to_tasks(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Lets a paced task ([`Federation::submit_paced_lines`]) go on past
/// `line k`.
fn release(go: &Path, k: u32) {
    std::fs::write(format!("{}.{k}", go.display()), b"").expect("release a line");
}

/// Lines of the witness file: what the task has written so far.
fn written(witness: &Path) -> u32 {
    std::fs::read_to_string(witness)
        .map(|t| t.lines().count() as u32)
        .unwrap_or(0)
}

/// A `meridian job logs -f` child, killed if the test ends first.
struct Follower {
    child: Child,
    /// Each stdout line with what the task had written when it was read.
    lines: mpsc::Receiver<(String, u32)>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Follower {
    fn start(endpoints: &str, task: &str, witness: &Path) -> Follower {
        Follower::start_with(endpoints, &[task], witness, Stdio::inherit())
    }

    /// `meridian job logs -f ARGS...`, its stderr to `stderr`.
    fn start_with(endpoints: &str, args: &[&str], witness: &Path, stderr: Stdio) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["job", "logs", "-f"])
            .args(args)
            .env("MERIDIAN_ENDPOINT", endpoints)
            .env("MERIDIAN_INSECURE", "1")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("run meridian job logs -f");
        let stdout = child.stdout.take().expect("stdout");
        let witness = witness.to_path_buf();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Read the witness as soon as the line is in: the task
                // cannot have written less than this when it was printed.
                let ahead = written(&witness);
                if tx.send((line, ahead)).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines: rx }
    }

    /// The next line printed, within the guard.
    fn next(&self) -> Option<(String, u32)> {
        match self.lines.recv_timeout(GUARD) {
            Ok(l) => Some(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no line within {GUARD:?}"),
        }
    }

    /// Waits for the CLI to exit; its status.
    fn exit(&mut self) -> std::process::ExitStatus {
        let fd = support::wait::pidfd(self.child.id() as i32).expect("pidfd of the follower");
        assert!(
            support::wait::exited_within(&fd, GUARD),
            "job logs -f ended within {GUARD:?} of the task's end"
        );
        self.child.wait().expect("follower status")
    }
}

/// The job's state, once it has reached one that is final.
async fn final_state(client: &mut FederationClient<Channel>, job_id: &str) -> v1::JobState {
    let mut events = client
        .watch_jobs(v1::WatchJobsRequest {
            job_ids: vec![job_id.to_string()],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let job = client
        .get_job(v1::GetJobRequest {
            job_id: job_id.into(),
        })
        .await
        .expect("get job")
        .into_inner()
        .job
        .expect("job");
    let mut state = job.state();
    while !matches!(
        state,
        v1::JobState::Succeeded | v1::JobState::Failed | v1::JobState::Cancelled
    ) {
        let event = events.message().await.expect("watch").expect("watch open");
        if let Some(j) = event.job.filter(|j| j.job_id == job_id) {
            state = j.state();
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_logs_follow_prints_each_line_of_a_running_task_as_it_is_written_and_ends_with_the_task()
 {
    let fed = Federation::start(1).await;
    let (job_id, witness, go) = fed.submit_paced_lines("lines").await;
    // Started right after the submit: the follow waits for the task.
    let mut follower = Follower::start(&fed.endpoints(), &format!("{job_id}/0"), &witness);
    // The task's first line, printed: the follow is established (the tail
    // it opened with held that line, or it came live). From here every
    // line is written while the follow runs.
    assert_eq!(follower.next().expect("a line").0, "ready");
    std::fs::write(&go, b"").expect("go");
    let started = Instant::now();
    for k in 1..=LINES {
        let (line, written) = follower.next().expect("a line");
        assert_eq!(line, format!("line {k}"), "lines in order, none twice");
        // The task waits for this line's release before it writes the
        // next, so the line was printed while the task ran, not at its
        // end (were output held back until the task ended, this would
        // wait forever: the guard of `next` fails it). The witness may
        // not hold line k yet: the task writes stdout first.
        assert!(
            written <= k,
            "line {k} printed while the task had written {written} lines"
        );
        if k == 1 || k == LINES {
            println!("line {k} printed {:?} after the start", started.elapsed());
        }
        release(&go, k);
    }
    // The follow ends by itself, after the last line, because the task did.
    let status = follower.exit();
    assert!(status.success(), "job logs -f exited {status}");
    assert!(follower.next().is_none(), "nothing after the last line");
    assert_eq!(written(&witness), LINES, "the task wrote every line");
    let mut client = fed.client().await;
    let state = tokio::time::timeout(GUARD, final_state(&mut client, &job_id))
        .await
        .expect("the job ended in time");
    assert_eq!(state, v1::JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_whose_global_replica_dies_goes_on_through_another_with_every_line_once() {
    let mut fed = Federation::start(2).await;
    let (job_id, witness, go) = fed.submit_lines("failover").await;
    std::fs::write(&go, b"").expect("go");
    // The CLI asks the first endpoint first.
    let mut follower = Follower::start(&fed.endpoints(), &format!("{job_id}/0"), &witness);
    assert_eq!(follower.next().expect("a line").0, "ready");
    for k in 1..=LINES {
        let (line, _) = follower.next().expect("a line");
        assert_eq!(line, format!("line {k}"), "every line once, in order");
        if k == 5 {
            fed.globals[0].proc.kill_now();
        }
    }
    let status = follower.exit();
    assert!(status.success(), "job logs -f exited {status}");
    assert!(follower.next().is_none(), "nothing after the last line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_follower_gets_the_tail_first_and_then_the_live_lines() {
    let fed = Federation::start(1).await;
    let (job_id, witness, go) = fed.submit_lines("late").await;
    std::fs::write(&go, b"").expect("go");
    // An early follower tells when the task is well under way.
    let early = Follower::start(&fed.endpoints(), &format!("{job_id}/0"), &witness);
    assert_eq!(early.next().expect("a line").0, "ready");
    for k in 1..=10 {
        assert_eq!(early.next().expect("a line").0, format!("line {k}"));
    }
    let mut client = fed.client().await;
    let mut stream = client
        .follow_task_logs(v1::FollowTaskLogsRequest {
            task: Some(v1::TaskId {
                job_id: job_id.clone(),
                index: 0,
            }),
            tail_bytes: 16,
            ..Default::default()
        })
        .await
        .expect("follow")
        .into_inner();
    let mut text = Vec::new();
    let mut first_offset = None;
    let mut next_offset = 0;
    let mut ended = None;
    while let Some(chunk) = tokio::time::timeout(GUARD, stream.message())
        .await
        .expect("a chunk in time")
        .expect("the stream")
    {
        if chunk.end {
            ended = Some(chunk.state());
            continue;
        }
        assert_eq!(chunk.stream(), v1::LogStream::Stdout);
        assert_eq!(chunk.skipped_bytes, 0, "the ring held the tail asked for");
        if first_offset.is_none() {
            first_offset = Some(chunk.offset);
            assert!(
                chunk.data.len() <= 16,
                "the first chunk is the tail asked for: {:?}",
                String::from_utf8_lossy(&chunk.data)
            );
        } else {
            assert_eq!(chunk.offset, next_offset, "contiguous after the tail");
        }
        next_offset = chunk.offset + chunk.data.len() as u64;
        text.extend_from_slice(&chunk.data);
    }
    let text = String::from_utf8(text).expect("utf-8");
    let first = first_offset.expect("some output");
    assert!(
        first > 0,
        "the follow started at the tail, not at the beginning"
    );
    let full: String = std::iter::once("ready\n".to_string())
        .chain((1..=LINES).map(|i| format!("line {i}\n")))
        .collect();
    assert_eq!(
        first + text.len() as u64,
        full.len() as u64,
        "through the last byte"
    );
    assert!(
        full.ends_with(&text),
        "the tail then every later byte: {text:?}"
    );
    assert!(text.len() > 16, "live lines came after the tail: {text:?}");
    assert_eq!(
        ended,
        Some(v1::TaskState::Succeeded),
        "the end says how the task ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_page_of_the_console_shows_the_output_live_while_the_task_runs() {
    let fed = Federation::start_with(1, true).await;
    let http = fed.globals[0].http.clone().expect("the HTTP address");
    let (job_id, witness, go) = fed.submit_paced_lines("console").await;
    let browser = console_support::Browser::start().await;
    browser.goto(&format!("{http}/console/jobs/{job_id}")).await;
    let text = "return document.getElementById('task-output').textContent;";
    browser
        .wait_for(
            "the task's first line on the page",
            "return document.getElementById('task-output').textContent.includes('ready');",
        )
        .await;
    std::fs::write(&go, b"").expect("go");
    for k in 1..=3 {
        browser
            .wait_for(
                &format!("line {k} on the page"),
                &format!(
                    "return document.getElementById('task-output').textContent.includes('line {k}\\n');"
                ),
            )
            .await;
        // The task waits for this line's release: the page showed it
        // while the task ran.
        let written = written(&witness);
        assert!(
            written <= k,
            "line {k} shown after the task wrote {written}"
        );
        if k < 3 {
            release(&go, k);
        }
    }
    // The task waits after line 3: the page still follows it.
    let state = browser
        .js("return document.getElementById('output-state').textContent;")
        .await;
    assert!(
        state.as_str().is_some_and(|s| s.starts_with("Live")),
        "the page says it is live: {state}"
    );
    // The rest at the task's own pace.
    for k in 3..=LINES {
        release(&go, k);
    }
    browser
        .wait_for(
            "line 12 on the page",
            "return document.getElementById('task-output').textContent.includes('line 12\\n');",
        )
        .await;
    let shots = console_support::screenshot_dir(&fed._dir);
    browser.screenshot(&shots, "live-logs.png").await;
    let ended = browser
        .wait_for(
            "the end of the task on the page",
            "return document.getElementById('task-output').dataset.ended;",
        )
        .await;
    assert_eq!(ended, "succeeded");
    let shown = browser.js(text).await;
    let expected: String = std::iter::once("ready\n".to_string())
        .chain((1..=LINES).map(|i| format!("line {i}\n")))
        .collect();
    assert_eq!(
        shown.as_str(),
        Some(expected.as_str()),
        "every line once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_of_the_latest_attempt_goes_on_with_the_retry_and_a_given_attempt_ends_with_it() {
    let fed = Federation::start(1).await;
    let go = fed.shared.join("retry.go");
    // Attempt 1 prints its number, waits for `go`, fails; attempt 2 (the
    // retry, 100 ms later) prints its number and succeeds.
    let script = format!(
        "echo \"attempt $MERIDIAN_ATTEMPT\"; \
         if [ \"$MERIDIAN_ATTEMPT\" -lt 2 ]; then while [ ! -e {} ]; do sleep 0.02; done; exit 1; fi",
        go.display()
    );
    let job_id = fed.submit_script("retry", script, 2).await;
    let task = format!("{job_id}/0");
    let notes = fed.shared.join("follow.stderr");
    let stderr = std::fs::File::create(&notes).expect("stderr file");
    let mut latest = Follower::start_with(&fed.endpoints(), &[&task], &go, stderr.into());
    assert_eq!(latest.next().expect("a line").0, "attempt 1");
    std::fs::write(&go, b"").expect("go");
    assert_eq!(latest.next().expect("a line").0, "attempt 2");
    let status = latest.exit();
    assert!(status.success(), "job logs -f exited {status}");
    assert!(
        latest.next().is_none(),
        "nothing after the task's last attempt"
    );
    let notes = std::fs::read_to_string(&notes).expect("stderr");
    assert!(
        notes.contains("--- attempt 2 on node node-1 ---"),
        "the new attempt is announced: {notes}"
    );
    let mut client = fed.client().await;
    let state = tokio::time::timeout(GUARD, final_state(&mut client, &job_id))
        .await
        .expect("the job ended in time");
    assert_eq!(state, v1::JobState::Succeeded);

    // Attempt 1 asked for by number: its stored output, then the end.
    let mut first = Follower::start_with(
        &fed.endpoints(),
        &[&task, "--attempt", "1"],
        &go,
        Stdio::inherit(),
    );
    assert_eq!(first.next().expect("a line").0, "attempt 1");
    let status = first.exit();
    assert!(status.success(), "job logs -f --attempt 1 exited {status}");
    assert!(first.next().is_none(), "only attempt 1");
}

/// Peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_task_followed_by_a_reader_that_does_not_keep_up_costs_bounded_memory_and_every_byte_is_printed_or_counted_as_skipped()
 {
    const TOTAL: u64 = 100_000_000;
    let fed = Federation::start(1).await;
    let go = fed.shared.join("chatty.go");
    let script = format!(
        "echo ready; while [ ! -e {} ]; do sleep 0.02; done; \
         yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {TOTAL}",
        go.display()
    );
    let job_id = fed.submit_script("chatty", script, 1).await;
    let notes = fed.shared.join("chatty.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["job", "logs", "-f", &format!("{job_id}/0")])
        .env("MERIDIAN_ENDPOINT", fed.endpoints())
        .env("MERIDIAN_INSECURE", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&notes).expect("stderr file"))
        .spawn()
        .expect("run meridian job logs -f");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("the first line");
    assert_eq!(first, "ready\n");
    let pids = [
        ("agent", fed.agent.pid().as_raw()),
        ("region", fed.region.pid().as_raw()),
        ("global", fed.globals[0].proc.pid().as_raw()),
    ];
    let before: Vec<u64> = pids.iter().map(|(_, p)| peak_rss(*p)).collect();
    std::fs::write(&go, b"").expect("go");
    // Nobody reads the follow while the task writes: the pipe to this
    // test fills, the CLI stops reading its stream, and so on up to the
    // agent.
    let started = Instant::now();
    let mut client = fed.client().await;
    let state = tokio::time::timeout(GUARD, final_state(&mut client, &job_id))
        .await
        .expect("the job ended in time");
    assert_eq!(state, v1::JobState::Succeeded);
    println!("the task wrote {TOTAL} bytes in {:?}", started.elapsed());
    for ((name, pid), before) in pids.iter().zip(&before) {
        let after = peak_rss(*pid);
        let grown = after.saturating_sub(*before);
        println!(
            "{name}: peak RSS {} MiB before, {} MiB after (+{} KiB)",
            before >> 20,
            after >> 20,
            grown >> 10
        );
        assert!(
            grown < 32 << 20,
            "{name} grew by {} MiB while {TOTAL} bytes went by a follower that did not read",
            grown >> 20
        );
    }
    // Now read: what reaches the follower, plus what it was told it
    // skipped, is every byte the task wrote.
    let reader = std::thread::spawn(move || {
        let mut printed = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match std::io::Read::read(&mut out, &mut buf) {
                Ok(0) | Err(_) => return printed,
                Ok(n) => printed += n as u64,
            }
        }
    });
    let fd = support::wait::pidfd(child.id() as i32).expect("pidfd");
    assert!(support::wait::exited_within(&fd, GUARD), "the follow ended");
    let status = child.wait().expect("status");
    assert!(status.success(), "job logs -f exited {status}");
    let printed = reader.join().expect("reader");
    let notes = std::fs::read_to_string(&notes).expect("stderr");
    let skipped: u64 = notes
        .lines()
        .filter_map(|l| l.strip_prefix("[... "))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    println!("printed {printed} bytes after the first line, told of {skipped} skipped");
    assert!(skipped > 0, "a reader this slow skipped: {notes}");
    assert_eq!(
        printed + skipped,
        TOTAL,
        "every byte printed or counted as skipped"
    );
}
