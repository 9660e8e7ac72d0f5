//! `--instructions`: what each Portcullis scenario costs the proxy in instructions per request,
//! counted by valgrind's callgrind.
//!
//! Requests per second on a shared machine move from one round to the next by more than most
//! code changes save; an instruction count does not. The proxy runs under callgrind with
//! counting off. For each scenario, counting is switched on (`callgrind_control -i on`) for a
//! fixed number of requests, switched off and dumped, and the dump's total is divided by the
//! requests answered. Everything the proxy process runs in that window counts: Pingora, tokio,
//! the allocator, the access log, the background renewal of identity assertions. The kernel's
//! share (the syscalls) does not.
//!
//! Two cautions. A copy done with `rep movsb` counts one instruction per byte (Pingora moves its
//! request futures, some 14 KiB, that way), so the totals overstate copies against time. And
//! an instruction is not a cycle: cache misses (10,000 sessions in turn) do not show.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Where callgrind writes its dumps, and how the proxy is started under it.
pub struct Callgrind {
    dir: tempfile::TempDir,
}

/// One scenario's count.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Count {
    pub name: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub instructions: u64,
    /// Identity JWTs (ES256) the proxy signed while counting, when its metrics said.
    pub signatures: Option<u64>,
}

impl Count {
    pub fn per_request(&self) -> f64 {
        self.instructions as f64 / self.requests.max(1) as f64
    }
}

impl Callgrind {
    /// Checks that valgrind and callgrind_control are installed.
    pub fn new() -> Result<Self, String> {
        for tool in ["valgrind", "callgrind_control"] {
            let found = std::process::Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            if !found {
                return Err(format!(
                    "--instructions needs {tool} (Debian: apt-get install valgrind)"
                ));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("portcullis-callgrind-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        Ok(Self { dir })
    }

    /// The command line the proxy runs under: callgrind, counting nothing until told to.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            "--instr-atstart=no".into(),
            format!(
                "--callgrind-out-file={}",
                self.dir.path().join("callgrind.out.%p").display()
            ),
        ]
    }

    /// Counting on, from zero.
    pub async fn start(&self, pid: u32) -> Result<(), String> {
        control(pid, "-z").await?;
        control(pid, "--instr=on").await
    }

    /// Counting off; the instructions counted since [`Callgrind::start`]. With `keep`, the dump
    /// is also copied there (for `callgrind_annotate`).
    pub async fn stop(&self, pid: u32, keep: Option<&Path>) -> Result<u64, String> {
        control(pid, "--instr=off").await?;
        let before = dumps(self.dir.path(), pid);
        control(pid, "--dump").await?;
        // callgrind_control returns once the dump is written; the file list is read again to
        // find the new one.
        for _ in 0..50 {
            let after = dumps(self.dir.path(), pid);
            if let Some(new) = after.iter().find(|p| !before.contains(p)) {
                if let Some(keep) = keep {
                    std::fs::copy(new, keep).map_err(|e| format!("{}: {e}", keep.display()))?;
                }
                return totals(new);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("callgrind wrote no dump".into())
    }
}

async fn control(pid: u32, command: &str) -> Result<(), String> {
    let out = Command::new("callgrind_control")
        .arg(command)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("callgrind_control: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "callgrind_control {command} {pid}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The dump files of process `pid` so far.
fn dumps(dir: &Path, pid: u32) -> Vec<PathBuf> {
    let prefix = format!("callgrind.out.{pid}.");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `totals:` line of a callgrind dump (instructions, the one event counted).
fn totals(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_totals(&text).ok_or_else(|| format!("{}: no totals line", path.display()))
}

fn parse_totals(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The table printed after the counts: instructions per request, and each scenario against the
/// public route (auth off). A scenario during which identity JWTs were signed is flagged: in a
/// steady state none are (target 5), so its count is not the steady state's.
pub fn table(counts: &[Count]) -> String {
    use std::fmt::Write as _;
    let public = counts
        .iter()
        .find(|c| c.name == "portcullis-public")
        .map(Count::per_request);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Instructions per request in the proxy process (callgrind; user space only)"
    );
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>7} {:>14} {:>10} {:>12} {:>8}",
        "scenario", "requests", "errors", "instr/request", "×public", "public÷this", "signed"
    );
    for c in counts {
        let per = c.per_request();
        let (times, inverse) = match public {
            Some(p) if p > 0.0 && per > 0.0 => {
                (format!("{:.3}", per / p), format!("{:.3}", p / per))
            }
            _ => ("-".into(), "-".into()),
        };
        let signed = c.signatures.map_or("-".into(), |n| n.to_string());
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>7} {:>14.0} {:>10} {:>12} {:>8}",
            c.name, c.requests, c.errors, per, times, inverse, signed
        );
    }
    let _ = write!(
        out,
        "public÷this is the throughput ratio to expect if every request cost only its \
         instructions (target 1 compares portcullis-auth's with 0.95); signed: identity JWTs \
         (ES256) signed while counting"
    );
    for c in counts
        .iter()
        .filter(|c| c.signatures.is_some_and(|n| n > 0))
    {
        let _ = write!(
            out,
            "\nWARNING: {}: {} identity JWTs were signed while counting, so this count is not a \
             steady state's. Under callgrind the proxy runs some 50 times slower; when the \
             machine is busy besides, the run outlasts the JWTs' reuse margin and they are \
             renewed. Count again on an otherwise idle machine.",
            c.name,
            c.signatures.unwrap_or(0)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_totals_line_is_read_and_nothing_else() {
        let dump = "# callgrind format\nversion: 1\nevents: Ir\nsummary: 0\ntotals: 1293572542\nfl=(1) x\n";
        assert_eq!(parse_totals(dump), Some(1_293_572_542));
        assert_eq!(parse_totals("events: Ir\nsummary: 7\n"), None);
    }

    #[test]
    fn the_table_gives_each_scenario_against_the_public_route() {
        let counts = [
            Count {
                name: "portcullis-public",
                requests: 1000,
                errors: 0,
                instructions: 95_000_000,
                signatures: Some(0),
            },
            Count {
                name: "portcullis-auth",
                requests: 2000,
                errors: 0,
                instructions: 200_000_000,
                signatures: Some(0),
            },
        ];
        let t = table(&counts);
        let auth = t
            .lines()
            .find(|l| l.starts_with("portcullis-auth"))
            .expect("auth row");
        assert!(auth.contains(" 100000 "), "{auth}");
        assert!(auth.contains(" 1.053 "), "{auth}");
        assert!(auth.contains(" 0.950"), "{auth}");
        assert!(!t.contains("WARNING"), "{t}");
    }

    #[test]
    fn a_count_with_signatures_in_it_is_flagged() {
        let count = |name, signatures| Count {
            name,
            requests: 1000,
            errors: 0,
            instructions: 95_000_000,
            signatures,
        };
        let t = table(&[
            count("portcullis-public", Some(0)),
            count("portcullis-auth", Some(180)),
            count("portcullis-403", None),
        ]);
        let warnings: Vec<&str> = t.lines().filter(|l| l.starts_with("WARNING")).collect();
        assert_eq!(warnings.len(), 1, "{t}");
        assert!(
            warnings[0].starts_with("WARNING: portcullis-auth: 180 identity JWTs"),
            "{t}"
        );
        let auth = t
            .lines()
            .find(|l| l.starts_with("portcullis-auth"))
            .expect("row");
        assert!(auth.ends_with(" 180"), "{auth}");
    }
}
