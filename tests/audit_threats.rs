//! The threat table of docs/audit.md, row by row: each attack is performed on a real log that a
//! real gateway process wrote (signed checkpoints, rotated files, a clean stop), and
//! `ratepay-gateway audit verify` must exit 1 naming the file and line, with the public key or
//! the anchors where the row says so. Also: the anchor sources (`GET /audit/checkpoint`, the
//! `audit checkpoint` log line, the metrics), a crash in the middle of a checkpoint, and key
//! rotation across a restart.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use common::process::{authorize, cancel, gateway_config, signal, spawn, spawn_logging_to, BIN};
use ratepay_gateway::audit::{log_files, record, AuditRecord, SigningKey};
use serde_json::Value;

/// The pristine log and what an auditor keeps off the machine.
struct Fixture {
    /// The gateway's audit directory (never changed; rows work on copies).
    audit: PathBuf,
    /// `audit keygen`'s files.
    key: PathBuf,
    public: PathBuf,
    /// `GET /audit/checkpoint` taken while the gateway ran.
    anchor_served: PathBuf,
    /// Every `audit checkpoint` line of the gateway's JSON log.
    anchors_logged: PathBuf,
}

fn keygen(prefix: &Path) -> (PathBuf, PathBuf) {
    let out = Command::new(BIN)
        .args(["audit", "keygen", "--out"])
        .arg(prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let with = |ext: &str| PathBuf::from(format!("{}{ext}", prefix.display()));
    (with(".key"), with(".pub"))
}

/// The gateway configuration of [`gateway_config`] with signed checkpoints every 4 records.
fn signed_config(dir: &Path, sandbox: &str, key: &Path) -> PathBuf {
    let cfg = gateway_config(dir, sandbox);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "signing_key_file = {:?}\ncheckpoint_every_records = 4\n",
        key.display().to_string()
    ));
    std::fs::write(&cfg, text).unwrap();
    cfg
}

async fn build_fixture() -> Fixture {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    let (key, public) = keygen(&dir.join("audit-signing"));
    let (_sandbox, addrs) = spawn(
        &["sandbox", "--listen", "127.0.0.1:0", "--seed", "5"],
        &["sandbox"],
    );
    let cfg = signed_config(&dir, &addrs["sandbox"], &key);
    let log = dir.join("gateway.log");
    let (gateway, addrs) = spawn_logging_to(
        &log,
        &[
            "--log-format",
            "json",
            "serve",
            "--config",
            cfg.to_str().unwrap(),
        ],
        &["proxy", "admin"],
    );
    let (proxy, admin) = (&addrs["proxy"], &addrs["admin"]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let tx = authorize(&http, proxy, 1000).await;
    for _ in 0..30 {
        cancel(&http, proxy, &tx).await;
    }
    // The anchor as the admin listener serves it, and the metrics agreeing with it.
    let served = http
        .get(format!("http://{admin}/audit/checkpoint"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "application/json");
    let served: Value = served.json().await.unwrap();
    let metrics = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let seq = served["seq"].as_u64().unwrap();
    assert_eq!(
        common::metric(&metrics, "ratepay_gateway_audit_checkpoint_seq"),
        Some(seq as f64)
    );
    let age = common::metric(&metrics, "ratepay_gateway_audit_checkpoint_age_seconds").unwrap();
    assert!((0.0..60.0).contains(&age), "{age}");
    let anchor_served = dir.join("anchor-served.jsonl");
    std::fs::write(&anchor_served, format!("{served}\n")).unwrap();

    signal(&gateway, "TERM");
    let mut gateway = gateway;
    assert!(gateway.0.wait().unwrap().success());
    let logged: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#""message":"audit checkpoint""#))
        .map(str::to_owned)
        .collect();
    assert!(logged.len() >= 10, "{} checkpoint lines", logged.len());
    // The served anchor is one of the logged ones, field for field.
    let same = logged.iter().any(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        ["seq", "hash", "prev", "ts", "instance", "key_id", "sig"]
            .iter()
            .all(|f| v[f] == served[f])
    });
    assert!(same, "{served} not among the logged checkpoints");
    let anchors_logged = dir.join("anchors-logged.jsonl");
    std::fs::write(&anchors_logged, logged.join("\n") + "\n").unwrap();
    Fixture {
        audit: dir.join("audit"),
        key,
        public,
        anchor_served,
        anchors_logged,
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Built once, on a runtime of its own, whichever test asks first.
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(build_fixture())
        })
        .join()
        .unwrap()
    })
}

/// A copy of the pristine log, one file's lines each, in chain order.
struct Log {
    _dir: tempfile::TempDir,
    audit: PathBuf,
    files: Vec<(PathBuf, Vec<String>)>,
}

impl Log {
    fn copy() -> Log {
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit");
        std::fs::create_dir(&audit).unwrap();
        let mut files = Vec::new();
        for file in log_files(&f.audit).unwrap() {
            let to = audit.join(file.file_name().unwrap());
            std::fs::copy(&file, &to).unwrap();
            let lines = std::fs::read_to_string(&to)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect();
            files.push((to, lines));
        }
        assert!(files.len() >= 3, "rotated: {}", files.len());
        Log {
            _dir: dir,
            audit,
            files,
        }
    }

    fn save(&self) {
        for (path, lines) in &self.files {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(path, text).unwrap();
        }
    }

    /// (file index, line index) of the record `seq`.
    fn find(&self, seq: u64) -> (usize, usize) {
        for (f, (_, lines)) in self.files.iter().enumerate() {
            for (i, l) in lines.iter().enumerate() {
                let v: Value = serde_json::from_str(l).unwrap();
                if v["seq"] == seq {
                    return (f, i);
                }
            }
        }
        panic!("no record seq {seq}");
    }

    /// (file index, line index) of the first line containing `text` in file `file`.
    fn first_with(&self, file: usize, text: &str) -> usize {
        self.files[file]
            .1
            .iter()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no {text} in file {file}"))
    }

    /// Rewrites the chain from (file, line) on as an attacker would: every record passed to
    /// `edit`, then re-linked and re-hashed; checkpoints re-signed when `key` is given.
    fn rewrite_from(
        &mut self,
        at: (usize, usize),
        key: Option<&SigningKey>,
        edit: impl Fn(&mut Value),
    ) {
        let mut prev: Option<String> = None;
        for f in at.0..self.files.len() {
            let from = if f == at.0 { at.1 } else { 0 };
            for i in from..self.files[f].1.len() {
                let mut v: Value = serde_json::from_str(&self.files[f].1[i]).unwrap();
                v.as_object_mut().unwrap().remove("hash");
                if let Some(p) = &prev {
                    v["prev"] = p.clone().into();
                }
                edit(&mut v);
                let mut rec: AuditRecord = serde_json::from_value(v).unwrap();
                if let (Some(key), Some(_)) = (key, &rec.sig) {
                    rec.sig = Some(key.sign_checkpoint(&rec).unwrap());
                }
                let enc = record::encode(&rec).unwrap();
                prev = Some(enc.hash.clone());
                self.files[f].1[i] = String::from_utf8(enc.line).unwrap().trim_end().to_owned();
            }
        }
    }

    /// Runs `audit verify` with `args` before the directory.
    fn verify(&self, args: &[&Path]) -> (i32, String) {
        verify_dir(args, &self.audit)
    }

    /// Asserts that `audit verify args` exits 1 naming (file, 1-based line) and `what`.
    fn fails_at(&self, args: &[&Path], file: usize, line: usize, what: &str) {
        let (code, out) = self.verify(args);
        let place = format!("{}:{line}: ", self.files[file].0.display());
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(&place), "expected {place}: {out}");
        assert!(out.contains(what), "expected {what:?}: {out}");
    }

    fn passes(&self, args: &[&Path]) -> String {
        let (code, out) = self.verify(args);
        assert_eq!(code, 0, "{out}");
        out
    }
}

const PUBLIC_KEY: &str = "--public-key";
const ANCHOR: &str = "--anchor";

fn key_args() -> [&'static Path; 2] {
    [Path::new(PUBLIC_KEY), &fixture().public]
}

#[test]
fn the_untouched_log_verifies_with_key_and_anchors() {
    let log = Log::copy();
    let f = fixture();
    let out = log.passes(&[
        Path::new(PUBLIC_KEY),
        &f.public,
        Path::new(ANCHOR),
        &f.anchors_logged,
        Path::new(ANCHOR),
        &f.anchor_served,
    ]);
    assert!(out.contains("0 record(s) follow it unsigned"), "{out}");
    assert!(
        out.contains("runs: 1 start(s) (0 with auditing off), 1 clean stop(s), 0 ended without"),
        "{out}"
    );
}

#[test]
fn edit_is_caught_by_the_hash() {
    let mut log = Log::copy();
    let at = log.first_with(1, r#""gross_amount":"1.00""#);
    log.files[1].1[at] =
        log.files[1].1[at].replace(r#""gross_amount":"1.00""#, r#""gross_amount":"9.00""#);
    log.save();
    log.fails_at(&[], 1, at + 1, "hash mismatch");
}

#[test]
fn delete_is_caught_by_the_link() {
    let mut log = Log::copy();
    let at = log.first_with(1, r#""kind":"outcome""#);
    log.files[1].1.remove(at);
    log.save();
    log.fails_at(&[], 1, at + 1, "was expected");
}

#[test]
fn reorder_is_caught_by_the_link() {
    let mut log = Log::copy();
    let at = log.first_with(1, r#""kind":"intent""#);
    log.files[1].1.swap(at, at + 1);
    log.save();
    log.fails_at(&[], 1, at + 1, "was expected");
}

#[test]
fn truncation_mid_record_is_a_torn_line_and_past_an_anchor_needs_the_anchor() {
    let f = fixture();
    // Mid-record: the last line loses its end.
    let mut log = Log::copy();
    let last = log.files.len() - 1;
    let n = log.files[last].1.len();
    let cut = log.files[last].1[n - 1][..40].to_owned();
    log.files[last].1.pop();
    log.save();
    let text = std::fs::read_to_string(&log.files[last].0).unwrap() + &cut;
    std::fs::write(&log.files[last].0, text).unwrap();
    log.fails_at(&[], last, n, "incomplete last line");

    // At a record boundary, back past the served checkpoint: the chain and its signatures
    // are intact, only the anchor shows what is missing.
    let mut log = Log::copy();
    let anchored: Value =
        serde_json::from_str(&std::fs::read_to_string(&f.anchor_served).unwrap()).unwrap();
    let (file, line) = log.find(anchored["seq"].as_u64().unwrap());
    log.files[file].1.truncate(line);
    // Later files are deleted with their records.
    for (path, _) in log.files.drain(file + 1..) {
        std::fs::remove_file(path).unwrap();
    }
    log.save();
    log.passes(&key_args());
    log.fails_at(
        &[Path::new(ANCHOR), &f.anchor_served],
        file,
        line + 1,
        "was anchored: records were cut off the end",
    );
}

#[test]
fn full_rewrite_without_the_key_fails_at_the_first_checkpoint_signature() {
    let mut log = Log::copy();
    log.rewrite_from((0, 0), None, |v| {
        if v["gross_amount"] == "1.00" {
            v["gross_amount"] = "0.01".into();
        }
    });
    log.save();
    // The hash chain alone accepts it: that is what the checkpoints are for.
    log.passes(&[]);
    // The first checkpoint after the first changed record (an intent) signed the old chain.
    let first_intent = log.first_with(0, r#""kind":"intent""#);
    let first_cp = first_intent
        + log.files[0].1[first_intent..]
            .iter()
            .position(|l| l.contains(r#""kind":"checkpoint""#))
            .unwrap();
    log.fails_at(&key_args(), 0, first_cp + 1, "signature does not verify");
}

#[test]
fn full_rewrite_with_the_key_is_caught_only_by_an_anchor() {
    let f = fixture();
    let key = SigningKey::from_file(&f.key).unwrap();
    let mut log = Log::copy();
    let at = log.find(5);
    log.rewrite_from(at, Some(&key), |v| {
        if v["gross_amount"] == "1.00" {
            v["gross_amount"] = "0.01".into();
        }
    });
    log.save();
    // Signed anew with the real key: the signatures check out.
    log.passes(&key_args());
    // The first anchored checkpoint after the rewrite point no longer matches.
    let logged = std::fs::read_to_string(&f.anchors_logged).unwrap();
    let first_after = logged
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .find(|s| *s >= 5)
        .unwrap();
    let (file, line) = log.find(first_after);
    log.fails_at(
        &[Path::new(ANCHOR), &f.anchors_logged],
        file,
        line + 1,
        "is not the anchored checkpoint",
    );
}

#[test]
fn a_deleted_file_breaks_the_link_or_misses_an_anchor() {
    let f = fixture();
    // A file from the middle: the next file's first record does not continue the one before.
    let mut log = Log::copy();
    let (gone, _) = log.files.remove(1);
    std::fs::remove_file(gone).unwrap();
    log.fails_at(&[], 1, 1, "file missing or out of order");

    // The first file (as archiving would): the chain still verifies from mid-chain, but the
    // anchors from that file are no longer in the log.
    let mut log = Log::copy();
    let (gone, _) = log.files.remove(0);
    std::fs::remove_file(gone).unwrap();
    log.passes(&key_args());
    log.fails_at(
        &[Path::new(ANCHOR), &f.anchors_logged],
        0,
        1,
        "files are missing from the start",
    );
}

#[test]
fn a_backdated_record_fails_because_time_never_goes_back() {
    let mut log = Log::copy();
    let at = log.first_with(1, r#""kind":"intent""#);
    let mut v: Value = serde_json::from_str(&log.files[1].1[at]).unwrap();
    v["ts"] = "2020-01-01T00:00:00.000Z".into();
    let ts = v["ts"].clone();
    log.rewrite_from((1, at), None, |r| {
        if r["seq"] == v["seq"] {
            r["ts"] = ts.clone();
        }
    });
    log.save();
    log.fails_at(
        &key_args(),
        1,
        at + 1,
        "is earlier than the previous record's",
    );
}

// ---- Crash and key rotation (their own gateways) ----

/// Runs a gateway on `cfg` until `cancellations` went through; SIGTERM (clean) or SIGKILL.
async fn run_gateway(
    cfg: &Path,
    sandbox_http: &reqwest::Client,
    cancellations: usize,
    clean: bool,
) {
    let (mut gateway, addrs) = spawn(&["serve", "--config", cfg.to_str().unwrap()], &["proxy"]);
    let proxy = &addrs["proxy"];
    let tx = authorize(sandbox_http, proxy, 1000).await;
    for _ in 0..cancellations {
        cancel(sandbox_http, proxy, &tx).await;
    }
    if clean {
        signal(&gateway, "TERM");
        assert!(gateway.0.wait().unwrap().success());
    } else {
        gateway.0.kill().unwrap();
        gateway.0.wait().unwrap();
    }
}

/// `audit verify ARGS DIR`: the exit code and stdout followed by stderr.
fn verify_dir<S: AsRef<std::ffi::OsStr>>(args: &[S], dir: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_checkpoint_verifies_after_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(&dir.path().join("k"));
    let (_sandbox, addrs) = spawn(&["sandbox", "--listen", "127.0.0.1:0"], &["sandbox"]);
    let cfg = signed_config(dir.path(), &addrs["sandbox"], &key);
    let http = reqwest::Client::new();
    // start, checkpoint, then 2 × (intent, outcome) and the checkpoint after 4 records, written
    // in the batch of the last outcome: on disk before its answer arrived.
    run_gateway(&cfg, &http, 2, false).await;
    let active = dir.path().join("audit/audit.jsonl");
    let text = std::fs::read_to_string(&active).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7);
    assert!(lines[6].contains(r#""kind":"checkpoint""#), "{}", lines[6]);
    // The kill landed while the checkpoint was being written: half of it reached the file.
    let torn = text.len() - lines[6].len() / 2 - 1;
    std::fs::write(&active, &text.as_bytes()[..torn]).unwrap();
    let audit = dir.path().join("audit");
    let pk = public.to_str().unwrap();
    let (code, out) = verify_dir(&["--public-key", pk], &audit);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{}:7: incomplete last line", active.display())),
        "{out}"
    );

    // Recovery cuts the torn checkpoint; the new run's first checkpoint signs what it covered.
    run_gateway(&cfg, &http, 1, true).await;
    let (code, out) = verify_dir(&["--public-key", pk], &audit);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 start(s)") && out.contains("1 ended without a stop record"),
        "{out}"
    );
    let records: Vec<Value> = std::fs::read_to_string(&active)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The four records after the checkpoint at seq 2 are due for a checkpoint from the moment
    // the log reopens, so the writer may sign them before or after it appends the new run's
    // start: either order is a valid log, and which one comes first is the scheduler's call.
    let kinds: Vec<&str> = records[6..8]
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default())
        .collect();
    assert!(
        kinds == ["start", "checkpoint"] || kinds == ["checkpoint", "start"],
        "the torn checkpoint is gone, then the new run's start and a checkpoint: {kinds:?}"
    );
    let (at, checkpoint) = records
        .iter()
        .enumerate()
        .skip(6)
        .find(|(_, r)| r["kind"] == "checkpoint")
        .unwrap();
    assert_eq!(
        checkpoint["records"],
        at - 2,
        "it covers every record after the checkpoint at seq 2 (line 2): {checkpoint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_across_a_restart_verifies_with_both_public_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (old_key, old_pub) = keygen(&dir.path().join("old"));
    let (new_key, new_pub) = keygen(&dir.path().join("new"));
    let (_sandbox, addrs) = spawn(&["sandbox", "--listen", "127.0.0.1:0"], &["sandbox"]);
    let http = reqwest::Client::new();
    let cfg = signed_config(dir.path(), &addrs["sandbox"], &old_key);
    run_gateway(&cfg, &http, 1, true).await;
    // From the next start on, the new key signs.
    let cfg = signed_config(dir.path(), &addrs["sandbox"], &new_key);
    run_gateway(&cfg, &http, 1, true).await;
    let audit = dir.path().join("audit");
    let active = audit.join("audit.jsonl");
    let (op, np) = (old_pub.to_str().unwrap(), new_pub.to_str().unwrap());
    let (code, out) = verify_dir(&["--public-key", op, "--public-key", np], &audit);
    assert_eq!(code, 0, "{out}");
    let new_id = ratepay_gateway::audit::PublicKey::from_file(&new_pub).unwrap();
    assert!(out.contains(new_id.key_id()), "{out}");
    // The old run is start, checkpoint, intent, outcome, stop, checkpoint (lines 1-6); the new
    // one starts at line 7 and its first checkpoint is line 8.
    let (code, out) = verify_dir(&["--public-key", op], &audit);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{}:8: ", active.display()))
            && out.contains("not among the public keys"),
        "{out}"
    );
    let (code, out) = verify_dir(&["--public-key", np], &audit);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{}:2: ", active.display())), "{out}");
}

#[test]
fn the_python_verifier_in_docs_checks_the_signatures() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: python3 is not installed; the documented Python verifier was not run");
        return;
    }
    let has_cryptography = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_cryptography,
        "the documented Python verifier needs the `cryptography` package: \
         apt-get install python3-cryptography (or pip install cryptography); .ci/run installs it"
    );
    let code = common::python_verifier();
    let f = fixture();
    let mut log = Log::copy();
    let mut args: Vec<PathBuf> = vec![PUBLIC_KEY.into(), f.public.clone()];
    args.extend(log.files.iter().map(|(p, _)| p.clone()));
    let (ok, stdout, stderr) = common::run_python(&code, &args);
    assert!(ok, "{stderr}");
    let (_, rust) = log.verify(&key_args());
    let last_signed = rust
        .split("last signed record seq ")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .unwrap()
        .to_owned();
    assert!(
        stdout.contains(&format!(
            "last signed seq {last_signed}, 0 records after it"
        )),
        "{stdout} vs {rust}"
    );

    // A rewrite without the key: both name the same checkpoint line.
    log.rewrite_from((0, 0), None, |v| {
        if v["gross_amount"] == "1.00" {
            v["gross_amount"] = "0.01".into();
        }
    });
    log.save();
    let (ok, _, stderr) = common::run_python(&code, &args);
    assert!(!ok);
    let place = stderr
        .trim_end()
        .strip_suffix(": bad signature")
        .unwrap_or_else(|| panic!("{stderr}"));
    let (code_rust, rust) = log.verify(&key_args());
    assert_eq!(code_rust, 1);
    assert!(rust.contains(&format!("{place}: ")), "{rust} vs {stderr}");
    // Without the key the Python verifier, like the Rust one, sees a valid chain.
    let plain: Vec<&PathBuf> = args[2..].iter().collect();
    assert!(common::run_python(&code, &plain).0);
}
