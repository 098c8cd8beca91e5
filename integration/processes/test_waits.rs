//! Keeps the rule of docs/testing.md ("How tests wait") true: no test code
//! sleeps or ticks on a timer to wait for a condition. Every call of
//! `sleep`, `sleep_until`, `interval` or `interval_at` in test code (the
//! `tests/` folders of the workspace, `integration/processes/`, and the
//! `#[cfg(test)]` part of each `src/` file) must be one of the named sleeps
//! in [`ALLOWED`], each of which is the fault or the scenario itself (the
//! length of a pause, a simulated task's runtime, simulated time) or the
//! clock under test. A new sleep fails this test, naming its file and line.
//!
//! Reads source files only; it never changes one.

use std::path::{Path, PathBuf};

/// A sleep that is allowed: in `file`, on a line containing `needle`.
struct Allowed {
    file: &'static str,
    needle: &'static str,
    why: &'static str,
}

/// Every sleep test code may take, and why it is not a wait for a condition.
const ALLOWED: &[Allowed] = &[
    Allowed {
        file: "control/tests/clock.rs",
        needle: "clock.sleep",
        why: "the ManualClock's timers are what the file tests",
    },
    Allowed {
        file: "control/tests/clock.rs",
        needle: "c.sleep(",
        why: "the ManualClock's timers are what the file tests",
    },
    Allowed {
        file: "control/tests/clock.rs",
        needle: "system.sleep_until(Instant::ZERO)",
        why: "the system clock's sleep until an instant long past returns at once: the subject",
    },
    Allowed {
        file: "store/src/clock.rs",
        needle: "clock.sleep(",
        why: "a ManualClock timer registered and dropped: the subject of the unit test",
    },
    Allowed {
        file: "store/tests/memory_simulation.rs",
        needle: "sleep(READ_WRITE_GAP)",
        why: "simulated time between a read and a write, so transactions conflict: the scenario",
    },
    Allowed {
        file: "control/src/lease/runtime.rs",
        needle: "sleep(DUTY_TIMER)",
        why: "a duty that needs its runtime's timer: the scenario",
    },
    Allowed {
        file: "global/tests/handoff.rs",
        needle: "interval(REGION_B_RENEWS_EVERY)",
        why: "the renewal rate of the fake region that stays alive: its behaviour",
    },
    Allowed {
        file: "integration/processes/chaos.rs",
        needle: "sleep(length_of_the_fault)",
        why: "how long a process stays SIGSTOPped: the fault itself",
    },
    Allowed {
        file: "integration/processes/chaos.rs",
        needle: "sleep(REGION_HOLD_SAMPLE_PERIOD)",
        why: "the sampling period of region holds, which no process announces: the observation",
    },
    Allowed {
        file: "integration/processes/console_support/mod.rs",
        needle: "sleep(runtime)",
        why: "a fake agent's simulated task: its runtime",
    },
    Allowed {
        file: "integration/processes/support/retry.rs",
        needle: "sleep(step.wait)",
        why: "the product's retry rule between two attempts at a replica that refused",
    },
    Allowed {
        file: "integration/processes/schedule_failover.rs",
        needle: "sleep(until_the_instant)",
        why: "a kill at a wall-clock instant just before a cron tick: the scenario",
    },
    Allowed {
        file: "integration/sim/tests/schedules.rs",
        needle: "sleep(simulated)",
        why: "turmoil's simulated time: the simulated client's pace",
    },
];

/// The calls that wait on a timer.
const TIMER_CALLS: &[&str] = &["sleep", "sleep_until", "interval", "interval_at"];

/// One timer call found in test code.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    file: String,
    line: usize,
    text: String,
}

/// The code of `line`: without its `//` comment, and with the contents of
/// its string and character literals blanked (a name in a string, such as
/// the needles above, is not a call). `in_string` carries a string that
/// goes on over the next line.
fn code_of(line: &str, in_string: &mut bool) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut code = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if *in_string {
            match c {
                '\\' => i += 1,
                '"' => {
                    *in_string = false;
                    code.push('"');
                }
                _ => code.push(' '),
            }
        } else {
            match c {
                '/' if chars.get(i + 1) == Some(&'/') => break,
                '"' => {
                    *in_string = true;
                    code.push('"');
                }
                // A character literal ('"', '\''); a lifetime has no
                // closing quote right after its first character.
                '\'' if chars.get(i + 2) == Some(&'\'') => {
                    code.push_str("' '");
                    i += 2;
                }
                '\'' if chars.get(i + 1) == Some(&'\\') && chars.get(i + 3) == Some(&'\'') => {
                    code.push_str("' '");
                    i += 3;
                }
                _ => code.push(c),
            }
        }
        i += 1;
    }
    code
}

/// Whether `code` calls one of [`TIMER_CALLS`] (a definition `fn sleep(`
/// is not a call).
fn calls_a_timer(code: &str) -> bool {
    TIMER_CALLS.iter().any(|name| {
        let call = format!("{name}(");
        code.match_indices(&call).any(|(i, _)| {
            let before = code[..i].chars().next_back();
            let part_of_a_longer_name = before.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !part_of_a_longer_name && !code[..i].trim_end().ends_with("fn")
        })
    })
}

/// Timer calls in `text`, the source of `file`; with `test_part_only`,
/// only after its first `#[cfg(test)]`.
fn timer_calls(file: &str, text: &str, test_part_only: bool) -> Vec<Found> {
    let mut in_test = !test_part_only;
    let mut in_string = false;
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = code_of(line, &mut in_string);
        if code.trim_start().starts_with("#[cfg(test)]") {
            in_test = true;
        }
        if in_test && calls_a_timer(&code) {
            found.push(Found {
                file: file.to_string(),
                line: i + 1,
                text: line.trim().to_string(),
            });
        }
    }
    found
}

/// Every `.rs` file under `dir`, skipping build output and VCS folders.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !matches!(name.as_ref(), "target" | ".git" | "node_modules") {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Every timer call in the workspace's test code, as paths from `root`.
fn timer_calls_in_tests(root: &Path) -> Vec<Found> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.sort();
    let mut found = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .replace('\\', "/");
        let in_tests_folder = rel.split('/').any(|c| c == "tests");
        let test_only = in_tests_folder || rel.starts_with("integration/processes/");
        let in_src = rel.split('/').any(|c| c == "src");
        if !test_only && !in_src {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        found.extend(timer_calls(&rel, &text, !test_only));
    }
    found
}

fn allowed(found: &Found) -> bool {
    ALLOWED
        .iter()
        .any(|a| a.file == found.file && found.text.contains(a.needle))
}

#[test]
fn no_test_code_sleeps_outside_the_named_faults_scenarios_and_clocks_under_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = timer_calls_in_tests(root);
    let unnamed: Vec<String> = found
        .iter()
        .filter(|f| !allowed(f))
        .map(|f| format!("{}:{}: {}", f.file, f.line, f.text))
        .collect();
    assert!(
        unnamed.is_empty(),
        "test code sleeps or ticks on a timer; await the event instead (docs/testing.md, \
         \"How tests wait\"), or, if the sleep is the fault or the scenario itself, name it \
         and add it to ALLOWED in integration/processes/test_waits.rs:\n{}",
        unnamed.join("\n")
    );
    // An entry that matches nothing any more allows a sleep nobody named.
    let stale: Vec<String> = ALLOWED
        .iter()
        .filter(|a| {
            !found
                .iter()
                .any(|f| a.file == f.file && f.text.contains(a.needle))
        })
        .map(|a| format!("{}: {} ({})", a.file, a.needle, a.why))
        .collect();
    assert!(
        stale.is_empty(),
        "ALLOWED names sleeps that are gone:\n{}",
        stale.join("\n")
    );
}

#[test]
fn a_sleep_added_to_a_test_is_found_with_its_file_and_line() {
    // Spelt in pieces so that this file itself holds no such call.
    let source = [
        "async fn waits() {",
        concat!(
            "    tokio::time::",
            "sleep",
            "(Duration::from_millis(100)).await;"
        ),
        concat!("    std::thread::", "sleep", "(POLL);"),
        concat!("    let mut t = tokio::time::", "interval", "(EVERY);"),
        concat!("    // tokio::time::", "sleep", "(in a comment)"),
        concat!("    fn ", "sleep", "(&self) {}"),
        concat!("    let url = \"http://x\"; my_", "sleep", "(1);"),
        concat!("    let s = \"tokio::time::", "sleep", "(D) in a string\";"),
        "}",
    ]
    .join("\n");
    let found = timer_calls("node-agent/tests/new.rs", &source, false);
    let lines: Vec<usize> = found.iter().map(|f| f.line).collect();
    assert_eq!(lines, [2, 3, 4], "{found:?}");
    assert!(found.iter().all(|f| !allowed(f)));
    assert_eq!(found[0].file, "node-agent/tests/new.rs");
    assert!(found[0].text.contains("from_millis(100)"));
}

#[test]
fn in_a_src_file_only_the_part_after_cfg_test_counts() {
    let source = [
        concat!("fn product() { tokio::time::", "sleep", "(D); }"),
        "#[cfg(test)]",
        "mod tests {",
        concat!("    fn t() { tokio::time::", "sleep", "(D); }"),
        "}",
    ]
    .join("\n");
    let found = timer_calls("store/src/x.rs", &source, true);
    assert_eq!(found.iter().map(|f| f.line).collect::<Vec<_>>(), [4]);
}
