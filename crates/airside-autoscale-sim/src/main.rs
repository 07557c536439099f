//! `airside-autoscale-sim`: see the crate README.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use airside_autoscale_sim::policy::{Params, PolicyKind};
use airside_autoscale_sim::synth::{self, Workload};
use airside_autoscale_sim::{chart, report, simulate_with_timeline, trace};
use clap::Parser;

/// Replays Airflow demand through metricship's signal and the worker scaling policies.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A trace CSV (see the README for its columns and the SQL that exports one from
    /// Airflow's metadata database). Without it, the bundled synthetic traces.
    #[arg(long, env = "AUTOSCALE_SIM_TRACE")]
    trace: Option<PathBuf>,
    /// Bundled traces to run (all three scenarios by default).
    #[arg(
        long = "workload",
        env = "AUTOSCALE_SIM_WORKLOADS",
        value_delimiter = ','
    )]
    workloads: Vec<Workload>,
    /// Days of synthetic demand.
    #[arg(long, env = "AUTOSCALE_SIM_DAYS", default_value_t = 2)]
    days: u32,
    /// Seed of the synthetic traces and of the random choices (start latency, which task
    /// a scale-in stops).
    #[arg(long, env = "AUTOSCALE_SIM_SEED", default_value_t = 1)]
    seed: u64,
    /// Policies to compare (all by default).
    #[arg(long = "policy", env = "AUTOSCALE_SIM_POLICIES", value_delimiter = ',')]
    policies: Vec<PolicyKind>,
    /// Workers without scale-in protection (no workerguard in the worker task, which the
    /// shipped task definition has): ECS may stop a busy worker.
    #[arg(long, env = "AUTOSCALE_SIM_NO_PROTECTION")]
    no_protection: bool,
    /// workerguard's --idle-grace, seconds: protection stays this long after a worker's
    /// last task.
    #[arg(long, env = "AUTOSCALE_SIM_IDLE_GRACE", default_value_t = 120)]
    idle_grace: u64,
    /// metricship's --flush-interval, seconds: how often DesiredWorkers is published.
    #[arg(long, env = "AUTOSCALE_SIM_FLUSH_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    flush_interval: u64,
    /// ECS stopTimeout, seconds (Fargate allows at most 120).
    #[arg(long, env = "AUTOSCALE_SIM_STOP_TIMEOUT", default_value_t = 30)]
    stop_timeout: u64,
    /// Celery worker_concurrency.
    #[arg(long, env = "AUTOSCALE_SIM_CONCURRENCY", default_value_t = 16)]
    concurrency: u32,
    /// The module's max_capacity.
    #[arg(long, env = "AUTOSCALE_SIM_MAX_CAPACITY")]
    max_capacity: Option<u32>,
    /// The module's scale_out_evaluation_periods (of 60 s).
    #[arg(long, env = "AUTOSCALE_SIM_SCALE_OUT_EVALUATION_PERIODS")]
    scale_out_evaluation_periods: Option<u32>,
    /// The module's scale_out_cooldown, seconds.
    #[arg(long, env = "AUTOSCALE_SIM_SCALE_OUT_COOLDOWN")]
    scale_out_cooldown: Option<u32>,
    /// The module's scale_in_period, seconds (a multiple of 60).
    #[arg(long, env = "AUTOSCALE_SIM_SCALE_IN_PERIOD")]
    scale_in_period: Option<u32>,
    /// The module's scale_in_evaluation_periods.
    #[arg(long, env = "AUTOSCALE_SIM_SCALE_IN_EVALUATION_PERIODS")]
    scale_in_evaluation_periods: Option<u32>,
    /// The module's scale_in_cooldown, seconds.
    #[arg(long, env = "AUTOSCALE_SIM_SCALE_IN_COOLDOWN")]
    scale_in_cooldown: Option<u32>,
    /// The module's scale_in_max_step: most workers one scale-in removes.
    #[arg(long, env = "AUTOSCALE_SIM_SCALE_IN_MAX_STEP", value_parser = clap::value_parser!(u32).range(1..))]
    scale_in_max_step: Option<u32>,
    /// Shortest and longest worker start latency, seconds (e.g. `45,90`).
    #[arg(
        long,
        env = "AUTOSCALE_SIM_START_LATENCY",
        value_delimiter = ',',
        num_args = 2
    )]
    start_latency: Vec<u64>,
    /// Write the synthetic trace(s) as CSV into this folder instead of simulating.
    #[arg(long, env = "AUTOSCALE_SIM_WRITE_TRACES")]
    write_traces: Option<PathBuf>,
    /// Draw each run over time into this folder, as `TRACE-POLICY.png` (or `.svg`).
    #[arg(long, env = "AUTOSCALE_SIM_CHART_DIR")]
    chart_dir: Option<PathBuf>,
    /// The charts' file format.
    #[arg(long, env = "AUTOSCALE_SIM_CHART_FORMAT", default_value = "png", value_parser = ["png", "svg"])]
    chart_format: String,
    /// The charts' TrueType font (default: DejaVu Sans or Liberation Sans where the
    /// distribution puts it).
    #[arg(long, env = "AUTOSCALE_SIM_CHART_FONT")]
    chart_font: Option<PathBuf>,
    /// Print the reports as JSON (one array) instead of a Markdown table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airside-autoscale-sim: {e}");
            // The README's exit-code table: 2 is a configuration or input error.
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut params = Params {
        protection: !args.no_protection,
        idle_grace: std::time::Duration::from_secs(args.idle_grace),
        flush_interval: std::time::Duration::from_secs(args.flush_interval),
        stop_timeout: std::time::Duration::from_secs(args.stop_timeout),
        worker_concurrency: args.concurrency,
        ..Default::default()
    };
    let m = &mut params.module;
    for (field, value) in [
        (&mut m.max_capacity, args.max_capacity),
        (
            &mut m.scale_out_evaluation_periods,
            args.scale_out_evaluation_periods,
        ),
        (&mut m.scale_out_cooldown, args.scale_out_cooldown),
        (&mut m.scale_in_period, args.scale_in_period),
        (
            &mut m.scale_in_evaluation_periods,
            args.scale_in_evaluation_periods,
        ),
        (&mut m.scale_in_cooldown, args.scale_in_cooldown),
        (&mut m.scale_in_max_step, args.scale_in_max_step),
    ] {
        if let Some(v) = value {
            *field = v;
        }
    }
    if m.scale_in_period == 0 || !m.scale_in_period.is_multiple_of(60) {
        return Err(
            "--scale-in-period must be a positive multiple of 60 (CloudWatch periods)".into(),
        );
    }
    if let [lo, hi] = args.start_latency[..] {
        if lo > hi {
            return Err("--start-latency: the shortest comes first".into());
        }
        params.start_latency = (
            std::time::Duration::from_secs(lo),
            std::time::Duration::from_secs(hi),
        );
    }
    if args.chart_dir.is_some() {
        chart::load_font(args.chart_font.as_deref())?;
    }
    let traces: Vec<(String, Vec<trace::Task>)> = match &args.trace {
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let name = path
                .file_stem()
                .map_or("trace".into(), |s| s.to_string_lossy().into_owned());
            vec![(name, trace::read_csv(file)?)]
        }
        None => {
            let kinds = if args.workloads.is_empty() {
                Workload::SCENARIOS.to_vec()
            } else {
                args.workloads.clone()
            };
            kinds
                .into_iter()
                .map(|w| {
                    (
                        w.name().to_string(),
                        synth::generate(w, args.days, args.seed),
                    )
                })
                .collect()
        }
    };
    if let Some(dir) = &args.write_traces {
        std::fs::create_dir_all(dir)?;
        for (name, tasks) in &traces {
            let path = dir.join(format!("{name}.csv"));
            trace::write_csv(tasks, std::fs::File::create(&path)?)?;
            eprintln!("wrote {} ({} task instances)", path.display(), tasks.len());
        }
        return Ok(());
    }
    let policies = if args.policies.is_empty() {
        PolicyKind::ALL.to_vec()
    } else {
        args.policies.clone()
    };
    let mut reports = Vec::new();
    // Progress on a terminal: a week of demand takes a fraction of a second, a year of a
    // busy environment under every policy some seconds.
    let total = traces.len() * policies.len();
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr()) && total > 1;
    for (name, tasks) in &traces {
        for &policy in &policies {
            if show {
                eprint!(
                    "\r[{}/{total}] {name} × {}   ",
                    reports.len() + 1,
                    policy.name()
                );
            }
            let (r, timeline) = simulate_with_timeline(name, tasks, policy, &params, args.seed);
            if let Some(dir) = &args.chart_dir {
                std::fs::create_dir_all(dir)?;
                let guard = if params.protection {
                    ", with protection"
                } else {
                    ""
                };
                let title = format!("{name} × {}{guard}", policy.name());
                let path = dir.join(format!("{name}-{}.{}", policy.name(), args.chart_format));
                chart::draw(&path, &title, &timeline, params.worker_concurrency)?;
            }
            reports.push(r);
        }
    }
    if show {
        eprintln!("\r[{total}/{total}] done{:30}", "");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", report::table(&reports));
    }
    Ok(())
}
