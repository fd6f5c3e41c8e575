//! The README's and the docs' shell snippets work as written, in the environment that `./dev up`
//! prints (`KUBECONFIG`, `REGISTRY`, `PATH` with `kubectl` and `krustlet`).
//!
//! Every ```` ```sh ```` block in `README.md` and `docs/*.md` carries a marker on the line
//! before it, so no snippet escapes a decision:
//!
//! - `<!-- snippet: run -->`: run here with `bash -euo pipefail`; it must exit 0 within
//!   `timeout=SECS` (default 120). With `until="TEXT"` it passes as soon as its output shows
//!   TEXT (for snippets that end in a follow, such as `logs -f`), and is stopped then.
//! - `<!-- snippet: skip REASON -->`: not run; REASON says why (a public registry, a tool this
//!   machine lacks, the suite itself).
//!
//! A code block of another language whose first line names a file (`/* hello.c */`,
//! `# Dockerfile`) is written to that file in the document's working directory first, as a
//! reader would save it. Each document's snippets share one working directory, in order.
//! Paths under `/tmp/` are moved into the test's own temporary directory (the machine is
//! shared), and the node's disk-pressure threshold is lowered through its `KRUSTLET_*`
//! variable as for every test node (the build disk is nearly full); nothing else is changed.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krustlet_e2e::cluster::{cluster, repo_root};

use crate::KRUSTLET;

/// What a snippet's marker says.
#[derive(Debug, Clone, PartialEq)]
enum Marker {
    Run {
        until: Option<String>,
        timeout: Duration,
    },
    Skip(String),
}

/// One fenced block of a document.
#[derive(Debug)]
struct Block {
    /// The fence's language (`sh`, `c`, `yaml`, ...).
    lang: String,
    /// 1-based line of the opening fence.
    line: usize,
    text: String,
    /// The marker on the line before the fence, if any.
    marker: Option<Result<Marker, String>>,
}

fn parse_marker(line: &str) -> Option<Result<Marker, String>> {
    let inner = line
        .trim()
        .strip_prefix("<!-- snippet:")?
        .strip_suffix("-->")?
        .trim();
    if let Some(reason) = inner.strip_prefix("skip") {
        let reason = reason.trim();
        return Some(if reason.is_empty() {
            Err("a skip marker needs a reason".into())
        } else {
            Ok(Marker::Skip(reason.into()))
        });
    }
    let Some(mut rest) = inner.strip_prefix("run") else {
        return Some(Err(format!("unknown snippet marker {inner:?}")));
    };
    let mut until = None;
    let mut timeout = Duration::from_secs(120);
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        if let Some(r) = rest.strip_prefix("until=\"") {
            let Some(end) = r.find('"') else {
                return Some(Err(format!("unterminated until in {inner:?}")));
            };
            until = Some(r[..end].to_string());
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix("timeout=") {
            let end = r.find(' ').unwrap_or(r.len());
            match r[..end].parse::<u64>() {
                Ok(secs) => timeout = Duration::from_secs(secs),
                Err(e) => return Some(Err(format!("bad timeout in {inner:?}: {e}"))),
            }
            rest = &r[end..];
        } else {
            return Some(Err(format!("unknown option in snippet marker {inner:?}")));
        }
    }
    Some(Ok(Marker::Run { until, timeout }))
}

/// The fenced blocks of a markdown document, with their markers.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = markdown.lines().enumerate();
    let mut previous = "";
    while let Some((index, line)) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let marker = parse_marker(previous);
            let mut text = String::new();
            for (_, body) in lines.by_ref() {
                if body.starts_with("```") {
                    break;
                }
                text.push_str(body);
                text.push('\n');
            }
            out.push(Block {
                lang: lang.trim().to_string(),
                line: index + 1,
                text,
                marker,
            });
            previous = "";
            continue;
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    out
}

/// The file a non-shell block names on its first line (`/* hello.c */`, `# Dockerfile`).
fn named_file(block: &Block) -> Option<String> {
    let first = block.text.lines().next()?.trim();
    let name = first
        .strip_prefix("/*")
        .and_then(|r| r.strip_suffix("*/"))
        .or_else(|| first.strip_prefix('#'))?
        .trim();
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    plain.then(|| name.to_string())
}

/// The documents whose snippets are checked, in a reader's order: the README, then the docs in
/// the order the README links them, then any other doc.
fn documents() -> Vec<PathBuf> {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
    let mut docs = vec![root.join("README.md")];
    for (at, _) in readme.match_indices("](docs/") {
        let rest = &readme[at + 2..];
        if let Some(end) = rest.find(')') {
            let doc = root.join(&rest[..end]);
            if doc.extension().is_some_and(|x| x == "md") && !docs.contains(&doc) {
                docs.push(doc);
            }
        }
    }
    let mut more: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md") && !docs.contains(p))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

/// A directory holding `krustlet`, `kubectl` and `cosign`, as `.bin/` after `./dev up`.
fn bin_dir(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    std::os::unix::fs::symlink(KRUSTLET, bin.join("krustlet")).expect("link krustlet");
    std::os::unix::fs::symlink(&cluster().kubectl, bin.join("kubectl")).expect("link kubectl");
    let cosign = krustlet_e2e::cluster::bin_dir().join("cosign");
    assert!(
        cosign.exists(),
        "prerequisite missing: {} (cosign from its Go module); build it with `test/cluster/build.sh`",
        cosign.display()
    );
    std::os::unix::fs::symlink(cosign, bin.join("cosign")).expect("link cosign");
    bin
}

/// Runs one snippet; Err says what went wrong, with its output.
fn run_snippet(
    text: &str,
    cwd: &Path,
    env: &[(String, String)],
    until: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let script = format!("exec 2>&1\n{text}");
    let (reader, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let mut child = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::null())
        // Its own process group, so that what it starts in the background stops with it.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("start bash: {e}"))?;
    let pgid = child.id() as i32;
    let output = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&output);
    // Background jobs keep the pipe open after bash exits: read on a thread, never join it.
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut out = sink.lock().unwrap_or_else(|e| e.into_inner());
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = Instant::now() + timeout;
    let shown = || output.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let result = loop {
        if let Some(text) = until
            && shown().contains(text)
        {
            break Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) if until.is_none() && status.success() => break Ok(()),
            Ok(Some(status)) => {
                // Give the reader a moment to take the last output.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(text) = until
                    && shown().contains(text)
                {
                    break Ok(());
                }
                break Err(format!("{status} (wanted {until:?})"));
            }
            Ok(None) => {}
            Err(e) => break Err(format!("wait: {e}")),
        }
        if Instant::now() > deadline {
            break Err(format!(
                "still running after {timeout:?} (wanted {until:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The whole group: background jobs (a standalone node) end with the snippet.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    result.map_err(|why| format!("{why}\n--- output ---\n{}", shown()))
}

#[test]
fn every_snippet_is_marked_and_the_markers_parse() {
    let mut problems = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("read doc");
        for block in blocks(&text).iter().filter(|b| b.lang == "sh") {
            match &block.marker {
                None => problems.push(format!(
                    "{}:{}: a ```sh block without a `<!-- snippet: run -->` or \
                     `<!-- snippet: skip REASON -->` marker on the line before it",
                    doc.display(),
                    block.line
                )),
                Some(Err(e)) => problems.push(format!("{}:{}: {e}", doc.display(), block.line)),
                Some(Ok(_)) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_runnable_snippets_work_as_written() {
    let info = cluster();
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = bin_dir(tmp.path());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // `./dev up` publishes the examples before printing its export line.
    let pushed = Command::new(KRUSTLET)
        .arg("push")
        .arg(krustlet_test_workloads::multitool().unwrap_or_else(|e| panic!("{e}")))
        .arg(format!("{}/examples/multitool:v1", info.registry))
        .output()
        .expect("krustlet push");
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    // publishing.md creates this pull secret in the default namespace; a reused cluster has it.
    let _ = krustlet_e2e::kubectl::kubectl(&["delete", "secret", "regcred", "--ignore-not-found"]);
    // One working directory for all, as one reader following the docs in order (publishing.md
    // pushes the hello.wasm that writing-workloads.md built).
    let cwd = tmp.path().join("work");
    let scratch = tmp.path().join("tmp");
    std::fs::create_dir_all(&cwd).expect("mkdir work");
    std::fs::create_dir_all(&scratch).expect("mkdir tmp");
    let env = vec![
        ("PATH".to_string(), path),
        (
            "KUBECONFIG".to_string(),
            info.kubeconfig.display().to_string(),
        ),
        ("REGISTRY".to_string(), info.registry.clone()),
        (
            "KRUSTLET_EVICTION_HARD".to_string(),
            krustlet_e2e::node::TEST_EVICTION_HARD
                .trim_start_matches("--eviction-hard=")
                .to_string(),
        ),
    ];
    let mut failures = Vec::new();
    let mut ran = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("read doc");
        for block in blocks(&text) {
            if block.lang != "sh" {
                if let Some(file) = named_file(&block) {
                    std::fs::write(cwd.join(file), &block.text).expect("write named file");
                }
                continue;
            }
            let Some(Ok(Marker::Run { until, timeout })) = block.marker else {
                continue;
            };
            ran += 1;
            let script = block
                .text
                .replace("/tmp/", &format!("{}/", scratch.display()));
            if let Err(e) = run_snippet(&script, &cwd, &env, until.as_deref(), timeout) {
                failures.push(format!(
                    "{}:{}:\n{}\n{e}",
                    doc.display(),
                    block.line,
                    block.text
                ));
            }
        }
    }
    assert!(ran >= 4, "only {ran} snippets are marked to run");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn markers_parse() {
    assert_eq!(
        parse_marker("<!-- snippet: run -->"),
        Some(Ok(Marker::Run {
            until: None,
            timeout: Duration::from_secs(120)
        }))
    );
    assert_eq!(
        parse_marker(r#"<!-- snippet: run until="tick 2" timeout=60 -->"#),
        Some(Ok(Marker::Run {
            until: Some("tick 2".into()),
            timeout: Duration::from_secs(60)
        }))
    );
    assert_eq!(
        parse_marker("<!-- snippet: skip needs a public registry -->"),
        Some(Ok(Marker::Skip("needs a public registry".into())))
    );
    assert!(matches!(
        parse_marker("<!-- snippet: skip -->"),
        Some(Err(_))
    ));
    assert_eq!(parse_marker("plain text"), None);
    let doc = "x\n/* a.c */\n\n<!-- snippet: run -->\n```sh\necho hi\n```\n```c\n/* a.c */\nint x;\n```\n";
    let found = blocks(doc);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].text, "echo hi\n");
    assert!(matches!(found[0].marker, Some(Ok(Marker::Run { .. }))));
    assert_eq!(found[1].marker, None);
    assert_eq!(named_file(&found[1]).as_deref(), Some("a.c"));
}
