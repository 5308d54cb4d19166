//! Times the phases of `blitzc check` on one spec, in process: reading,
//! lowering (parse + lower), the final IR pass, every validation rule, and
//! the shadowed-route analysis alone. Used by `bench/check-5000/run.sh`.
//!
//!     cargo run --release -p blitzc --example check_phases -- SPEC [RUNS]

use blitzc::diag::SourceFile;
use std::time::{Duration, Instant};

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: check_phases SPEC [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(20);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    if std::env::var_os("ONLY_SHADOW").is_some() {
        // For `perf stat`: lower once, then the shadow analysis RUNS times.
        let file = SourceFile::new(&path, text);
        let (spec, mut diagnostics) = blitzc::syntax::lower(&file);
        let mut spec = spec.expect("spec lowers");
        blitzc::ir::finish(&mut spec, &mut diagnostics);
        let start = Instant::now();
        for _ in 0..runs {
            let mut found = Vec::new();
            blitzc::validate::shadow::check(&spec, &mut found);
            std::hint::black_box(found);
        }
        println!(
            "shadow check: {:.2?} per run (mean of {runs})",
            start.elapsed() / runs as u32
        );
        return;
    }
    let (mut lower, mut finish, mut validate, mut shadow, mut whole) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut kdl_parse = Vec::new();
    let mut reported = 0;
    for _ in 0..runs {
        if path.ends_with(".kdl") {
            let start = Instant::now();
            let document = text.parse::<kdl::KdlDocument>();
            kdl_parse.push(start.elapsed());
            std::hint::black_box(document.is_ok());
        }
        let file = SourceFile::new(&path, text.clone());
        let start = Instant::now();
        let (spec, mut diagnostics) = blitzc::syntax::lower(&file);
        lower.push(start.elapsed());
        let Some(mut spec) = spec else {
            eprintln!("{path}: does not lower");
            std::process::exit(1);
        };
        let start = Instant::now();
        blitzc::ir::finish(&mut spec, &mut diagnostics);
        finish.push(start.elapsed());
        let start = Instant::now();
        blitzc::validate::run(&spec, &mut diagnostics);
        validate.push(start.elapsed());
        let mut only_shadow = Vec::new();
        let start = Instant::now();
        blitzc::validate::shadow::check(&spec, &mut only_shadow);
        shadow.push(start.elapsed());
        reported = only_shadow.len();
        let start = Instant::now();
        let checked = blitzc::check(SourceFile::new(&path, text.clone()));
        whole.push(start.elapsed());
        std::hint::black_box(checked);
    }
    println!("{path}: medians of {runs} runs");
    if !kdl_parse.is_empty() {
        println!(
            "  kdl crate parse   {:>9.2?}  (KdlDocument only)",
            median(kdl_parse)
        );
    }
    println!("  parse + lower     {:>9.2?}", median(lower));
    println!("  ir::finish        {:>9.2?}", median(finish));
    println!("  validate (all)    {:>9.2?}", median(validate));
    println!(
        "  shadow check      {:>9.2?}  ({reported} routes reported)",
        median(shadow)
    );
    println!(
        "  blitzc::check     {:>9.2?}  (no rendering)",
        median(whole)
    );
}
