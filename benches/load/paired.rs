//! Paired slices: two processes served at once (each on the measured CPU when pinned, the idle
//! one asleep), then `slice` of saturation against one and the same against the other, the
//! order alternating from pair to pair. A drift of the host slower than a pair cancels out of
//! that pair's ratio, which phases run tens of seconds apart cannot do. Used by
//! `BENCH_AB_SLICES` (this build against a baseline build) and by the `paired` case (each of
//! issue 18's targets as the gateway against its peer, `BENCH_PEER_SLICES` pairs).
//!
//! CPU time comes from the scheduler's per-thread run time (`/proc/PID/task/TID/schedstat`,
//! nanoseconds), not from `/proc/PID/stat`'s 10 ms ticks: a one-second slice of a proxy at
//! 45k req/s and 20 µs per request is 90 ticks, so ticks alone would round each slice by 1 %.
//! The user share still comes from the ticks (schedstat does not split it), and with this
//! kernel's tick accounting (`CONFIG_TICK_CPU_ACCOUNTING`) `/proc/PID/stat` splits the precise
//! run time by the user/system ratio of the 4 ms tick samples over the process's whole life,
//! so a slice's user time leans toward what the process did before: a user-time comparison
//! needs processes that served nothing else. So the user-time check, when `perf` is there,
//! takes its user share from `perf record -e cpu-clock` instead: samples at 10 kHz on each
//! side for the whole check, the share those not in the kernel are of all, times each slice's
//! scheduler run time. Tens of thousands of samples put the share within a fraction of a per
//! cent. The sampling's own cost is kernel time, and not small in this VM (the sampled pair's
//! CPU per request rose 22 to 37 %, most for the gateway's several threads: per-thread events
//! are switched at every context switch), so that check compares user time only.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{
    closed_loop, gateway_toml, open_loop, over_tls, peers, process_tree, serve_static,
    spawn_gateway, spawn_gateway_env, tls, tree_cpu_split, Bench, Proc, Target, API_KEY,
    RECORD_PATH, TX_PATH,
};

/// Run time of `pid` and its children (all their threads), from the scheduler.
fn tree_runtime(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for p in process_tree(pid) {
        for task in std::fs::read_dir(format!("/proc/{p}/task")).ok()? {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(Duration::from_nanos(total))
}

/// One side of a pair: the request and the process that serves it.
pub struct Side<'a> {
    pub target: &'a Target,
    pub pid: u32,
}

/// What one slice measured of one side.
#[derive(Clone, Copy)]
pub struct Slice {
    /// CPU µs per request (scheduler run time).
    pub cpu: f64,
    /// User µs per request (ticks).
    pub user: f64,
    /// Requests per second.
    pub rate: f64,
}

/// `pairs` pairs of `slice` of saturation over `connections` (or, with `BENCH_PAIRED_RATE`,
/// of that many requests a second offered to each side: see [`offered_rate`]), `sides[0]`
/// first in even pairs; a pair in which either side had an error or no CPU reading is left
/// out. Both sides get a short warm-up first (a cache to fill, a pool to open).
pub async fn slices(
    sides: [Side<'_>; 2],
    pairs: usize,
    slice: Duration,
    connections: usize,
) -> Vec<[Slice; 2]> {
    let rate = offered_rate();
    for s in &sides {
        let _ = closed_loop(s.target, connections, Duration::from_millis(300)).await;
    }
    let mut out = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let mut got = [None, None];
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let s = &sides[k];
            let before = tree_runtime(s.pid).zip(tree_cpu_split(s.pid));
            let run = match rate {
                Some(r) => open_loop(s.target, connections, r, slice).await,
                None => closed_loop(s.target, connections, slice).await,
            };
            // Offered a rate, a side whose last answer came more than 20 ms after the last
            // send did not keep it (its requests queued: a side 2 % short of the rate is 20 ms
            // behind after a second): its CPU figure would be saturation's, so the pair is
            // left out.
            let kept_up = rate.is_none() || run.drain.is_some_and(|d| d <= KEPT_UP);
            let after = tree_runtime(s.pid).zip(tree_cpu_split(s.pid));
            got[k] = match (before, after) {
                (Some((c0, (u0, _))), Some((c1, (u1, _))))
                    if run.ok > 0 && run.errors == 0 && kept_up =>
                {
                    let n = run.ok as f64;
                    Some(Slice {
                        cpu: (c1 - c0).as_secs_f64() * 1e6 / n,
                        user: (u1 - u0).as_secs_f64() * 1e6 / n,
                        rate: n / run.elapsed.as_secs_f64(),
                    })
                }
                _ => None,
            };
        }
        if let [Some(a), Some(b)] = got {
            out.push([a, b]);
        }
    }
    out
}

/// `BENCH_PAIRED_RATE`: requests per second offered to each side of a pair, open loop, in
/// place of saturation. At saturation each proxy serves as much as it can take, so a slower
/// one also leaves the generator's core idle more often and pays more wake-ups of it in its own
/// kernel time; at one offered rate both sides see the same load. It must be below the slower
/// side's saturation rate: a pair in which a side did not keep up (its last answer more than
/// [`KEPT_UP`] after the last send) is left out, and a check with no pair left is not measured.
pub fn offered_rate() -> Option<f64> {
    std::env::var("BENCH_PAIRED_RATE")
        .ok()?
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 1.0)
}

/// How late a side's last answer may come after the last send of an offered-rate slice.
const KEPT_UP: Duration = Duration::from_millis(20);

/// `perf record` sampling CPU time (`cpu-clock`, 10 kHz) on a process and its children, into
/// `file`; `None` without `perf`.
fn start_sampling(pid: u32, file: &Path) -> Option<Child> {
    let pids: Vec<String> = process_tree(pid).iter().map(u32::to_string).collect();
    Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "10000", "-p"])
        .arg(pids.join(","))
        .arg("-o")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// The share of `file`'s samples taken outside the kernel, and how many samples there were;
/// `None` with fewer than a thousand (perf missing, or not attached in time).
fn user_share(mut perf: Child, file: &Path) -> Option<(f64, f64)> {
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    perf.wait().ok()?;
    let out = Command::new("perf")
        .args(["report", "--stdio", "--sort", "dso", "-i"])
        .arg(file)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `# Samples: 110K of event 'cpu-clock'`
    let samples = text.lines().find_map(|l| {
        let n = l.strip_prefix("# Samples: ")?.split_whitespace().next()?;
        let (digits, scale) = match n.strip_suffix('K') {
            Some(d) => (d, 1e3),
            None => match n.strip_suffix('M') {
                Some(d) => (d, 1e6),
                None => (n, 1.0),
            },
        };
        Some(digits.parse::<f64>().ok()? * scale)
    })?;
    let (mut kernel, mut all) = (0.0, 0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let (Some(pct), Some(dso)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(pct) = pct.trim_end_matches('%').parse::<f64>() else {
            continue;
        };
        all += pct;
        if dso.starts_with("[kernel") {
            kernel += pct;
        }
    }
    (samples >= 1000.0 && all > 99.0).then(|| (1.0 - kernel / all, samples))
}

/// [`slices`] with each side's user time its `perf`-sampled user share of the slice's run
/// time (see the module docs), and a note saying which; the ticks' user time without `perf`.
async fn sampled_slices(
    sides: [Side<'_>; 2],
    dir: &Path,
    pairs: usize,
    slice: Duration,
    connections: usize,
) -> (Vec<[Slice; 2]>, String) {
    let files: [PathBuf; 2] = [dir.join("a.perf"), dir.join("b.perf")];
    let perf = [
        start_sampling(sides[0].pid, &files[0]),
        start_sampling(sides[1].pid, &files[1]),
    ];
    let mut got = slices(sides, pairs, slice, connections).await;
    let [a, b] = perf;
    let shares = a
        .and_then(|p| user_share(p, &files[0]))
        .zip(b.and_then(|p| user_share(p, &files[1])));
    let Some(((ua, na), (ub, nb))) = shares else {
        return (got, "user time from ticks (no perf samples)".into());
    };
    for pair in &mut got {
        pair[0].user = pair[0].cpu * ua;
        pair[1].user = pair[1].cpu * ub;
    }
    let note = format!(
        "user share sampled by perf: {:.1} % of {na:.0} samples against {:.1} % of {nb:.0} \
         (this check's CPU per request includes perf's own kernel work: user time only)",
        ua * 100.0,
        ub * 100.0
    );
    (got, note)
}

/// The first quartile, the median and the third quartile of `values` (nearest rank).
pub fn quartiles(mut values: Vec<f64>) -> Option<[f64; 3]> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let last = values.len().checked_sub(1)?;
    let at = |q: f64| values[(last as f64 * q).round() as usize];
    Some([at(0.25), at(0.5), at(0.75)])
}

/// A check's result: pass, fail or (`None`, a figure for context) neither, with its figures;
/// `None` when a side did not start.
pub type Verdict = Option<(Option<bool>, String)>;

/// One of the `paired` case's checks: its name, its limit, and how a pair is reduced to the
/// figure compared with the limit.
struct Check {
    name: &'static str,
    figure: fn(&[Slice; 2]) -> f64,
    /// Pass when the median is at most (or, `at_least`, at least) `limit`; `None`: a figure
    /// printed for context, not a target.
    limit: Option<f64>,
    at_least: bool,
    unit: &'static str,
    /// Its user times come from `perf` samples (see the module docs) when `perf` is there.
    sampled_user: bool,
}

const CPU: fn(&[Slice; 2]) -> f64 = |p| p[0].cpu / p[1].cpu;
const USER: fn(&[Slice; 2]) -> f64 = |p| p[0].user / p[1].user;
const RATE: fn(&[Slice; 2]) -> f64 = |p| p[0].rate / p[1].rate;
const EXTRA_CPU: fn(&[Slice; 2]) -> f64 = |p| p[0].cpu - p[1].cpu;

impl Check {
    fn ratio(name: &'static str, figure: fn(&[Slice; 2]) -> f64, limit: f64) -> Check {
        Check {
            name,
            figure,
            limit: Some(limit),
            at_least: false,
            unit: " ×",
            sampled_user: false,
        }
    }

    /// A ratio printed for context (no limit).
    fn context(name: &'static str) -> Check {
        Check {
            limit: None,
            ..Check::ratio(name, CPU, 0.0)
        }
    }

    /// The verdict line's result: pass, fail or (no limit) neither, and the median with its
    /// quartiles and the two sides' median CPU per request.
    fn judge(&self, pairs: &[[Slice; 2]]) -> Verdict {
        let [q1, m, q3] = quartiles(pairs.iter().map(self.figure).collect())?;
        let [_, a, _] = quartiles(pairs.iter().map(|p| p[0].cpu).collect())?;
        let [_, b, _] = quartiles(pairs.iter().map(|p| p[1].cpu).collect())?;
        let pass = self.limit.map(|limit| {
            if self.at_least {
                m >= limit
            } else {
                m <= limit
            }
        });
        let unit = self.unit;
        Some((
            pass,
            format!(
                "{m:.2}{unit} ({q1:.2} to {q3:.2}; {a:.1} vs {b:.1} µs; {} pairs)",
                pairs.len()
            ),
        ))
    }
}

/// The processes of the `paired` case, alive together; the directories outlive them (fields
/// drop in order: the processes stop first).
struct Fleet {
    procs: Vec<Proc>,
    dirs: Vec<tempfile::TempDir>,
}

impl Fleet {
    fn dir(&mut self) -> std::path::PathBuf {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().to_owned();
        self.dirs.push(d);
        p
    }

    /// Keeps `proc` alive with the others and gives its pid.
    fn keep(&mut self, proc: Proc) -> u32 {
        let pid = proc.pid();
        self.procs.push(proc);
        pid
    }
}

/// The `paired` case: every target of issue 18 that compares two CPU figures, measured as
/// `BENCH_PEER_SLICES` (11) pairs of `BENCH_AB_SLICE_MS` (1000) slices of the gateway and its
/// peer, alternately first. Needs nginx for the nginx targets; a missing peer leaves its checks
/// out. The verdicts are printed with the run's other targets.
pub async fn peer_pairs(bench: &mut Bench, upstream: SocketAddr) {
    let pairs = super::env_or("BENCH_PEER_SLICES", 11).max(1) as usize;
    let slice = Duration::from_millis(super::env_or("BENCH_AB_SLICE_MS", 1000).max(100));
    let caller = format!("Bearer {API_KEY}");
    let peer_auth = "Bearer caller-credential";
    let mut fleet = Fleet {
        procs: Vec::new(),
        dirs: Vec::new(),
    };
    let gateway_bin = super::gateway_bin();
    let gateway_bin = gateway_bin.as_path();

    // The gateway audited (A), without its access log (N) and with audit off (B).
    let d = fleet.dir();
    let (gw, a) = spawn_gateway(&d, gateway_toml(&d, upstream, true)).await;
    let a_pid = fleet.keep(gw);
    let d = fleet.dir();
    let quiet = [("RUST_LOG", "info,ratepay_gateway::access=off")];
    let (gw, n) =
        spawn_gateway_env(gateway_bin, &d, gateway_toml(&d, upstream, true), &quiet).await;
    let n_pid = fleet.keep(gw);
    let d = fleet.dir();
    let (gw, b) = spawn_gateway(&d, gateway_toml(&d, upstream, false)).await;
    let b_pid = fleet.keep(gw);
    // The user share comes from ticks that the kernel (tick accounting) spreads over a
    // process's whole life, so the user-time check gets a gateway (U) that serves nothing but
    // the uncached GET, as the floor does.
    let d = fleet.dir();
    let (gw, u) = spawn_gateway(&d, gateway_toml(&d, upstream, true)).await;
    let u_pid = fleet.keep(gw);
    let uncached_u = Target::get(u, TX_PATH, &caller, false);
    let uncached = Target::get(a, TX_PATH, &caller, false);
    let cached = Target::get(a, RECORD_PATH, &caller, false);
    let audited = Target::cancellation(a);
    let nolog = Target::get(n, TX_PATH, &caller, false);
    let unaudited = Target::cancellation(b);
    let get_b = Target::get(b, TX_PATH, &caller, false);

    // The peers: nginx (log on), the hyper floor; and the TLS trio on a TLS upstream.
    let nginx = peers::find_program("nginx");
    let mut nginx_at = None;
    if let Some(bin) = &nginx {
        let d = fleet.dir();
        if let Some((p, addr)) =
            peers::spawn_nginx(bin, &d, upstream, peers::NginxMode::default()).await
        {
            nginx_at = Some((addr, fleet.keep(p)));
        }
    }
    let floor_at = peers::spawn_floor(upstream, None)
        .await
        .map(|(p, addr)| (addr, fleet.keep(p)));
    let d = fleet.dir();
    let pki = tls::pki(&d);
    let tls_upstream = serve_static(bench.stats.clone(), Some(pki.acceptor.clone())).await;
    let ca = pki.ca_pem.as_path();
    let d = fleet.dir();
    let (gw, t) = spawn_gateway(&d, over_tls(gateway_toml(&d, tls_upstream, true), ca)).await;
    let t_pid = fleet.keep(gw);
    let tls_gateway = Target::get(t, TX_PATH, &caller, false);
    let mut tls_nginx_at = None;
    if let Some(bin) = &nginx {
        let d = fleet.dir();
        let mode = peers::NginxMode {
            tls: Some(ca),
            quiet: false,
        };
        if let Some((p, addr)) = peers::spawn_nginx(bin, &d, tls_upstream, mode).await {
            tls_nginx_at = Some((addr, fleet.keep(p)));
        }
    }
    let tls_floor_at = peers::spawn_floor(tls_upstream, Some(ca))
        .await
        .map(|(p, addr)| (addr, fleet.keep(p)));
    let peer = |at: Option<(SocketAddr, u32)>, path: &str| {
        at.map(|(addr, pid)| (Target::get(addr, path, peer_auth, false), pid))
    };
    let nginx_pass = peer(nginx_at, TX_PATH);
    let nginx_cache = peer(nginx_at, RECORD_PATH);
    let floor = peer(floor_at, TX_PATH);
    let tls_nginx = peer(tls_nginx_at, TX_PATH);
    let tls_floor = peer(tls_floor_at, TX_PATH);

    let at_most = Check::ratio;
    let mut plan: Vec<(Check, Side, Option<Side>)> = Vec::new();
    let side = |target, pid| Side { target, pid };
    fn opt(p: &Option<(Target, u32)>) -> Option<Side<'_>> {
        p.as_ref().map(|(target, pid)| Side { target, pid: *pid })
    }
    plan.push((
        at_most(
            "uncached CPU/request ≤ nginx proxy_pass (both logging)",
            CPU,
            1.0,
        ),
        side(&uncached, a_pid),
        opt(&nginx_pass),
    ));
    plan.push((
        Check {
            sampled_user: true,
            ..at_most("uncached user time ≤ 1.3 × the hyper floor's", USER, 1.3)
        },
        side(&uncached_u, u_pid),
        opt(&floor),
    ));
    plan.push((
        at_most("cache hit CPU/request ≤ 0.8 × nginx proxy_cache", CPU, 0.8),
        side(&cached, a_pid),
        opt(&nginx_cache),
    ));
    plan.push((
        at_most(
            "TLS upstream CPU/request ≤ nginx with TLS upstream",
            CPU,
            1.0,
        ),
        side(&tls_gateway, t_pid),
        opt(&tls_nginx),
    ));
    plan.push((
        Check {
            name: "access log ≤ 1 µs CPU/request",
            figure: EXTRA_CPU,
            limit: Some(1.0),
            at_least: false,
            unit: " µs",
            sampled_user: false,
        },
        side(&uncached, a_pid),
        Some(side(&nolog, n_pid)),
    ));
    plan.push((
        at_most(
            "POST audit off CPU/request ≤ 1.25 × uncached GET",
            CPU,
            1.25,
        ),
        side(&unaudited, b_pid),
        Some(side(&get_b, b_pid)),
    ));
    plan.push((
        at_most("POST audited CPU/request ≤ 1.3 × audit off", CPU, 1.3),
        side(&audited, a_pid),
        Some(side(&unaudited, b_pid)),
    ));
    // At one offered rate both sides serve the same requests a second: nothing to compare.
    if offered_rate().is_none() {
        plan.push((
            Check {
                name: "audited ≥ 0.5 × audit-off POST (req/s)",
                figure: RATE,
                limit: Some(0.5),
                at_least: true,
                unit: " ×",
                sampled_user: false,
            },
            side(&audited, a_pid),
            Some(side(&unaudited, b_pid)),
        ));
    }
    // Not targets: what the peers cost against each other, for reading the ones above.
    if let Some(f) = opt(&floor) {
        plan.push((
            Check::context("(context) hyper floor CPU/request / nginx"),
            f,
            opt(&nginx_pass),
        ));
    }
    if let Some(f) = opt(&tls_floor) {
        plan.push((
            Check::context("(context) hyper floor / nginx, both TLS upstream"),
            f,
            opt(&tls_nginx),
        ));
    }
    for (check, ours, theirs) in plan {
        let verdict = match theirs {
            Some(theirs) if check.sampled_user => {
                let dir = fleet.dir();
                let (got, note) =
                    sampled_slices([ours, theirs], &dir, pairs, slice, bench.connections).await;
                bench.notes.push(format!("{}: {note}", check.name));
                check.judge(&got)
            }
            Some(theirs) => {
                let got = slices([ours, theirs], pairs, slice, bench.connections).await;
                check.judge(&got)
            }
            None => None,
        };
        bench.paired.push((check.name, verdict));
    }
    drop(fleet);
}
