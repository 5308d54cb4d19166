//! Route decision time, compiled gateway vs reference interpreter, on the
//! same parsed heads. Before timing, both deciders must agree on every
//! sample (a benchmark of a wrong decider is worthless).
//!
//! Groups (each per spec size and decider; the time of one iteration is
//! the time of the whole set, criterion's throughput gives per decision):
//! - `mixed`: every sample (hits spread over the table, and misses);
//! - `late`: the hits aimed at the last 10% of the table;
//! - `miss`: requests no route serves (404).
//!
//! `BLITZ_BENCH_SAMPLES` is the folder with `requests-N.txt`.

use blitz_bench_decide::{Sample, Spec, samples, specs};
use blitz_runtime::http::RequestHead;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::path::PathBuf;
use std::time::Duration;

fn check(spec: &Spec, samples: &[Sample]) {
    let mut hits = 0;
    let mut rank_sum = 0usize;
    for s in samples {
        let c = (spec.compiled_name)(&s.head);
        let i = spec.interp_name(&s.head);
        assert_eq!(c, i, "{}: compiled and interpreted disagree on a {} sample", spec.id, s.kind);
        if let Some(name) = c {
            hits += 1;
            rank_sum += spec.interp.spec().routes.iter().position(|r| r.name.value == name).unwrap_or(0);
        }
        if s.kind == "miss" {
            assert_eq!(c, None, "{}: a miss sample hit {c:?}", spec.id);
        }
    }
    eprintln!(
        "decide: {} ({} routes): {} samples agree; {} hit a route (mean index {}), {} miss",
        spec.id,
        spec.routes,
        samples.len(),
        hits,
        rank_sum / hits.max(1),
        samples.len() - hits
    );
}

fn bench(c: &mut Criterion) {
    let dir = PathBuf::from(std::env::var_os("BLITZ_BENCH_SAMPLES").expect("BLITZ_BENCH_SAMPLES"));
    let specs = specs();
    let mut sets: Vec<(&str, Vec<(&str, Vec<RequestHead>)>)> = vec![("mixed", vec![]), ("late", vec![]), ("miss", vec![])];
    for spec in &specs {
        let all = samples(&dir.join(format!("requests-{}.txt", spec.id)));
        check(spec, &all);
        let late_from = spec.routes - spec.routes.div_ceil(10);
        let pick = |f: &dyn Fn(&Sample) -> bool| all.iter().filter(|s| f(s)).map(|s| s.head.clone()).collect::<Vec<_>>();
        sets[0].1.push((spec.id, pick(&|_| true)));
        sets[1].1.push((spec.id, pick(&|s| s.target.is_some_and(|t| t >= late_from))));
        sets[2].1.push((spec.id, pick(&|s| s.kind == "miss")));
    }
    for (set, per_spec) in &sets {
        let mut group = c.benchmark_group(*set);
        for (spec, (n, heads)) in specs.iter().zip(per_spec) {
            assert!(!heads.is_empty(), "{set}: no samples for {n} routes");
            group.throughput(Throughput::Elements(heads.len() as u64));
            group.bench_with_input(BenchmarkId::new("compiled", n), heads, |b, heads| b.iter(|| (spec.compiled_batch)(heads)));
            group.bench_with_input(BenchmarkId::new("interpreted", n), heads, |b, heads| b.iter(|| spec.interp_batch(heads)));
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
