//! Micro-benchmarks of each stage on realistic generated events, with the stages built from
//! `pipelines/local.yaml` by the library itself (never copies of their code), so a regression
//! in any stage shows here first. Run: `cargo bench --bench stages`; `benches/run.sh` runs
//! these next to the Python baseline and prints the ratios.
//!
//! Every benchmark runs over a slice of `EVENTS` distinct events per iteration and reports
//! throughput in elements, so criterion's time per iteration divided by `EVENTS` is the time
//! per event.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use profile_sync::bench::{Fixture, FIXTURE_EVENTS as EVENTS};
use std::hint::black_box;
use std::time::Duration;

fn stages(c: &mut Criterion) {
    let fixture = Fixture::new(EVENTS).expect("benchmark fixture builds");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pipeline = &fixture.components.pipeline;
    let decoded = fixture.decoded();
    let enriched = fixture.enriched(&decoded);
    // Warm the key cache: every user of the fixture has a stored, cached data key.
    let protected = rt
        .block_on(pipeline.protector.protect(enriched.clone()))
        .expect("keys available");
    let protected: Vec<_> = protected
        .into_iter()
        .map(|r| r.expect("protects"))
        .collect();

    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("decode_avro", |b| {
        b.iter(|| {
            for p in &fixture.payloads {
                black_box(pipeline.decoder.decode(p).expect("valid"));
            }
        })
    });
    g.bench_function("geoip", |b| {
        b.iter(|| {
            for change in &decoded {
                black_box(
                    pipeline.enricher.regions.resolve(black_box(
                        change
                            .profile
                            .as_ref()
                            .and_then(|p| p.get("last_seen_ip"))
                            .and_then(|v| v.as_str()),
                    )),
                );
            }
        })
    });
    // `segments_interpreted` runs every rule in the CEL interpreter: the reference the plans
    // replace (and are property-tested against).
    let rules = &pipeline.enricher.segments;
    for (name, planned) in [("segments", true), ("segments_interpreted", false)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                // Deletes carry no region and are not evaluated, as in the pipeline.
                for e in &enriched {
                    if let Some(region) = &e.region {
                        let segments = if planned {
                            rules.evaluate(&e.change, region, None)
                        } else {
                            rules.interpreted(&e.change, region, None)
                        };
                        black_box(segments.expect("rules evaluate"));
                    }
                }
            })
        });
    }
    g.bench_function("protect_warm_keys", |b| {
        b.iter_batched(
            || enriched.clone(),
            |batch| {
                black_box(
                    rt.block_on(pipeline.protector.protect(batch))
                        .expect("keys available"),
                )
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("project", |b| {
        b.iter(|| {
            for p in &protected {
                black_box(pipeline.profiles.projection.op(p));
            }
        })
    });
    g.bench_function("chain", |b| {
        b.iter(|| black_box(rt.block_on(fixture.chain()).expect("chain runs")))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = stages
}
criterion_main!(benches);
